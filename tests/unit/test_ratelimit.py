"""Rate limits over time: what a sender can send around a window's end.

The limiter runs on the policy state a gateway uses (this node's LMDB store, or a real Redis
started on 127.0.0.1), with a clock the test moves, so the minutes pass at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.config import RateLimit, RatelimitConfig
from mailwarden.ratelimit import RateLimiter
from mailwarden.sharedstate import LocalState, RedisState, StateBackend
from tests.services.redis import running_redis

HOUR = 3600.0
# Noon on a day: the start of an hour's window, as windows are aligned to the clock.
NOON = 1_780_000_000 // 3600 * 3600.0


class Clock:
    """The limiter's clock; ``loop`` runs its calls (a Redis client keeps to one loop)."""

    def __init__(self, now: float, loop: asyncio.Runner) -> None:
        self.now = now
        self.loop = loop

    def __call__(self) -> float:
        return self.now


State = tuple[StateBackend, Clock]


@pytest.fixture(params=["local", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    with asyncio.Runner() as loop:
        clock = Clock(NOON, loop)
        if request.param == "local":
            yield LocalState(tmp_path / "state", 10_000, clock=clock), clock
            return
        # Redis keys expire on Redis's own clock, which the test's hours do not move: every
        # window is a key of its own, so the simulated hours still start afresh.
        with running_redis() as redis:
            backend = RedisState(redis.url, "t:", 2.0)
            yield backend, clock
            loop.run(backend.close())


def limiter(state: State, messages: int) -> RateLimiter:
    backend, clock = state
    config = RatelimitConfig(enabled=True, sender=RateLimit(messages=messages, window=HOUR))
    return RateLimiter(config, backend, clock=clock)


def accepted(limits: RateLimiter, clock: Clock, at: float, count: int) -> int:
    """How many of ``count`` messages from one sender at time ``at`` are accepted."""
    clock.now = at

    async def send() -> int:
        passed = 0
        for _ in range(count):
            reply = await limits.count("bulk@sender.test", None, ["bob@example.org"], 100)
            passed += reply is None
        return passed

    return clock.loop.run(send())


def test_a_sender_cannot_send_twice_its_limit_across_a_windows_end(
    state: State,
) -> None:
    limits = limiter(state, 100)
    clock = state[1]
    # 100 in the last minute before 13:00 ...
    assert accepted(limits, clock, NOON + HOUR - 60, 100) == 100
    # ... and at 13:01 the hour before still holds 98 % of them: 2 more, not 100.
    assert accepted(limits, clock, NOON + HOUR + 60, 100) == 2
    # At 13:45 three quarters of the previous hour have slid out (the refused attempts count
    # too: 100 + 100 in the last window, a quarter of it weighed in): still under.
    assert accepted(limits, clock, NOON + HOUR + 45 * 60, 100) == 0
    # Two windows later nothing of it is left: the whole limit again.
    assert accepted(limits, clock, NOON + 3 * HOUR + 1, 100) == 100


def test_a_steady_sender_gets_its_limit_per_window_and_no_more(
    state: State,
) -> None:
    limits = limiter(state, 60)
    clock = state[1]
    # One message a minute for four hours, against a limit of 60 an hour: every one passes.
    passed = sum(accepted(limits, clock, NOON + minute * 60 + 1, 1) for minute in range(240))
    assert passed == 240
    # One more in the last minute is over it.
    assert accepted(limits, clock, NOON + 239 * 60 + 1, 1) == 0


def test_the_refusal_names_the_limit(state: State) -> None:
    limits = limiter(state, 1)
    clock = state[1]
    assert accepted(limits, clock, NOON + 10, 1) == 1

    async def refused() -> str | None:
        return await limits.count("bulk@sender.test", None, ["bob@example.org"], 100)

    assert clock.loop.run(refused()) == (
        "451 4.7.1 Rate limit exceeded for sender bulk@sender.test: more than 1 messages in "
        "3600 seconds; try again later"
    )

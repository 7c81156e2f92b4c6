"""Relay mode and the wall clock: a jump forward bounces nothing young, a jump back stalls
nothing, expiry follows the time really spent queued, a restart goes on from the counts kept.

The next hop is a real SMTP server (aiosmtpd on 127.0.0.1) answering 451 until told to
accept. Only ``time.time`` is moved; the monotonic clock keeps going, as on a machine whose
clock an admin or NTP sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.plugins import build_plugin_manager
from mailwarden_sdk import Envelope
from tests.conftest import free_port, make_message

DAYS = 86400.0


class NextHop:
    """Answers 451 to every recipient until ``accept`` is set; records what it accepted."""

    def __init__(self) -> None:
        self.accept = False
        self.received: list[tuple[str, list[str]]] = []
        self.refused = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.accept:
            self.refused += 1
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 Ok"


@pytest.fixture
def next_hop() -> Iterator[tuple[NextHop, int]]:
    handler = NextHop()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


class Clock:
    """``time.time`` shifted by ``offset`` seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)


def _prepared(
    tmp_path: Path,
    next_hop: tuple[NextHop, int],
    monkeypatch: pytest.MonkeyPatch,
    max_age: float = 3600.0,
) -> tuple[NextHop, Clock, Path]:
    """The next hop, the movable clock and a home whose gateway relays to that next hop."""
    hop, port = next_hop
    home = tmp_path / "home"
    _config(home, port, max_age)
    return hop, Clock(monkeypatch), home


def _config(home: Path, port: int, max_age: float) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "mailwarden.toml").write_text(
        "[delivery]\n"
        'mode = "relay"\n'
        f'next_hop = "127.0.0.1:{port}"\n'
        'tls = "none"\n'
        "retry_initial = 0.2\n"
        "retry_max_interval = 0.4\n"
        f"max_age = {max_age}\n"
        "queue_scan_interval = 0.1\n"
        "connection_reuse = false\n"
    )


def _gateway(home: Path) -> Gateway:
    plugins = build_plugin_manager()
    return Gateway(load_config(home / "mailwarden.toml", plugins.config_schemas()), plugins=plugins)


async def _until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {limit:g} s waiting for {what}")


def _run(home: Path, scenario: Callable[[Gateway], Awaitable[None]]) -> None:
    async def main() -> None:
        gateway = _gateway(home)
        await gateway.start()
        await gateway.delivery.start()
        try:
            await scenario(gateway)
        finally:
            await gateway.delivery.stop()
            await gateway.stop()

    asyncio.run(main())


async def _deferred(gateway: Gateway, n: int) -> None:
    """Send ``n`` messages and wait until the next hop has deferred each once."""
    for i in range(n):
        envelope = Envelope(mail_from="alice@example.org", rcpt_to=[f"bob{i}@example.net"])
        await gateway.process(make_message(subject=f"m{i}"), envelope, ingress="smtp")
    # At least once each: on a loaded machine a message may be retried (0.2 s) before the last
    # one's first attempt is seen, and "exactly once each" would then never be observed.
    await _until(
        lambda: len(a := _attempts(gateway)) == n and min(a) >= 1, 30, "the first deferrals"
    )


def _attempts(gateway: Gateway) -> list[int]:
    return [gateway.spool.load_state(id).attempts for id in gateway.spool.ids()]


def _generated(gateway: Gateway) -> int:
    return sum(gateway.spool.load_state(id).generated for id in gateway.spool.ids())


def test_jump_forward_bounces_no_young_message(
    tmp_path: Path, next_hop: tuple[NextHop, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    hop, clock, home = _prepared(tmp_path, next_hop, monkeypatch)

    async def scenario(gateway: Gateway) -> None:
        await _deferred(gateway, 3)
        clock.offset = 6 * DAYS
        refused = hop.refused
        await _until(lambda: min(_attempts(gateway)) >= 3, 10, "two more attempts each")
        assert hop.refused >= refused + 6
        assert _generated(gateway) == 0, "a DSN was made: a message seconds old was bounced"
        assert len(gateway.spool.ids()) == 3
        hop.accept = True
        await _until(lambda: len(hop.received) == 3, 10, "delivery once the next hop accepts")
        assert all(mail_from == "alice@example.org" for mail_from, _ in hop.received)

    _run(home, scenario)


def test_jump_back_stalls_no_retry(
    tmp_path: Path, next_hop: tuple[NextHop, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    hop, clock, home = _prepared(tmp_path, next_hop, monkeypatch)

    async def scenario(gateway: Gateway) -> None:
        await _deferred(gateway, 3)
        clock.offset = -6 * DAYS
        hop.accept = True
        await _until(lambda: len(hop.received) == 3, 10, "the retries after the jump back")
        await _until(lambda: gateway.spool.ids() == [], 5, "the spool to empty")

    _run(home, scenario)


def test_expiry_follows_time_queued_even_with_the_clock_set_back(
    tmp_path: Path, next_hop: tuple[NextHop, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, clock, home = _prepared(tmp_path, next_hop, monkeypatch, max_age=1.5)

    async def scenario(gateway: Gateway) -> None:
        began = time.monotonic()
        await _deferred(gateway, 1)
        clock.offset = -6 * DAYS
        # The DSN is spooled first, then the expired original removed: wait for both.
        await _until(
            lambda: _generated(gateway) == 1 and len(gateway.spool.ids()) == 1,
            10,
            "the DSN after max_age, the original gone",
        )
        assert time.monotonic() - began >= 1.5
        [dsn] = gateway.spool.ids()
        assert gateway.spool.load_state(dsn).generated

    _run(home, scenario)


def test_restart_goes_on_from_the_persisted_attempts_and_age(
    tmp_path: Path, next_hop: tuple[NextHop, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, clock, home = _prepared(tmp_path, next_hop, monkeypatch, max_age=3.0)
    kept: dict[str, Any] = {}

    async def first(gateway: Gateway) -> None:
        await _deferred(gateway, 1)
        await _until(lambda: _attempts(gateway) == [3], 10, "three attempts")
        [id] = gateway.spool.ids()
        kept["state"] = gateway.spool.load_state(id)

    _run(home, first)
    assert kept["state"].age > 0.5
    # Down for a moment while the clock is set forward: the age goes on from where it was.
    clock.offset = 6 * DAYS

    async def second(gateway: Gateway) -> None:
        await _until(lambda: max(_attempts(gateway), default=0) >= 4, 10, "a fourth attempt")
        assert _generated(gateway) == 0
        [id] = gateway.spool.ids()
        state = gateway.spool.load_state(id)
        assert state.age >= kept["state"].age
        assert state.age < 3.0
        # ... and still ends at max_age of time really queued.
        await _until(lambda: _generated(gateway) == 1, 10, "the DSN at max_age")

    _run(home, second)

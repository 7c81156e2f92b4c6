"""State shared by every node of a cluster (SDK 1.14): keys with counters and values that expire.

When the gateway has ``[redis]`` enabled, :func:`shared_state` gives a plugin the
:class:`SharedState` of the cluster: the same keys on every node, so what one node learns
(Bayes token counts, reported spam, reputation answers) the others read; a command-line
command's host (:func:`~mailwarden_sdk.command_host`) has it too (SDK 1.15), so a command
teaches every node. Without ``[redis]`` and in an isolated detector process it is ``None``:
the plugin keeps its state locally, as it always did.

Redis may go away at any time. Every call is bounded by the gateway's ``[redis] timeout`` and
a circuit breaker; a call that cannot be answered raises :class:`SharedStateUnavailable` (never
a made-up answer), and the plugin goes on with its local state. So a plugin keeps its local
store complete for what its own node saw, and uses the shared one as the better answer when
there is one.

Keys are short strings; start them with the plugin's name (``antispam:``...), since every
plugin shares one key space. Values are strings. Addresses and other personal data go in
hashed, as the gateway's own keys do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Increment", "SharedState", "SharedStateUnavailable", "shared_state"]

T = TypeVar("T")

#: ``(key, amount to add, time to live in seconds)``: one counter change.
Increment = tuple[str, int, float]


class SharedStateUnavailable(Exception):
    """The shared state did not answer in time (Redis down, breaker open, or the call was
    made where it cannot wait): go on with local state."""


@runtime_checkable
class SharedState(Protocol):
    """Counters and values every node sees, as the gateway offers them to plugins.

    Every method may raise :class:`SharedStateUnavailable`. Async methods run on the
    gateway's event loop; from a worker thread (a sync hook, code under ``asyncio.to_thread``)
    use :meth:`blocking`.
    """

    async def add(self, increments: Sequence[Increment], *, refresh: bool = False) -> list[int]:
        """Add to each counter, all in one round trip; the new values in order.

        A missing counter starts at 0 with the increment's time to live; with ``refresh``
        every counter's time to live starts again (counters that live as long as they are
        used, such as token counts), else it is kept (counters per window).
        """
        ...

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` in order (``None`` for missing or expired), one round trip."""
        ...

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        """Set ``key`` to ``value`` for ``ttl`` seconds (only when missing with ``only_new``);
        whether it was set."""
        ...

    async def put_many(self, values: Mapping[str, str], ttl: float) -> None:
        """Set every key of ``values`` for ``ttl`` seconds, in one round trip."""
        ...

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        """Set ``key`` to ``value`` for ``ttl`` seconds and return what it held before, in one
        atomic step: two nodes doing the same never both see the old value."""
        ...

    def blocking(self, call: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``call`` (one of the methods above) on the gateway's event loop and wait for it,
        from a thread other than the loop's; raises :class:`SharedStateUnavailable` on the
        loop's own thread, before the gateway started, or after ``timeout`` seconds."""
        ...


def shared_state(host: Any) -> SharedState | None:
    """The cluster's :class:`SharedState` of the gateway ``host``, or ``None`` when the gateway
    shares nothing (no ``[redis]``, an isolated detector)."""
    state = getattr(host, "shared_state", None)
    return state if isinstance(state, SharedState) else None

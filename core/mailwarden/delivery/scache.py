"""Idle SMTP connections to the next hop, kept for the next message (Postfix's scache).

Connect, EHLO, STARTTLS and QUIT cost more than a small message's own transaction. A
connection goes back here only when its dialogue is in sync (the last command got a reply
other than 421, no exception); before another message uses it, it must answer RSET with 250.
Anything else closes it, and the caller opens a fresh one before a byte of its message went
out, so a dead cached connection never costs a retry or risks a duplicate.

Bounds: ``max_idle`` idle connections per destination, ``idle_timeout`` seconds idle (well below
the 5 minutes RFC 5321 4.5.3.2.7 gives servers, so the next hop rarely closes one under us),
and ``reuse_limit`` messages per connection. Expired connections are closed when met and by
:meth:`ConnectionCache.sweep`. Used from the delivery queue's event loop only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .smtpclient import Connection

__all__ = ["ConnectionCache", "Destination", "Session", "close_session", "reset_session"]

log = logging.getLogger(__name__)

# A QUIT only tidies up: a peer that stopped answering must not hold a delivery long.
_QUIT_TIMEOUT = 2.0


class Destination(NamedTuple):
    """What a connection was opened for; a connection serves only its own destination."""

    host: str
    port: int
    helo: str
    tls: str  # the [delivery] tls mode it was opened under
    secure: bool  # STARTTLS is in effect


@dataclass(eq=False)
class Session:
    """One open connection to the next hop, after EHLO (and STARTTLS when it took)."""

    client: Connection
    destination: Destination
    messages: int = 0  # transactions begun on it (MAIL sent)
    idle_since: float = field(default_factory=time.monotonic)


async def close_session(session: Session, *, quit: bool) -> None:
    """Close, with a QUIT first when the dialogue is in sync; errors are of no interest."""
    if quit and session.client.connected:
        await session.client.quit(_QUIT_TIMEOUT)
    else:
        session.client.close()


async def reset_session(session: Session, timeout: float) -> bool:
    """RSET on an idle connection: True when it answered 250."""
    if not session.client.connected:
        return False
    try:
        code, _ = await session.client.command("RSET", timeout)
    except OSError:
        session.client.close()
        return False
    return code == 250


class ConnectionCache:
    """Idle connections per :class:`Destination`, newest used first."""

    def __init__(self, *, max_idle: int = 8, idle_timeout: float = 20.0, reuse_limit: int = 100):
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.reuse_limit = reuse_limit
        self._idle: dict[Destination, list[Session]] = {}
        self._closed = False

    async def take(
        self, host: str, port: int, helo: str, tls: str, timeout: float, *, reset: bool = True
    ) -> Session | None:
        """An idle connection that answered RSET with 250, or None: then open a new one.

        With ``reset=False`` the caller sends RSET itself (pipelined with its next commands)
        and must drop the connection unless that RSET is answered 250."""
        # With opportunistic TLS a protected connection is preferred; a clear one is only here
        # when its server offered no STARTTLS, which is what a new connection would find too.
        wanted = [
            Destination(host, port, helo, tls, secure)
            for secure in {"required": (True,), "none": (False,)}.get(tls, (True, False))
        ]
        while True:
            for old in self._expired(time.monotonic()):
                await close_session(old, quit=True)
            session = next((s for d in wanted if (s := self._pop(d))), None)
            if session is None:
                return None
            if session.client.has_spoken:
                # An EOF or a 421 before it hung up: gone, found without a round trip.
                log.debug("connection to %s:%d closed while idle", host, port)
                session.client.close()
                continue  # another idle one may still be fine: this costs no round trip
            if reset and not await reset_session(session, timeout):
                # The server is up but unhappy, or gone silently: a new connection is the
                # better bet than probing the other idle ones one round trip at a time.
                log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
                await close_session(session, quit=True)
                return None
            log.debug(
                "reusing connection to %s:%d (message %d on it)",
                host,
                port,
                session.messages + 1,
            )
            return session

    async def give(self, session: Session) -> None:
        """Keep ``session`` for the next message; only call when its dialogue is in sync."""
        now = time.monotonic()
        drop = self._expired(now)
        used_up = session.messages >= self.reuse_limit
        if self._closed or used_up or not session.client.connected:
            drop.append(session)
        else:
            session.idle_since = now
            idle = self._idle.setdefault(session.destination, [])
            idle.append(session)
            if len(idle) > self.max_idle:
                # The one idle longest goes: it is the nearest to its idle timeout.
                drop.append(idle.pop(0))
        for old in drop:
            await close_session(old, quit=True)

    async def sweep(self) -> None:
        """Close the connections idle longer than ``idle_timeout`` (QUIT, errors ignored)."""
        for old in self._expired(time.monotonic()):
            await close_session(old, quit=True)

    async def close(self) -> None:
        """QUIT every idle connection; connections given back later are closed at once."""
        self._closed = True
        idle = [s for sessions in self._idle.values() for s in sessions]
        self._idle.clear()
        for session in idle:
            await close_session(session, quit=True)

    def idle_count(self) -> int:
        """How many connections wait for a message now."""
        return sum(len(sessions) for sessions in self._idle.values())

    def _pop(self, destination: Destination) -> Session | None:
        idle = self._idle.get(destination)
        return idle.pop() if idle else None

    def _expired(self, now: float) -> list[Session]:
        expired: list[Session] = []
        for destination, idle in list(self._idle.items()):
            # Oldest first: the expired ones are a prefix of the list.
            keep = next(
                (i for i, s in enumerate(idle) if now - s.idle_since < self.idle_timeout),
                len(idle),
            )
            expired += idle[:keep]
            del idle[:keep]
            if not idle:
                del self._idle[destination]
        return expired

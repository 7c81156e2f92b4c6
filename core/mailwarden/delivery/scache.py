"""Idle SMTP connections to the next hop, kept for the next message (Postfix's scache).

Connect, EHLO, STARTTLS and QUIT cost more than a small message's own transaction. A
connection goes back here only when its dialogue is in sync (the last command got a reply
other than 421, no exception); before another message uses it, it must answer RSET with 250.
Anything else closes it, and the caller opens a fresh one before a byte of its message went
out, so a dead cached connection never costs a retry or risks a duplicate.

Bounds: ``max_idle`` idle connections per destination, ``idle_timeout`` seconds idle (well below
the 5 minutes RFC 5321 4.5.3.2.7 gives servers, so the next hop rarely closes one under us),
and ``reuse_limit`` messages per connection. Expired connections are closed when met and by
:meth:`ConnectionCache.sweep`. Used from many delivery threads at once; network I/O never runs
under the lock.
"""

from __future__ import annotations

import logging
import select
import smtplib
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["ConnectionCache", "Destination", "Session", "close_session", "reset_session"]

log = logging.getLogger(__name__)

# A QUIT only tidies up: a peer that stopped answering must not hold a delivery thread long.
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

    client: smtplib.SMTP
    destination: Destination
    messages: int = 0  # transactions begun on it (MAIL sent)
    idle_since: float = field(default_factory=time.monotonic)


def close_session(session: Session, *, quit: bool) -> None:
    """Close, with a QUIT first when the dialogue is in sync; errors are of no interest."""
    client = session.client
    try:
        if quit and client.sock is not None:
            client.sock.settimeout(_QUIT_TIMEOUT)
            client.docmd("QUIT")
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        try:
            client.close()
        except OSError:
            pass


def _peer_has_spoken(session: Session) -> bool:
    # Between transactions an in-sync server says nothing: anything to read is an EOF or a
    # 421 before it hung up, so the connection is gone without spending a round trip on RSET.
    sock = session.client.sock
    if sock is None:
        return True
    pending = getattr(sock, "pending", None)  # bytes already decrypted by the TLS layer
    if pending is not None and pending():
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def reset_session(session: Session, timeout: float) -> bool:
    """RSET on an idle connection: True when it answered 250 (smtplib closes it on errors)."""
    client = session.client
    if client.sock is None:
        return False
    try:
        client.sock.settimeout(timeout)
        code, _ = client.rset()
    except (OSError, smtplib.SMTPException):
        return False
    return code == 250


class ConnectionCache:
    """Idle connections per :class:`Destination`, newest used first."""

    def __init__(self, *, max_idle: int = 8, idle_timeout: float = 20.0, reuse_limit: int = 100):
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.reuse_limit = reuse_limit
        self._idle: dict[Destination, list[Session]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(
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
            with self._lock:
                expired = self._expired_locked(time.monotonic())
                session = next((s for d in wanted if (s := self._pop_locked(d))), None)
            for old in expired:
                close_session(old, quit=True)
            if session is None:
                return None
            if _peer_has_spoken(session):
                log.debug("connection to %s:%d closed while idle", host, port)
                close_session(session, quit=False)
                continue  # another idle one may still be fine: this costs no round trip
            if reset and not reset_session(session, timeout):
                # The server is up but unhappy, or gone silently: a new connection is the
                # better bet than probing the other idle ones one round trip at a time.
                log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
                # smtplib closes the socket on an error: one still open got a reply, so QUIT.
                close_session(session, quit=session.client.sock is not None)
                return None
            log.debug(
                "reusing connection to %s:%d (message %d on it)",
                host,
                port,
                session.messages + 1,
            )
            return session

    def give(self, session: Session) -> None:
        """Keep ``session`` for the next message; only call when its dialogue is in sync."""
        now = time.monotonic()
        with self._lock:
            drop = self._expired_locked(now)
            used_up = session.messages >= self.reuse_limit
            if self._closed or used_up or session.client.sock is None:
                drop.append(session)
            else:
                session.idle_since = now
                idle = self._idle.setdefault(session.destination, [])
                idle.append(session)
                if len(idle) > self.max_idle:
                    # The one idle longest goes: it is the nearest to its idle timeout.
                    drop.append(idle.pop(0))
        for old in drop:
            close_session(old, quit=True)

    def sweep(self) -> None:
        """Close the connections idle longer than ``idle_timeout`` (QUIT, errors ignored)."""
        with self._lock:
            expired = self._expired_locked(time.monotonic())
        for old in expired:
            close_session(old, quit=True)

    def close(self) -> None:
        """QUIT every idle connection; connections given back later are closed at once."""
        with self._lock:
            self._closed = True
            idle = [s for sessions in self._idle.values() for s in sessions]
            self._idle.clear()
        for session in idle:
            close_session(session, quit=True)

    def idle_count(self) -> int:
        """How many connections wait for a message now."""
        with self._lock:
            return sum(len(sessions) for sessions in self._idle.values())

    def _pop_locked(self, destination: Destination) -> Session | None:
        idle = self._idle.get(destination)
        return idle.pop() if idle else None

    def _expired_locked(self, now: float) -> list[Session]:
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

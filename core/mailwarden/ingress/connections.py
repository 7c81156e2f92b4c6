"""What the SMTP listeners share: the connection caps of one listener, the envelope sender.

The gateway's SMTP listener (:mod:`.smtp`) and Postfix's content filter
(:mod:`.content_filter`) both serve SMTP with these; neither borrows them from the other.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Connection", "ConnectionLimits", "envelope_sender"]


class Connection(Protocol):
    """An open SMTP connection as the caps see it: idle since when, and how to close it."""

    idle_since: float | None

    def evict(self) -> None:
        """Close the connection to make room for another client's."""


class ConnectionLimits:
    """Open connections of one listener process, in total and per client address.

    A cap per address alone does not keep one client from starving the others: a few addresses
    at their cap fill the listener (4 x 50 = 200 idle connections locked everyone out for the
    whole timeout). So when the listener is full, a connection from an address that holds fewer
    than the busiest one takes the place of that address's longest idle connection.
    """

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, min(per_ip, total)
        self.open: dict[str, list[Connection]] = {}
        self.count = 0

    def admit(self, address: str, connection: Connection) -> bool:
        """Count ``connection`` from ``address`` in, unless that would pass a cap."""
        mine = self.open.get(address, [])
        if len(mine) >= self.per_ip:
            return False
        if self.count >= self.total and not self._make_room(len(mine)):
            return False
        self.open.setdefault(address, []).append(connection)
        self.count += 1
        return True

    def _make_room(self, held: int) -> bool:
        busiest = max(self.open.values(), key=len)
        if len(busiest) <= held + 1:
            return False
        idle = [c for c in busiest if c.idle_since is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since or 0.0)
        victim.evict()
        return True

    def leave(self, address: str, connection: Connection) -> None:
        """Count ``connection`` out (once; a connection never admitted is ignored)."""
        mine = self.open.get(address)
        if mine is None or connection not in mine:
            return
        mine.remove(connection)
        self.count -= 1
        if not mine:
            del self.open[address]


def envelope_sender(mail_from: str | None) -> str:
    """The Envelope's sender for aiosmtpd's MAIL FROM (the null sender ``<>`` is ``""``)."""
    return "" if not mail_from or mail_from == "<>" else mail_from

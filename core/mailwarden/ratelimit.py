"""Rate limits: messages and bytes per window, per sender, sender domain, client and recipient.

Sliding windows, counted as Cloudflare's and Kong's sliding-window limits count them: a counter
per (limit, who, window number) under ``rl:`` in the policy state, and a message is over the
limit when the count of the current window plus the previous window's count, weighted by the
share of that window still inside the last ``window`` seconds (rounded down), is over the cap.
With fixed windows alone a sender could send the limit at the end of one window and the limit
again at the start of the next, seconds later; now the second burst is refused, the previous
window's share frees as it slides out, and a sender at a steady rate at the limit is never
refused. Each counter lives two windows, so the previous one is there to read. Every counter a
message touches moves, and the previous ones are read, in one call (one Redis round trip); the
message counts even when it is refused, so a sender that keeps trying stays refused until its
weighted count falls below the limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence

from .config import RateLimit, RatelimitConfig
from .greylist import in_networks
from .sharedstate import Increment, StateBackend

__all__ = ["RateLimiter"]

_KINDS = ("sender", "sender_domain", "client", "recipient")


class RateLimiter:
    """The rate-limit step; :meth:`count` once per message."""

    def __init__(
        self,
        config: RatelimitConfig,
        state: StateBackend,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.allow_networks]

    def _subjects(
        self, sender: str, client: str | None, recipients: Sequence[str]
    ) -> list[tuple[str, str, RateLimit]]:
        cfg = self.config
        found: list[tuple[str, str, RateLimit]] = []
        sender = sender.lower()
        if sender:
            found.append(("sender", sender, cfg.sender))
            domain = sender.rpartition("@")[2]
            if domain:
                found.append(("sender_domain", domain, cfg.sender_domain))
        if client:
            found.append(("client", client, cfg.client))
        for recipient in dict.fromkeys(r.lower() for r in recipients):
            found.append(("recipient", recipient, cfg.recipient))
        return [s for s in found if s[2].messages or s[2].bytes]

    async def count(
        self, sender: str, client: str | None, recipients: Sequence[str], size: int
    ) -> str | None:
        """Count one message of ``size`` bytes; the 451 reply when it is over a limit."""
        if in_networks(client, self.allowed):
            return None
        subjects = self._subjects(sender, client, recipients)
        if not subjects:
            return None
        now = self.clock()
        increments: list[Increment] = []
        checks: list[tuple[str, str, str, int, RateLimit, float]] = []
        for kind, who, limit in subjects:
            position = now / limit.window
            window = int(position)
            # The share of the previous window that still lies in the last ``window`` seconds.
            weight = 1.0 - (position - window)
            digest = hashlib.blake2b(who.encode(), digest_size=12).hexdigest()
            for unit, amount, cap in (("m", 1, limit.messages), ("b", size, limit.bytes)):
                if cap:
                    key = f"rl:{kind}:{unit}:{limit.window:g}:{{}}:{digest}"
                    lifetime = 2 * limit.window
                    increments.append((key.format(window), amount, lifetime))
                    # Adding nothing reads the previous window's count in the same call.
                    increments.append((key.format(window - 1), 0, lifetime))
                    checks.append((kind, who, unit, cap, limit, weight))
        values = await self.state.add(increments)
        for index, (kind, who, unit, cap, limit, weight) in enumerate(checks):
            current, previous = values[2 * index], values[2 * index + 1]
            if current + int(previous * weight) > cap:
                what = "messages" if unit == "m" else "bytes"
                return (
                    f"451 4.7.1 Rate limit exceeded for {kind.replace('_', ' ')} {who}: more "
                    f"than {cap} {what} in {limit.window:g} seconds; try again later"
                )
        return None

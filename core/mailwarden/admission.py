"""The policy steps before detection: greylisting and rate limits, as the ingresses ask them.

The SMTP gateway asks :meth:`PolicySteps.at_recipient` at each RCPT (greylisting, so a
deferred sender never sends the data) and :meth:`PolicySteps.at_message` at the end of DATA,
before the message is spooled and scanned (rate limits need its size). The milter asks both at
the end of the message. The after-queue content filter asks neither: Postfix has accepted the
message already, and a 4xx would only make Postfix retry from its own queue. A step that
cannot read its state answers ``451 4.3.0``, never an acceptance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .greylist import Greylist
from .ratelimit import RateLimiter
from .sharedstate import PluginState, StateBackend, open_state

if TYPE_CHECKING:
    from .config import Config
    from .telemetry.metrics import GatewayMetrics

__all__ = ["PolicySteps"]

log = logging.getLogger(__name__)

_STATE_FAILED = "451 4.3.0 Temporary policy state failure; try again later"


class PolicySteps:
    """Greylisting and rate limits of one gateway; both off unless configured."""

    def __init__(self, config: Config, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics
        self.state: StateBackend | None = None
        self.greylist: Greylist | None = None
        self.ratelimit: RateLimiter | None = None
        #: The cluster's Redis for plugins (mailwarden_sdk.shared_state), with ``[redis]``.
        self.shared: PluginState | None = None
        if not (config.greylisting.enabled or config.ratelimit.enabled or config.redis.enabled):
            return
        self.state, self.shared = open_state(config, metrics)
        if config.greylisting.enabled:
            self.greylist = Greylist(config.greylisting, self.state)
        if config.ratelimit.enabled:
            self.ratelimit = RateLimiter(config.ratelimit, self.state)

    async def at_recipient(
        self,
        sender: str,
        recipient: str,
        client: str | None,
        *,
        authenticated: bool,
        trusted: bool,
    ) -> str | None:
        """``None`` when ``recipient`` may be accepted now, else the 4xx reply."""
        greylist = self.greylist
        if greylist is None or greylist.exempt(
            sender, client, authenticated=authenticated, trusted=trusted
        ):
            return None
        try:
            left = await greylist.check(sender, recipient, client)
        except Exception:
            log.exception("greylisting state could not be read")
            return _STATE_FAILED
        if left is None:
            return None
        log.info("greylisted %s -> %s from %s (%.0f s left)", sender, recipient, client, left)
        self._deferred("greylist")
        return greylist.reply(left)

    async def at_message(
        self, sender: str, client: str | None, recipients: Sequence[str], size: int
    ) -> str | None:
        """``None`` when the message is within every rate limit, else the 4xx reply."""
        if self.ratelimit is None:
            return None
        try:
            reply = await self.ratelimit.count(sender, client, recipients, size)
        except Exception:
            log.exception("rate-limit counters could not be updated")
            return _STATE_FAILED
        if reply is not None:
            log.info("rate limited: %s from %s: %s", sender, client, reply)
            self._deferred("ratelimit")
        return reply

    def _deferred(self, policy: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_deferrals.labels(policy).inc()

    async def close(self) -> None:
        """Close the state's connections (Redis) and handles (LMDB)."""
        if self.state is not None:
            await self.state.close()

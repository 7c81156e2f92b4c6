"""The policy steps before detection: plugins' steps, greylisting and rate limits.

Every step is a ``mailwarden_policy_step`` implementation (:mod:`mailwarden_sdk.policy`),
asked one after the other in pluggy's order; the built-in greylisting and rate limits are
registered into the gateway's plugin manager as steps too (``trylast``), so they go through
the same list, budget and fail-closed handling as a plugin's. The SMTP gateway asks
:meth:`PolicySteps.at_recipient` at each RCPT (greylisting, so a deferred sender never sends
the data) and :meth:`PolicySteps.at_message` at the end of DATA, before the message is spooled
and scanned (rate limits need its size). The milter asks both at the end of the message. The
after-queue content filter asks neither: Postfix has accepted the message already, and a 4xx
would only make Postfix retry from its own queue. A step that fails, runs out of
``[hooks] policy_step`` or cannot read its state answers ``451 4.3.0``, never an acceptance.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pluggy

from mailwarden_sdk import Envelope, PolicyRequest, PolicyStage, PolicyVerdict, hookimpl

from .errors import PluginError
from .greylist import Greylist
from .hookcalls import HookRunner
from .ratelimit import RateLimiter
from .sharedstate import PluginState, StateBackend, open_state

if TYPE_CHECKING:
    from .config import Config
    from .telemetry.metrics import GatewayMetrics

__all__ = ["GreylistStep", "PolicySteps", "RateLimitStep"]

log = logging.getLogger(__name__)

_STATE_FAILED = "451 4.3.0 Temporary policy state failure; try again later"
_HOOK = "mailwarden_policy_step"


def _tempfail(reply: str) -> PolicyVerdict:
    """A built-in step's ``"451 4.7.1 text"`` as a verdict."""
    code, status, text = reply.split(" ", 2)
    return PolicyVerdict.tempfail(text, code=int(code), status=status)


class GreylistStep:
    """Greylisting as a policy step: at each recipient, unless the client is exempt."""

    def __init__(self, greylist: Greylist) -> None:
        self.greylist = greylist

    @hookimpl(trylast=True)
    async def mailwarden_policy_step(self, request: PolicyRequest) -> PolicyVerdict | None:
        greylist = self.greylist
        recipient = request.recipient
        if request.stage != "recipient" or recipient is None:
            return None
        sender, client = request.sender, request.client
        if greylist.exempt(
            sender, client, authenticated=request.authenticated, trusted=request.trusted
        ):
            return None
        left = await greylist.check(sender, recipient, client)
        if left is None:
            return None
        log.info("greylisted %s -> %s from %s (%.0f s left)", sender, recipient, client, left)
        return _tempfail(greylist.reply(left))


class RateLimitStep:
    """Rate limits as a policy step: once per message, when its size is known."""

    def __init__(self, ratelimit: RateLimiter) -> None:
        self.ratelimit = ratelimit

    @hookimpl(trylast=True)
    async def mailwarden_policy_step(self, request: PolicyRequest) -> PolicyVerdict | None:
        if request.stage != "message" or request.size is None:
            return None
        envelope = request.envelope
        reply = await self.ratelimit.count(
            envelope.mail_from, envelope.client_address, envelope.rcpt_to, request.size
        )
        if reply is None:
            return None
        log.info("rate limited: %s from %s: %s", envelope.mail_from, request.client, reply)
        return _tempfail(reply)


class PolicySteps:
    """The policy steps of one gateway: plugins' steps, then greylisting and rate limits (both
    off unless configured)."""

    def __init__(
        self,
        config: Config,
        plugins: pluggy.PluginManager,
        hooks: HookRunner,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.hooks = hooks
        self._registered: list[tuple[pluggy.PluginManager, object]] = []
        self.budget = config.hooks.policy_step
        self._hook = plugins.hook.mailwarden_policy_step
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
            self._register(plugins, GreylistStep(self.greylist), "greylist")
        if config.ratelimit.enabled:
            self.ratelimit = RateLimiter(config.ratelimit, self.state)
            self._register(plugins, RateLimitStep(self.ratelimit), "ratelimit")

    def _register(self, plugins: pluggy.PluginManager, step: object, name: str) -> None:
        # Named as the deferral metric's policy label always was.
        if plugins.has_plugin(name):
            raise PluginError(
                f"a plugin named {name!r} is loaded, but that is the name of the built-in "
                f"{name} step; rename the plugin's entry point"
            )
        plugins.register(step, name=name)
        self._registered.append((plugins, step))

    async def at_recipient(
        self, envelope: Envelope, recipient: str, *, trusted: bool
    ) -> str | None:
        """``None`` when ``recipient`` may be accepted now, else the reply (4xx or 5xx).

        ``envelope.rcpt_to`` holds the recipients accepted so far."""
        return await self._ask("recipient", envelope, trusted, recipient=recipient, size=None)

    async def at_message(self, envelope: Envelope, size: int, *, trusted: bool) -> str | None:
        """``None`` when the whole message may be accepted, else the reply (4xx or 5xx)."""
        return await self._ask("message", envelope, trusted, recipient=None, size=size)

    async def _ask(
        self,
        stage: PolicyStage,
        envelope: Envelope,
        trusted: bool,
        *,
        recipient: str | None,
        size: int | None,
    ) -> str | None:
        impls = self._hook.get_hookimpls()
        if not impls:
            return None
        request = PolicyRequest(
            stage=stage, envelope=envelope, recipient=recipient, size=size, trusted=trusted
        )
        # pluggy keeps implementations in reverse calling order.
        for impl in reversed(impls):
            name = impl.plugin_name
            try:
                answer: Any = await self.hooks.call(impl, self.budget, request=request)
            except TimeoutError:
                log.error("policy step %s did not answer within %g s", name, self.budget)
                self.hooks.failed(_HOOK, name, "timeout")
                return _STATE_FAILED
            except Exception:
                log.exception("policy step %s failed", name)
                self.hooks.failed(_HOOK, name, "error")
                return _STATE_FAILED
            if answer is None:
                continue
            if not isinstance(answer, PolicyVerdict):
                log.error("policy step %s answered %r, not a PolicyVerdict", name, answer)
                self.hooks.failed(_HOOK, name, "error")
                return _STATE_FAILED
            if answer.action == "accept":
                return None
            log.debug("policy step %s: %s for %s", name, answer.action, envelope.mail_from)
            if answer.action == "tempfail":
                self._deferred(name)
            return answer.reply()
        return None

    def _deferred(self, policy: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_deferrals.labels(policy).inc()

    async def close(self) -> None:
        """Close the state's connections (Redis) and handles (LMDB); the built-in steps leave
        the plugin manager."""
        for plugins, step in self._registered:
            plugins.unregister(step)
        self._registered = []
        if self.state is not None:
            await self.state.close()

"""The decide stage: the rule's action for a verdict (with the verdict and action hooks), and
the one SMTP reply for recipients that fall under different rules (:func:`settle`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from mailwarden_native import ParsedMessage
from mailwarden_sdk import Action, ActionKind, Envelope, Finding, ScanContext, Verdict

from .config import RuleConfig
from .detect import TIMEOUT, error_finding
from .hookcalls import call_impl, runs_inline
from .policy import decide_action
from .rewrite import header_text, prepend_headers, tag_subject

if TYPE_CHECKING:
    from .config import HooksConfig
    from .hookcalls import HookRunner

__all__ = [
    "REFUSING",
    "Deciding",
    "Decision",
    "accepted_form",
    "decide",
    "finished",
    "settle",
    "verdict_failed",
]

log = logging.getLogger(__name__)

#: Actions that refuse the message in the SMTP transaction.
REFUSING = (ActionKind.REJECT, ActionKind.TEMPFAIL)


@dataclass
class Decision:
    """What the pipeline concluded about one message for one rule."""

    id: str
    envelope: Envelope
    message: ParsedMessage
    rule: RuleConfig
    verdict: Verdict
    action: Action
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: What the detectors saw (with their stash), for ``mailwarden_hold``.
    context: ScanContext | None = field(default=None, repr=False)

    def with_headers(self) -> bytes:
        """The message to pass on: the replacement a plugin made, if any, with the subject tag
        and the action's headers prepended, in the message's own line ending."""
        raw = self.action.replace_message or self.message.raw
        if self.action.subject_tag:
            raw = tag_subject(raw, self.action.subject_tag)
        return prepend_headers(raw, self.action.add_headers)

    def added_headers(self) -> list[tuple[str, str]]:
        """The action's headers as they are written, for an MTA that adds them itself."""
        return [(header_text(name), header_text(value)) for name, value in self.action.add_headers]

    def tagged_subject(self) -> str | None:
        """The subject with the action's tag before it (the tag alone when the message has
        no subject), for an MTA that changes it itself; ``None`` without a tag."""
        tag = self.action.subject_tag
        if not tag:
            return None
        subject = self.message.subject or ""
        return header_text(f"{tag} {subject}" if subject else tag)


def accepted_form(action: Action) -> Action:
    """What a refusing action becomes once the message is accepted for other recipients."""
    if action.kind is ActionKind.REJECT:
        return msgspec.structs.replace(
            action,
            kind=ActionKind.DISCARD,
            smtp_code=250,
            smtp_text="2.0.0 Blocked for these recipients: " + action.smtp_text.split(" ", 1)[-1],
        )
    if action.kind is ActionKind.TEMPFAIL:
        return msgspec.structs.replace(action, kind=ActionKind.QUARANTINE, smtp_code=250)
    return action


def settle(decisions: Sequence[Decision]) -> Decision | None:
    """One reply for a transaction whose recipients fall under different rules.

    When every rule refuses, returns the decision whose refusal is the reply: a temporary one
    wins, so the sender retries and nothing is lost. Otherwise the message is accepted and
    ``None`` is returned; with several decisions each refusing action takes its accepted form:
    recipients whose rule rejects are blocked (not delivered, recorded) rather than bounced,
    because a bounce for spam or malware goes to a forged sender, and recipients whose rule
    tempfails are held in the quarantine for an admin instead of being dropped.
    """
    if all(d.action.kind in REFUSING for d in decisions):
        temporary = (d for d in decisions if d.action.kind is ActionKind.TEMPFAIL)
        return next(temporary, decisions[0])
    if len(decisions) > 1:
        for d in decisions:
            d.action = accepted_form(d.action)
    return None


async def decide(
    hook: Any,
    hooks: HookRunner,
    budgets: HooksConfig,
    ctx: ScanContext,
    rule: RuleConfig,
    folded: Verdict,
) -> tuple[Verdict, Action]:
    """The verdict hooks adjust ``folded`` (within ``[hooks] verdict``), the rule decides,
    the action hooks do what needs the content (``mailwarden_action``, within ``[hooks]
    action``). The backup copy is named here and kept by the outbox when an ingress acts, so
    a dry run keeps nothing.

    Both hooks run in one worker thread, one hand-off per message rather than two (each
    costs about 50 us of CPU); their budgets are watched from here by the stage the thread
    reached. When the verdict hooks run out of time (or one raises) the folded verdict
    stands with an error finding and the message is not delivered (see :class:`Deciding`).
    """
    deciding = Deciding(hook, ctx, rule, folded)
    if not (deciding.adjusting or deciding.acting):
        return folded, finished(deciding.decide(folded, failed=False), None)
    if runs_inline(deciding.adjusting, ctx=ctx, verdict=folded):
        return await _decide_inline(deciding, hooks, budgets)
    if hooks.executor is not None:
        running = hooks.executor.run_soon(deciding.run, deciding.wake)
    else:
        running = asyncio.get_running_loop().run_in_executor(None, deciding.run)
        running.add_done_callback(lambda _: deciding.wake())
    if not await deciding.wait(running, budgets.verdict, budgets.action):
        log.error(
            "mailwarden_verdict gave no answer within %g s ([hooks] verdict)", budgets.verdict
        )
        hooks.failed("mailwarden_verdict", "*", "timeout")
        why = f"no answer within {budgets.verdict:g} s"
        verdict_failed(folded, error_finding("verdict", TIMEOUT, why))
        action = deciding.decide(folded, failed=True)
        changed = None
        if deciding.acting:
            changed = await _act(hook, hooks, budgets.action, ctx, folded, action, here=False)
        return folded, finished(action, changed)
    changed = None
    if not running.done():
        # The action stands as decided (a removal no plugin made is held in finished()).
        _action_timed_out(hooks, budgets.action, deciding.verdict or folded)
    else:
        try:
            changed = running.result()
        except Exception:
            log.exception("mailwarden_action failed")
    verdict = deciding.verdict or folded
    action = deciding.action or deciding.decide(verdict, failed=False)
    return verdict, finished(action, changed)


async def _decide_inline(
    deciding: Deciding, hooks: HookRunner, budgets: HooksConfig
) -> tuple[Verdict, Action]:
    """:func:`decide` when every verdict hook is non-blocking (``mailwarden_sdk.nonblocking``):
    they run here, on the loop's thread, and so do the action hooks when they are too;
    otherwise the action hooks alone go to a worker, within their budget."""
    deciding.adjust()
    ctx, verdict, action = deciding.ctx, deciding.verdict, deciding.action
    assert verdict is not None and action is not None
    changed = None
    if deciding.acting:
        here = runs_inline(deciding.acting, ctx=ctx, verdict=verdict, action=action)
        changed = await _act(deciding.hook, hooks, budgets.action, ctx, verdict, action, here=here)
    return verdict, finished(action, changed)


async def _act(
    hook: Any,
    hooks: HookRunner,
    budget: float,
    ctx: ScanContext,
    verdict: Verdict,
    action: Action,
    *,
    here: bool,
) -> Any:
    """The action hooks' answer on their own: ``here`` on the loop's thread, or in a worker
    within ``budget`` seconds; ``None`` when they failed or ran out of time (recorded)."""
    try:
        if here:
            return hook.mailwarden_action(ctx=ctx, verdict=verdict, action=action)
        kwargs = {"ctx": ctx, "verdict": verdict, "action": action}
        return await call_impl(hook.mailwarden_action, kwargs, budget, hooks.executor)
    except TimeoutError:
        _action_timed_out(hooks, budget, verdict)
    except Exception:
        log.exception("mailwarden_action failed")
    return None


def _action_timed_out(hooks: HookRunner, budget: float, verdict: Verdict) -> None:
    log.error("mailwarden_action gave no answer within %g s ([hooks] action)", budget)
    hooks.failed("mailwarden_action", "*", "timeout")
    # Recorded with the message; the decision is made already.
    verdict.findings.append(error_finding("action", TIMEOUT, f"no answer within {budget:g} s"))


class Deciding:
    """One message's verdict and action hooks, run in a worker thread, and how far they got.

    The verdict hooks work on a copy of the folded verdict: a hook that runs out of time goes
    on in its thread and must not change what the gateway acts on. Once the gateway gave up
    on them (:meth:`wait`) the thread stops before deciding.
    """

    def __init__(self, hook: Any, ctx: ScanContext, rule: RuleConfig, folded: Verdict) -> None:
        self.hook, self.ctx, self.rule, self.folded = hook, ctx, rule, folded
        #: The verdict and the action hooks' implementations (none: nothing to hand over).
        self.adjusting: list[Any] = hook.mailwarden_verdict.get_hookimpls()
        self.acting: list[Any] = hook.mailwarden_action.get_hookimpls()
        self._lock = threading.Lock()
        self._given_up = False
        #: The adjusted (or, when the hooks failed, the folded) verdict, once they are done.
        self.verdict: Verdict | None = None
        #: What the rule decided, as handed to the action hooks, and when.
        self.action: Action | None = None
        self.action_began: float | None = None
        # What :meth:`wait` waits on, woken when the thread's outcome is set or a budget
        # check is due.
        self._waiter: asyncio.Future[None] | None = None

    def decide(self, verdict: Verdict, *, failed: bool) -> Action:
        """The rule's action for ``verdict``; ``failed``: the verdict hooks did not finish."""
        action = decide_action(self.rule, verdict)
        if failed and action.kind is ActionKind.DELIVER:
            # The antispam score becomes a status in a verdict hook: a half-made verdict is
            # never delivered on, whatever the rule's error action; the sender retries.
            action = msgspec.structs.replace(
                action,
                kind=ActionKind.TEMPFAIL,
                reason="error",
                smtp_code=451,
                smtp_text="4.7.1 Message not accepted now (verdict unfinished); try again later",
            )
        if action.backup:
            action = msgspec.structs.replace(action, backup_id=secrets.token_hex(8))
        return action

    async def wait(self, running: asyncio.Future[Any], verdict: float, action: float) -> bool:
        """Wait for ``running`` (:meth:`run`) within the budgets: ``verdict`` seconds for the
        verdict hooks, then ``action`` seconds from when the action hooks began. False when
        the verdict hooks ran out (the thread then stops before deciding); True otherwise,
        with ``running`` done or its action hooks out of time."""
        deadline = time.monotonic() + verdict
        # Not told when the thread moves on to the action hooks: looked at this often.
        step = min(verdict, action)
        while not running.done():
            now = time.monotonic()
            if self.verdict is None:
                if now >= deadline:
                    with self._lock:
                        self._given_up = self.verdict is None
                    if self._given_up:
                        return False
                    continue
                await self._until(running, min(step, deadline - now))
            else:
                began = self.action_began or now
                if now >= began + action:
                    return True
                await self._until(running, began + action - now)
        return True

    def wake(self) -> None:
        """In the loop's thread: the worker's outcome is set (or a budget check is due)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _until(self, running: asyncio.Future[Any], timeout: float) -> None:
        """Until ``running`` is done (:meth:`wake`) or ``timeout`` seconds have passed: what
        ``asyncio.wait({running}, timeout=timeout)`` does, without its sets, its two
        coroutines, its result and the done callback's own round of the loop."""
        loop = running.get_loop()  # get_running_loop() is a getpid() system call each time
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self.wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def run(self) -> Any:
        """In the worker thread: verdict hooks, decision, action hooks (their answer)."""
        if not self.adjust():
            return None
        return self.act()

    def adjust(self) -> bool:
        """The verdict hooks and the rule's decision (:attr:`verdict`, :attr:`action`);
        False when the gateway gave up on them meanwhile."""
        verdict, error = self.folded, None
        if self.adjusting:
            work = msgspec.convert(msgspec.to_builtins(self.folded), Verdict)
            try:
                self.hook.mailwarden_verdict(ctx=self.ctx, verdict=work)
                verdict = work
            except Exception as exc:
                # pluggy stops at the first failing implementation.
                log.exception("mailwarden_verdict failed")
                error = error_finding("verdict", "DETECTOR_ERROR", repr(exc))
        with self._lock:
            if self._given_up:
                return False  # the folded verdict is the gateway's now
            if error is not None:
                verdict_failed(self.folded, error)
            self.verdict = verdict
        action = self.decide(verdict, failed=error is not None)
        self.action, self.action_began = action, time.monotonic()
        return True

    def act(self) -> Any:
        """The action hooks on what :meth:`adjust` decided (their answer)."""
        if not self.acting:
            return None
        return self.hook.mailwarden_action(ctx=self.ctx, verdict=self.verdict, action=self.action)


def verdict_failed(verdict: Verdict, error: Finding) -> None:
    """Record on ``verdict`` that the verdict hooks failed (``error`` says how)."""
    verdict.findings.append(error)
    verdict.errors = sorted({*verdict.errors, "verdict"})


def finished(action: Action, changed: Any) -> Action:
    """``action`` as an action hook changed it; parts nobody removed hold the message."""
    action = changed if isinstance(changed, Action) else action
    if action.remove_parts and action.replace_message is None:
        # Nothing could cut the parts out: hold the message rather than deliver them.
        action = msgspec.structs.replace(
            action, kind=ActionKind.QUARANTINE, remove_parts=[], subject_tag=None
        )
    return action

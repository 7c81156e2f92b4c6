"""The gateway: parse -> policy -> detect -> decide -> act -> record (DESIGN.md "One way through").

Ingress adapters (SMTP, milter, content filter, the CLI, library callers) hand a message and
its envelope to :meth:`Gateway.process` (or :meth:`Gateway.scan` when they act themselves) and
carry out the returned :class:`Outcome` in their own protocol's terms.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from mailwarden_native import ParsedMessage, detect_type, parse
from mailwarden_sdk import (
    QUARANTINE_ID,
    Action,
    ActionKind,
    Category,
    Envelope,
    Finding,
    MessageEvent,
    ScanContext,
    Verdict,
)
from mailwarden_sdk import Quarantine as PluginQuarantine
from mailwarden_sdk.offload import scanning

from .admission import PolicySteps
from .config import Config, RuleConfig, load_config
from .content_rules import DETECTOR as CONTENT_DETECTOR
from .content_rules import check_content, mime_ambiguities
from .delivery.queue import DeliveryQueue, crlf
from .dkim import DkimSigner
from .errors import ConfigError, DeliveryError, PluginError
from .events import MessageEventLog
from .hookcalls import DaemonExecutor, ObserverLane, call_impl
from .hookcalls import hook_kwargs as _kwargs
from .isolation import IsolatedDetector, target_of
from .maildir import Maildir
from .notify import build_notices
from .plugins import PluginSet, build_plugin_manager
from .policy import RuleMatch, RuleSet, compile_rules, decide_action, fold_findings, rule_runs
from .quarantine import Quarantine, ReleaseFailed
from .sharedstate import PluginState
from .spool import Spool, SpoolEntry, SpoolState
from .stores.core import CoreStores

if TYPE_CHECKING:
    from .directory.service import Directory

__all__ = ["Decision", "Gateway", "Outcome"]

log = logging.getLogger(__name__)

# Sync detectors and hooks run in threads so a slow one can be timed out without blocking the
# event loop; native calls release the GIL, so these threads also use every core of the worker.
_DETECTOR_THREADS = 32

_TIMEOUT = "HOOK_TIMEOUT"

_REFUSING = (ActionKind.REJECT, ActionKind.TEMPFAIL)

# Core sections a reload compares (rules are swapped; the others apply at the next start).
_RELOAD_SECTIONS = (
    "gateway",
    "smtp",
    "milter",
    "content_filter",
    "clamd",
    "spamd",
    "http_scan",
    "delivery",
    "detectors",
    "hooks",
    "events",
    "stores",
    "metrics",
    "spool",
    "tls",
    "dkim",
    "directory",
    "web",
    "greylisting",
    "ratelimit",
    "redis",
)


def _differs(a: object, b: object) -> bool:
    return msgspec.json.encode(a) != msgspec.json.encode(b)


def _accepted_form(action: Action) -> Action:
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
            raw = _tag_subject(raw, self.action.subject_tag)
        if not self.action.add_headers:
            return raw
        eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
        added = b"".join(
            name.encode("ascii") + b": " + _header_safe(value) + eol
            for name, value in self.action.add_headers
        )
        return added + raw


def _tag_subject(raw: bytes, tag: str) -> bytes:
    """``raw`` with ``tag`` before its subject (a Subject header is added when there is none)."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    head = raw[: end if end >= 0 else len(raw)]
    found = re.search(rb"^subject:[ \t]?", head, re.IGNORECASE | re.MULTILINE)
    if found is not None:
        return raw[: found.end()] + _header_safe(tag) + b" " + raw[found.end() :]
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return b"Subject: " + _header_safe(tag) + eol + raw


def _header_safe(value: str) -> bytes:
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


@dataclass
class Outcome:
    """A decision carried out: the reply the ingress gives and the recorded event."""

    decision: Decision
    reply_code: int
    reply_text: str
    event: MessageEvent | None
    #: When the recipients fell under different rules: one outcome per rule, in the order the
    #: rules were first met (``decision`` and ``event`` are then those of the first group).
    groups: list[Outcome] = field(default_factory=list)

    @property
    def reply(self) -> str:
        """The SMTP reply line, code and text."""
        return f"{self.reply_code} {self.reply_text}"


class _Host:
    """The gateway as plugins see it (mailwarden_sdk.Host)."""

    def __init__(self, config: Config, gateway: Gateway | None = None) -> None:
        self._config = config
        self._gateway = gateway
        self.data_dir: Path = config.home
        self.shared_state: PluginState | None = None

    def config_for(self, section: str) -> Any:
        return self._config.plugins.get(section)

    def resubmit(
        self, raw: bytes, envelope: Envelope, findings: Sequence[Finding] = ()
    ) -> Awaitable[tuple[int, str]]:
        if self._gateway is None:
            raise RuntimeError("resubmit needs a running gateway")
        return self._gateway.resubmit(raw, envelope, findings)

    def deliver(self, raw: bytes, envelope: Envelope) -> Awaitable[str]:
        if self._gateway is None:
            raise RuntimeError("deliver needs a running gateway")
        return self._gateway.deliver_released(raw, envelope)


class Gateway:
    """One configured gateway with its own plugin manager and stores.

    Use as ``async with Gateway(config) as gateway: await gateway.process(raw, envelope)``.
    ``extra_plugins`` adds plugin objects or classes by name beside the installed ones (tests,
    embedding applications); ``entry_points=False`` loads only those.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        extra_plugins: Mapping[str, Any] | None = None,
        entry_points: bool = True,
        plugins: PluginSet | None = None,
    ) -> None:
        self.plugins = plugins or build_plugin_manager(
            entry_points=entry_points, extra=extra_plugins
        )
        schemas = self.plugins.config_schemas()
        if config is None:
            config = load_config(None, schemas)
        for section, schema in schemas.items():
            # A Config built in code (not from a file) may lack a plugin's section: the plugin
            # then runs on its declared defaults, exactly as with a file that omits it.
            config.plugins.setdefault(section, msgspec.convert({}, schema))
        self.config = config
        for name in config.detectors.isolated:
            self._isolate(name)
        self.host = _Host(config, self)
        self.events = MessageEventLog(
            config.path_in_home(config.events.path),
            retention_days=config.events.retention_days,
            max_bytes=config.events.max_bytes,
        )
        # Statistics, metrics, events out, and the bounded stores' enforcement (issue 10).
        self.stores = CoreStores(config, self.events)
        self.maildir = Maildir(config.path_in_home(config.delivery.maildir))
        self.quarantine = Quarantine(config.home / "quarantine")
        self.spool = Spool(config.path_in_home(config.spool.path))
        self.dkim = DkimSigner.from_config(config)
        self.delivery = DeliveryQueue(self)
        # Greylisting and rate limits, asked by the ingresses before a message is scanned.
        self.policy_steps = PolicySteps(config, self.stores.metrics)
        # The cluster's Redis for plugins (mailwarden_sdk.shared_state); None without [redis].
        self.host.shared_state = self.policy_steps.shared
        self._executor: DaemonExecutor | None = None
        self._observers: list[ObserverLane] = []
        self._started = False
        # The directory is opened at start(); until then group patterns match nothing.
        self.directory: Directory | None = None
        self._directory_task: asyncio.Task[None] | None = None
        self._rules: tuple[Config, list[RuleConfig], RuleSet] | None = None

    def _isolate(self, name: str) -> None:
        loaded = self.plugins.plugins.get(name)
        if loaded is None:
            raise ConfigError(
                f"cannot isolate {name!r}: no such plugin "
                f"(loaded: {', '.join(self.plugins.plugins)})",
                path=self.config.source,
                key="detectors.isolated",
            )
        schema_hook = getattr(loaded.obj, "mailwarden_config_schema", None)
        proxy = IsolatedDetector(
            name, target_of(loaded.obj), schema_hook() if schema_hook else None
        )
        self.plugins.pm.unregister(name=name)
        self.plugins.pm.register(proxy, name=name)
        self.plugins.plugins[name] = replace(loaded, obj=proxy)

    @classmethod
    def from_file(cls, path: str | None, **kwargs: Any) -> Gateway:
        """A gateway for the config file at ``path`` (``None``: embedded defaults)."""
        plugins = build_plugin_manager(
            entry_points=kwargs.pop("entry_points", True), extra=kwargs.pop("extra_plugins", None)
        )
        return cls(load_config(path, plugins.config_schemas()), plugins=plugins, **kwargs)

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every plugin (``mailwarden_startup``); a failing plugin stops the start."""
        if self._started:
            return
        self._executor = DaemonExecutor(_DETECTOR_THREADS, "detector")
        if self.policy_steps.shared is not None:
            self.policy_steps.shared.bind(asyncio.get_running_loop())
        from .directory.service import open_directory

        # Opening may refresh an empty cache over the network, hence the thread; with the
        # integration off this deletes the cache (DESIGN.md, Stores).
        self.directory = await asyncio.to_thread(open_directory, self.config)
        if self.directory is not None:
            self._directory_task = asyncio.create_task(self.directory.keep_fresh())
        # Releases a process that is gone left half done: held again once stale.
        await asyncio.to_thread(self.quarantine.recover)
        budget = self.config.hooks.startup
        for impl in self.plugins.pm.hook.mailwarden_startup.get_hookimpls():
            try:
                await self._call(impl, budget, host=self.host)
            except TimeoutError as exc:
                self._executor.shutdown(wait=False, cancel_futures=True)
                raise PluginError(
                    f"plugin {impl.plugin_name!r} did not start within {budget:g} s "
                    "([hooks] startup)"
                ) from exc
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed to start: {exc!r}") from exc
        hooks = self.config.hooks
        self._observers = [
            ObserverLane(
                impl.plugin_name,
                impl.function,
                hooks.message_processed,
                hooks.observer_backlog,
                partial(self._hook_failed, "mailwarden_message_processed", impl.plugin_name),
            )
            for impl in self.plugins.pm.hook.mailwarden_message_processed.get_hookimpls()
        ]
        self._started = True

    async def stop(self) -> None:
        """Shut every plugin down; errors are logged, every plugin gets its call."""
        if not self._started:
            return
        budget = self.config.hooks.shutdown
        # Observers first, so they see every message; bounded like a shutdown hook.
        deadline = time.monotonic() + budget
        for lane in self._observers:
            lane.close(deadline)
        self._observers = []
        self.stores.flush()
        for impl in self.plugins.pm.hook.mailwarden_shutdown.get_hookimpls():
            try:
                await self._call(impl, budget, host=self.host)
            except TimeoutError:
                log.error(
                    "plugin %s did not shut down within %g s ([hooks] shutdown)",
                    impl.plugin_name,
                    budget,
                )
                self._hook_failed("mailwarden_shutdown", impl.plugin_name, "timeout")
            except Exception:
                log.exception("plugin %s failed to shut down", impl.plugin_name)
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._directory_task is not None:
            self._directory_task.cancel()
            await asyncio.gather(self._directory_task, return_exceptions=True)
            self._directory_task = None
        if self.directory is not None:
            self.directory.close()
            self.directory = None
        await self.policy_steps.close()
        self._started = False

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- reload ------------------------------------------------------------------------------

    def reload_config(self) -> list[str]:
        """Re-read the config file and swap in its rules; the sections that need a restart.

        The whole file is validated first; on any error a :class:`ConfigError` naming the key
        and line is raised and the running config stays. The new rules (with their content
        rules and actions) are compiled, then swapped in with one assignment: a message being
        scanned finishes under the rules it started with, the next one gets the new ones, and
        no connection is dropped. Other sections that differ are returned by name; they take
        effect at the next start.
        """
        if not self.config.source:
            raise ConfigError("nothing to reload: the gateway runs on its embedded defaults")
        new = load_config(self.config.source, self.plugins.config_schemas())
        old = self.config
        ruleset = compile_rules(new.rules, old.gateway.local_domains)
        changed = [n for n in _RELOAD_SECTIONS if _differs(getattr(old, n), getattr(new, n))]
        changed += [
            name
            for name in sorted({*old.plugins, *new.plugins})
            if _differs(old.plugins.get(name), new.plugins.get(name))
        ]
        if self.directory is not None and not new.directory.enabled:
            from .directory.service import turn_off

            # The cache of people and groups goes when the integration is turned off.
            turn_off(self.directory, self._directory_task)
            self.directory, self._directory_task = None, None
            changed = [name for name in changed if name != "directory"]
        config = msgspec.structs.replace(old, rules=new.rules)
        self._rules = (config, config.rules, ruleset)
        self.config = config
        return changed

    # -- policy ------------------------------------------------------------------------------

    def rule_for(self, sender: str, recipient: str, *, client: str | None = None) -> RuleConfig:
        """The rule covering ``recipient`` (the last rule applies when none matches)."""
        match = self.match_rule(sender, recipient, client=client)
        return match.rule if match else self.config.rules[-1]

    def match_rule(
        self, sender: str, recipient: str, *, client: str | None = None
    ) -> RuleMatch | None:
        """The first matching rule with the patterns that matched, else ``None``.

        Patterns are compiled once per config (a swapped config or rule list is recompiled on
        first use); ``group:`` patterns ask the directory cache.
        """
        compiled = self._rules
        if (
            compiled is None
            or compiled[0] is not self.config
            or compiled[1] is not self.config.rules
        ):
            ruleset = compile_rules(self.config.rules, self.config.gateway.local_domains)
            compiled = self._rules = (self.config, self.config.rules, ruleset)
        return compiled[2].match(sender, recipient, client=client, directory=self.directory)

    def detectors_for(self, rule: RuleConfig) -> list[str]:
        """Names of the detectors that run under ``rule``."""
        disabled = set(self.config.detectors.disabled)
        return [
            impl.plugin_name
            for impl in self.plugins.pm.hook.mailwarden_scan.get_hookimpls()
            if impl.plugin_name not in disabled and rule_runs(rule, impl.plugin_name)
        ]

    # -- the pipeline ------------------------------------------------------------------------

    def split_recipients(self, envelope: Envelope) -> list[tuple[RuleConfig, Envelope]]:
        """The recipients grouped by the rule covering each, in the order rules are first met.

        Each group gets a copy of ``envelope`` holding only its recipients; an envelope without
        recipients is one group under the rule for the empty recipient.
        """
        if not envelope.rcpt_to:
            return [
                (self.rule_for(envelope.mail_from, "", client=envelope.client_address), envelope)
            ]
        groups: dict[str, tuple[RuleConfig, list[str]]] = {}
        for recipient in envelope.rcpt_to:
            rule = self.rule_for(envelope.mail_from, recipient, client=envelope.client_address)
            groups.setdefault(rule.name, (rule, []))[1].append(recipient)
        if len(groups) == 1:
            return [(next(iter(groups.values()))[0], envelope)]
        return [
            (rule, msgspec.structs.replace(envelope, rcpt_to=recipients))
            for rule, recipients in groups.values()
        ]

    async def scan(
        self,
        raw: bytes,
        envelope: Envelope | None = None,
        *,
        message: ParsedMessage | None = None,
        findings: Sequence[Finding] = (),
    ) -> Decision:
        """Parse, pick the rule, run the detectors, fold and decide. Does not act or record.

        ``message`` is ``raw`` already parsed, so a message scanned once per rule is parsed once;
        ``findings`` are folded in with the detectors' (a plugin's verdict on a resubmission).
        """
        if not self._started:
            await self.start()
        envelope = envelope or Envelope()
        timings: dict[str, float] = {}
        began = time.perf_counter()
        message = message if message is not None else parse(raw)
        timings["parse"] = _ms(began)

        first = envelope.rcpt_to[0] if envelope.rcpt_to else ""
        rule = self.rule_for(envelope.mail_from, first, client=envelope.client_address)
        ctx = ScanContext(envelope, message, rule.name)

        began = time.perf_counter()
        names = set(self.detectors_for(rule))
        impls = [
            i
            for i in self.plugins.pm.hook.mailwarden_scan.get_hookimpls()
            if i.plugin_name in names
        ]
        with scanning(message):
            # The detectors' tasks inherit the mark: a message of many fields or parts has its
            # CPU work done in threads (run_cpu_bound), whatever its size.
            detecting = asyncio.gather(*(self._run_detector(impl, ctx, timings) for impl in impls))
        content = self._check_content(message, rule, timings)
        blocked, results = await asyncio.gather(content, detecting)
        results.append(blocked)
        results.append(mime_ambiguities(message))
        results.append(list(findings))
        timings["detect"] = _ms(began)

        began = time.perf_counter()
        folded = fold_findings(f for findings in results for f in findings)
        verdict, action = await self._decide(ctx, rule, folded)
        timings["decide"] = _ms(began)
        return Decision(
            uuid.uuid4().hex, envelope, message, rule, verdict, action, timings, context=ctx
        )

    async def _decide(
        self, ctx: ScanContext, rule: RuleConfig, folded: Verdict
    ) -> tuple[Verdict, Action]:
        """The verdict hooks adjust ``folded`` (within ``[hooks] verdict``), the rule decides,
        the action hooks do what needs the content (``mailwarden_action``, within ``[hooks]
        action``). The backup copy is named here and kept by :meth:`keep_backups` when an
        ingress acts, so a dry run keeps nothing.

        Both hooks run in one worker thread, one hand-off per message rather than two (each
        costs about 50 us of CPU); their budgets are watched from here by the stage the thread
        reached. When the verdict hooks run out of time (or one raises) the folded verdict
        stands with an error finding and the message is not delivered (see :class:`_Deciding`).
        """
        hook = self.plugins.pm.hook
        deciding = _Deciding(hook, ctx, rule, folded)
        if not (deciding.adjusting or deciding.acting):
            return folded, _finished(deciding.decide(folded, failed=False), None)
        budgets = self.config.hooks
        running = asyncio.get_running_loop().run_in_executor(self._executor, deciding.run)
        if not await deciding.wait(running, budgets.verdict, budgets.action):
            log.error(
                "mailwarden_verdict gave no answer within %g s ([hooks] verdict)", budgets.verdict
            )
            self._hook_failed("mailwarden_verdict", "*", "timeout")
            why = f"no answer within {budgets.verdict:g} s"
            _verdict_failed(folded, _error_finding("verdict", _TIMEOUT, why))
            action = deciding.decide(folded, failed=True)
            changed = None
            if deciding.acting:
                try:
                    changed = await call_impl(
                        hook.mailwarden_action,
                        {"ctx": ctx, "verdict": folded, "action": action},
                        budgets.action,
                        self._executor,
                    )
                except TimeoutError:
                    self._action_timed_out(folded)
                except Exception:
                    log.exception("mailwarden_action failed")
            return folded, _finished(action, changed)
        changed = None
        if not running.done():
            # The action stands as decided (a removal no plugin made is held in _finished).
            self._action_timed_out(deciding.verdict or folded)
        else:
            try:
                changed = running.result()
            except Exception:
                log.exception("mailwarden_action failed")
        verdict = deciding.verdict or folded
        action = deciding.action or deciding.decide(verdict, failed=False)
        return verdict, _finished(action, changed)

    def _action_timed_out(self, verdict: Verdict) -> None:
        budget = self.config.hooks.action
        log.error("mailwarden_action gave no answer within %g s ([hooks] action)", budget)
        self._hook_failed("mailwarden_action", "*", "timeout")
        # Recorded with the message; the decision is made already.
        verdict.findings.append(
            _error_finding("action", _TIMEOUT, f"no answer within {budget:g} s")
        )

    async def _check_content(
        self, message: ParsedMessage, rule: RuleConfig, timings: dict[str, float]
    ) -> list[Finding]:
        if not rule.content.active:
            return []
        began = time.perf_counter()
        try:
            # Archive listing is Python work on untrusted data: off the event loop, and a
            # failure is an error finding the rule's error action decides, like a detector's.
            return await asyncio.to_thread(check_content, message, rule.content, detect_type)
        except Exception as exc:
            log.warning("content rules failed: %r", exc)
            return [_error_finding(CONTENT_DETECTOR, "DETECTOR_ERROR", repr(exc))]
        finally:
            timings[f"detector.{CONTENT_DETECTOR}"] = _ms(began)

    async def _run_detector(
        self, impl: Any, ctx: ScanContext, timings: dict[str, float]
    ) -> list[Finding]:
        name = impl.plugin_name
        budget = self.config.detectors.budget(name)
        began = time.perf_counter()
        try:
            result = await self._call(impl, budget, ctx=ctx)
            return _checked_findings(name, result)
        except TimeoutError:
            self._hook_failed("mailwarden_scan", name, "timeout")
            return [_error_finding(name, "DETECTOR_TIMEOUT", f"no answer within {budget:g} s")]
        except Exception as exc:
            log.warning("detector %s failed: %r", name, exc)
            return [_error_finding(name, "DETECTOR_ERROR", repr(exc))]
        finally:
            timings[f"detector.{name}"] = _ms(began)

    async def _call(self, impl: Any, budget: float, **available: Any) -> Any:
        """One implementation, with the arguments it takes, within ``budget`` seconds."""
        return await call_impl(impl.function, _kwargs(impl, **available), budget, self._executor)

    def _hook_failed(self, hook: str, plugin: str, kind: str) -> None:
        # One series per hook and plugin: both are few, fixed by the installation.
        self.stores.metrics.errors.labels(f"hook {kind}:{hook}:{plugin}"[:80]).inc()

    async def process(self, raw: bytes, envelope: Envelope, *, ingress: str = "library") -> Outcome:
        """Spool, scan, act (queue for the next hop, deliver to the Maildir, quarantine, drop)
        and record.

        The message is fsynced in the spool before it is scanned, so a crash at any point after
        the 250 loses nothing. The reply is 250 only when the message is durable where the
        action put it; a local failure becomes a 451 and the message leaves the spool, because
        the sender keeps it.
        """
        entry = await asyncio.to_thread(self.spool.write, raw, envelope)
        try:
            groups = self.split_recipients(envelope)
            if len(groups) > 1:
                return await self._process_groups(raw, entry, groups, ingress)
            decision = await self.scan(raw, envelope)
            code, text = await self._act(decision, entry)
        except BaseException:
            # No 250 reaches the client, which therefore still has the message.
            await asyncio.to_thread(self.spool.remove, entry)
            raise
        event = self.record(decision, ingress=ingress, reply=f"{code} {text}")
        if code < 400 or decision.action.kind is ActionKind.REJECT:
            await self._notify(decision)
        return Outcome(decision, code, text, event)

    async def _process_groups(
        self,
        raw: bytes,
        entry: SpoolEntry,
        groups: list[tuple[RuleConfig, Envelope]],
        ingress: str,
    ) -> Outcome:
        """Scan and act once per rule for recipients that fall under different rules.

        The transaction has one reply. When every rule refuses, that refusal is the reply (a
        temporary one wins, so the sender retries and nothing is lost). Otherwise the message
        is accepted: recipients whose rule rejects are blocked (not delivered, recorded) rather
        than bounced, because a bounce for spam or malware goes to a forged sender; recipients
        whose rule tempfails are held in the quarantine for an admin instead of being dropped.
        """
        message = parse(raw)
        decisions = [await self.scan(raw, env, message=message) for _, env in groups]
        if all(d.action.kind in _REFUSING for d in decisions):
            chosen = next((d for d in decisions if d.action.kind is ActionKind.TEMPFAIL), None)
            chosen = chosen or decisions[0]
            code, text = chosen.action.smtp_code, chosen.action.smtp_text
            await self.keep_backups(decisions)
            await asyncio.to_thread(self.spool.remove, entry)
            parts = [
                Outcome(d, code, text, self.record(d, ingress=ingress, reply=f"{code} {text}"))
                for d in decisions
            ]
            if code >= 500:
                for d in decisions:
                    await self._notify(d)
            return Outcome(parts[0].decision, code, text, parts[0].event, groups=parts)
        for d in decisions:
            d.action = _accepted_form(d.action)
        # Every group is durable on its own before the shared entry goes, so a crash in between
        # can only deliver twice, never lose a recipient.
        entries = [await asyncio.to_thread(self.spool.write, raw, d.envelope) for d in decisions]
        await asyncio.to_thread(self.spool.remove, entry)
        parts = []
        for d, group_entry in zip(decisions, entries, strict=True):
            code, text = await self._act(d, group_entry)
            parts.append(
                Outcome(d, code, text, self.record(d, ingress=ingress, reply=f"{code} {text}"))
            )
            if code < 400:
                await self._notify(d)
        failed = next((p for p in parts if p.reply_code >= 400), None)
        if failed is not None:
            # A local failure for one group: the sender keeps the message and sends it again;
            # recipients already served may get it twice, which RFC 5321 prefers to a loss.
            return Outcome(
                failed.decision, failed.reply_code, failed.reply_text, failed.event, groups=parts
            )
        ids = ", ".join(p.decision.id[:12] for p in parts)
        first = parts[0]
        return Outcome(
            first.decision, 250, f"2.0.0 Ok: split by rule as {ids}", first.event, groups=parts
        )

    async def keep_backups(self, decisions: Sequence[Decision]) -> None:
        """Keep the backup copy each decision's action asks for, before anything changes or
        drops the message (every ingress calls this before it acts). Raises when a copy
        cannot be written: the ingress then answers with a temporary failure, so the sender
        keeps the message and nothing goes unbacked."""
        for d in decisions:
            if d.action.backup_id is None:
                continue
            await asyncio.to_thread(
                self.stores.backup.put,
                d.message.raw,
                reason=d.action.reason,
                mail_from=d.envelope.mail_from,
                rcpt_to=list(d.envelope.rcpt_to),
                subject=d.message.subject,
                backup_id=d.action.backup_id,
            )

    async def act_on_spooled(self, entry: SpoolEntry) -> None:
        """Scan and act on a spooled message whose decision was not stored (crash recovery)."""
        raw = await asyncio.to_thread(entry.raw)
        decision = await self.scan(raw, entry.envelope)
        code, text = await self._act(decision, entry)
        self.record(decision, ingress="spool", reply=f"{code} {text}")

    async def _act(self, decision: Decision, entry: SpoolEntry) -> tuple[int, str]:
        """Carry out the decision on the spooled ``entry``; the entry is handed on or removed."""
        await self.keep_backups([decision])
        code, text = decision.action.smtp_code, decision.action.smtp_text
        kind = decision.action.kind
        began = time.perf_counter()
        try:
            if kind is ActionKind.DELIVER and self.delivery.relaying:
                if decision.action.replace_message or decision.action.subject_tag:
                    # The next hop gets the changed message: it replaces the spooled one.
                    changed = msgspec.structs.replace(decision.action, add_headers=[])
                    body = replace(decision, action=changed).with_headers()
                    new_entry = await asyncio.to_thread(self.spool.write, body, decision.envelope)
                    await asyncio.to_thread(self.spool.remove, entry)
                    entry = new_entry
                state = SpoolState(decided=True, add_headers=list(decision.action.add_headers))
                # Not fsynced: if it is lost, the message is scanned again, which is harmless.
                await asyncio.to_thread(self.spool.save_state, entry, state, durable=False)
                self.delivery.submit(entry)
                text = f"2.0.0 Ok: queued as {entry.id}"
            elif kind is ActionKind.DELIVER:
                data = self.dkim.sign(crlf(decision.with_headers()))
                name = await asyncio.to_thread(self.maildir.deliver, data)
                await asyncio.to_thread(self.spool.remove, entry)
                text = f"2.0.0 Ok: delivered as {name.split('.', 1)[0]}-{decision.id[:12]}"
            elif kind is ActionKind.QUARANTINE and decision.action.reason == "hold":
                held = await self._hold(decision)
                await asyncio.to_thread(self.spool.remove, entry)
                if held:
                    text = f"2.0.0 Ok: held for analysis as {held}"
                else:
                    # Nobody could keep it: the sender keeps it and retries.
                    code, text = 451, "4.7.1 Cannot hold the message for analysis now; try later"
            elif kind is ActionKind.QUARANTINE:
                await asyncio.to_thread(
                    self.quarantine.hold,
                    decision.with_headers(),
                    decision.envelope,
                    decision=decision.id,
                    rule=decision.rule.name,
                    reason=decision.action.reason,
                )
                await asyncio.to_thread(self.spool.remove, entry)
                text = f"2.0.0 Ok: held as {decision.id[:12]}"
            else:
                await asyncio.to_thread(self.spool.remove, entry)
        except DeliveryError as exc:
            await asyncio.to_thread(self.spool.remove, entry)
            code, text = 451, f"4.3.0 {exc}; try again later"
        decision.timings_ms["act"] = _ms(began)
        return code, text

    async def _hold(self, decision: Decision) -> str | None:
        """Hand a message that waits for a verdict to the plugin that keeps it (SDK 1.5)."""
        ctx = decision.context or ScanContext(
            decision.envelope, decision.message, decision.rule.name
        )
        budget = self.config.hooks.hold
        for impl in self.plugins.pm.hook.mailwarden_hold.get_hookimpls():
            try:
                result = await self._call(impl, budget, ctx=ctx, verdict=decision.verdict)
            except TimeoutError:
                # A refusal: nobody else taking it means 451, so the sender keeps the message.
                log.error(
                    "plugin %s did not hold %s within %g s ([hooks] hold)",
                    impl.plugin_name,
                    decision.id[:12],
                    budget,
                )
                self._hook_failed("mailwarden_hold", impl.plugin_name, "timeout")
                continue
            except Exception:
                log.exception("plugin %s failed to hold %s", impl.plugin_name, decision.id[:12])
                continue
            if isinstance(result, str) and result:
                return result
        return None

    async def resubmit(
        self,
        raw: bytes,
        envelope: Envelope,
        findings: Sequence[Finding] = (),
        *,
        ingress: str = "resubmit",
    ) -> tuple[int, str]:
        """Process a message a plugin held back (``Host.resubmit``): spool, scan with
        ``findings`` added, act and record, per rule of its recipients.

        No client waits any more, so refusing actions take their accepted form (a reject is
        blocked and recorded, never bounced to a possibly forged sender). Returns the worst
        reply: 4xx when any group could not be made durable, so the plugin keeps its copy.
        """
        message = parse(raw)
        replies: list[tuple[int, str]] = []
        for _, group in self.split_recipients(envelope):
            entry = await asyncio.to_thread(self.spool.write, raw, group)
            try:
                decision = await self.scan(raw, group, message=message, findings=findings)
                decision.action = _accepted_form(decision.action)
                code, text = await self._act(decision, entry)
            except BaseException:
                await asyncio.to_thread(self.spool.remove, entry)
                raise
            self.record(decision, ingress=ingress, reply=f"{code} {text}")
            if code < 400:
                await self._notify(decision)
            replies.append((code, text))
        return max(replies, key=lambda reply: reply[0])

    async def release(self, held_id: str) -> str:
        """Send a held message on to its recipients the way delivered mail goes; it leaves the
        quarantine once it is durable there. Returns where it went.

        Exactly once: the message is claimed first (:meth:`Quarantine.claim`), so a second
        release at the same time, in this process or another worker, gets
        :class:`~mailwarden.quarantine.QuarantineBusy` and sends nothing. When delivery
        fails the message is held again and :class:`ReleaseFailed` says why."""
        claim = await asyncio.to_thread(self.quarantine.claim, held_id)
        try:
            where = await self.deliver_released(claim.data, claim.envelope)
        except Exception as exc:
            await asyncio.to_thread(self.quarantine.abandon, claim)
            raise ReleaseFailed(f"release of {held_id} failed: {exc}; it stays held") from exc
        except BaseException:
            self.quarantine.abandon(claim)  # cancelled: held again rather than lost
            raise
        await asyncio.to_thread(self.quarantine.finish, claim)
        return where

    async def deliver_released(self, data: bytes, envelope: Envelope) -> str:
        """Send a message an admin released (from any quarantine or the backup) on to
        ``envelope.rcpt_to`` the way delivered mail goes, without scanning it again: the spool
        and the relay queue, else the local Maildir (``Host.deliver``, SDK 1.7). Durable when
        this returns. Returns where it went."""
        if not envelope.rcpt_to:
            raise DeliveryError("no recipients to deliver to")
        if self.delivery.relaying:
            entry = await asyncio.to_thread(self.spool.write, data, envelope)
            # Decided: an admin released it, so it is not scanned (and held) again.
            state = SpoolState(decided=True)
            await asyncio.to_thread(self.spool.save_state, entry, state, durable=True)
            self.delivery.submit(entry)
            return f"queued as {entry.id}"
        name = await asyncio.to_thread(self.maildir.deliver, crlf(data))
        return f"delivered as {name}"

    def plugin_quarantines(self) -> dict[str, tuple[str, PluginQuarantine]]:
        """The plugins' quarantines by name, each with the plugin offering it
        (``mailwarden_quarantines``, SDK 1.7).

        Asked each time (a plugin offers only what it has open); an answer that is not a
        :class:`~mailwarden_sdk.Quarantine`, has a name that is not URL-safe or is taken
        already, or a failing implementation, is logged and left out.
        """
        found: dict[str, tuple[str, PluginQuarantine]] = {}
        for impl in self.plugins.pm.hook.mailwarden_quarantines.get_hookimpls():
            try:
                offered: Any = impl.function(**_kwargs(impl, host=self.host)) or ()
                for quarantine in offered:
                    name = getattr(quarantine, "name", None)
                    if not isinstance(quarantine, PluginQuarantine) or not isinstance(name, str):
                        log.warning("plugin %s offered a non-quarantine", impl.plugin_name)
                    elif not QUARANTINE_ID.match(name) or name in found:
                        log.warning(
                            "plugin %s: quarantine name %r is not URL-safe or taken",
                            impl.plugin_name,
                            name,
                        )
                    else:
                        found[name] = (impl.plugin_name, quarantine)
            except Exception:
                log.exception("plugin %s failed to list its quarantines", impl.plugin_name)
        return found

    async def _notify(self, decision: Decision) -> None:
        """Send the notices the rule asks for; a failure is logged and changes no reply."""
        notify = decision.rule.notify
        if not (notify.admin or notify.sender or notify.recipients):
            return
        try:
            notices = build_notices(
                decision, notify, self.config.gateway.hostname, self.config.home
            )
            for notice in notices:
                if self.delivery.relaying:
                    entry = await asyncio.to_thread(self.spool.write, notice.data, notice.envelope)
                    # Not fsynced: a lost state only means the notice is scanned like mail.
                    state = SpoolState(decided=True)
                    await asyncio.to_thread(self.spool.save_state, entry, state, durable=False)
                    self.delivery.submit(entry)
                else:
                    await asyncio.to_thread(self.maildir.deliver, crlf(notice.data))
        except Exception:
            log.exception("notification about %s failed", decision.id[:12])

    # -- record ------------------------------------------------------------------------------

    def record(self, decision: Decision, *, ingress: str, reply: str) -> MessageEvent | None:
        """Write the message event and tell observers (``mailwarden_message_processed``)."""
        began = time.perf_counter()
        message = decision.message
        envelope = decision.envelope
        event = MessageEvent(
            id=decision.id,
            time=time.time(),
            ingress=ingress,
            mail_from=envelope.mail_from,
            rcpt_to=list(envelope.rcpt_to),
            client_address=envelope.client_address,
            helo=envelope.helo,
            queue_id=envelope.queue_id,
            message_id=message.message_id,
            subject=message.subject,
            size=len(message.raw),
            attachments=[p.filename for p in message.attachments() if p.filename],
            rule=decision.rule.name,
            verdict=decision.verdict,
            action=decision.action.kind,
            reply=reply,
            timings_ms=decision.timings_ms,
        )
        if self.config.events.enabled:
            try:
                self.events.append(event)
            except Exception:
                log.exception("could not write the message event of %s", decision.id)
                self.stores.metrics.errors.labels("store:message event log").inc()
        self.stores.observe(event)
        for lane in self._observers:
            lane.offer(event)
        # After the write, so the stored event lacks it; benchmarks read it from the decision.
        decision.timings_ms["record"] = _ms(began)
        return event


class _Deciding:
    """One message's verdict and action hooks, run in a worker thread, and how far they got.

    The verdict hooks work on a copy of the folded verdict: a hook that runs out of time goes
    on in its thread and must not change what the gateway acts on. Once the gateway gave up
    on them (:meth:`wait`) the thread stops before deciding.
    """

    def __init__(self, hook: Any, ctx: ScanContext, rule: RuleConfig, folded: Verdict) -> None:
        self.hook, self.ctx, self.rule, self.folded = hook, ctx, rule, folded
        self.adjusting = bool(hook.mailwarden_verdict.get_hookimpls())
        self.acting = bool(hook.mailwarden_action.get_hookimpls())
        self._lock = threading.Lock()
        self._given_up = False
        #: The adjusted (or, when the hooks failed, the folded) verdict, once they are done.
        self.verdict: Verdict | None = None
        #: What the rule decided, as handed to the action hooks, and when.
        self.action: Action | None = None
        self.action_began: float | None = None

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
                await asyncio.wait({running}, timeout=min(step, deadline - now))
            else:
                began = self.action_began or now
                if now >= began + action:
                    return True
                await asyncio.wait({running}, timeout=began + action - now)
        return True

    def run(self) -> Any:
        """In the worker thread: verdict hooks, decision, action hooks (their answer)."""
        verdict, error = self.folded, None
        if self.adjusting:
            work = msgspec.convert(msgspec.to_builtins(self.folded), Verdict)
            try:
                self.hook.mailwarden_verdict(ctx=self.ctx, verdict=work)
                verdict = work
            except Exception as exc:
                # pluggy stops at the first failing implementation.
                log.exception("mailwarden_verdict failed")
                error = _error_finding("verdict", "DETECTOR_ERROR", repr(exc))
        with self._lock:
            if self._given_up:
                return None  # the folded verdict is the gateway's now
            if error is not None:
                _verdict_failed(self.folded, error)
            self.verdict = verdict
        action = self.decide(verdict, failed=error is not None)
        self.action, self.action_began = action, time.monotonic()
        if not self.acting:
            return None
        return self.hook.mailwarden_action(ctx=self.ctx, verdict=verdict, action=action)


def _verdict_failed(verdict: Verdict, error: Finding) -> None:
    verdict.findings.append(error)
    verdict.errors = sorted({*verdict.errors, "verdict"})


def _finished(action: Action, changed: Any) -> Action:
    """``action`` as an action hook changed it; parts nobody removed hold the message."""
    action = changed if isinstance(changed, Action) else action
    if action.remove_parts and action.replace_message is None:
        # Nothing could cut the parts out: hold the message rather than deliver them.
        action = msgspec.structs.replace(
            action, kind=ActionKind.QUARANTINE, remove_parts=[], subject_tag=None
        )
    return action


def _ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000.0, 3)


def _error_finding(detector: str, code: str, error: str) -> Finding:
    return Finding(
        code=code,
        detector=detector,
        category=Category.OTHER,
        status="error",
        details={"error": error[:300]},
    )


def _checked_findings(detector: str, result: Any) -> list[Finding]:
    if result is None:
        return []
    if isinstance(result, Finding):
        return [result]
    if not isinstance(result, Iterable) or isinstance(result, (str, bytes)):
        return [_error_finding(detector, "DETECTOR_ERROR", f"returned {type(result).__name__}")]
    findings: list[Finding] = []
    for item in result:
        if isinstance(item, Finding):
            findings.append(item)
        else:
            findings.append(
                _error_finding(
                    detector, "DETECTOR_ERROR", f"returned {type(item).__name__}, not Finding"
                )
            )
    return findings


def event_json(event: MessageEvent) -> bytes:
    """One event as a JSON line (what ``--json`` outputs print)."""
    return msgspec.json.encode(event)

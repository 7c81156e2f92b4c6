"""The gateway: parse -> policy -> detect -> decide -> act -> record (DESIGN.md "One way through").

Ingress adapters (SMTP, milter, content filter, the CLI, library callers) hand a message and
its envelope to :meth:`Gateway.process` (or :meth:`Gateway.scan` when they act themselves) and
carry out the returned :class:`Outcome` in their own protocol's terms.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from mailwarden_native import ParsedMessage, parse
from mailwarden_sdk import (
    QUARANTINE_ID,
    ActionKind,
    Envelope,
    Finding,
    MessageEvent,
    ScanContext,
)
from mailwarden_sdk import Quarantine as PluginQuarantine

from .act import Outbox
from .admission import PolicySteps
from .config import Config, RuleConfig, load_config
from .decide import Decision, accepted_form, decide, settle
from .detect import Detect
from .dkim import DkimSigner
from .errors import ConfigError, PluginError
from .events import MessageEventLog
from .hookcalls import DaemonExecutor, HookRunner, ObserverLane
from .hookcalls import hook_kwargs as _kwargs
from .isolation import IsolatedDetector, target_of
from .maildir import Maildir
from .plugins import PluginSet, build_plugin_manager
from .policy import RuleMatch, RuleSet, compile_rules, fold_findings
from .quarantine import Quarantine
from .record import CoreStores
from .release import deliver_released, release_held
from .sharedstate import PluginState
from .spool import Spool, SpoolEntry
from .stage import Stage, elapsed_ms

if TYPE_CHECKING:
    from .directory.service import Directory

__all__ = ["Decision", "Gateway", "Host", "Outcome", "Stage", "settle"]

log = logging.getLogger(__name__)

# Sync detectors and hooks run in threads so a slow one can be timed out without blocking the
# event loop; native calls release the GIL, so these threads also use every core of the worker.
_DETECTOR_THREADS = 32

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


# Decision ids are uuid4().hex strings (random, 122 bits). uuid4() reads 16 bytes with a
# getrandom() system call per message and builds a UUID object; these are made from one
# read per _IDS_AT_ONCE decisions, bit for bit as uuid4 makes them (version 4, RFC 4122
# variant). A forked child starts with none of its parent's, so no two processes share one.
_IDS_AT_ONCE = 256
# What uuid4 does to bytes 6 (the version) and 8 (the variant) of its 16, as tables.
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_RFC_4122 = bytes(b & 0x3F | 0x80 for b in range(256))
_ids: list[str] = []
os.register_at_fork(after_in_child=_ids.clear)


def new_id() -> str:
    """A new decision id: what ``uuid.uuid4().hex`` gives."""
    try:
        return _ids.pop()
    except IndexError:
        pass
    raw = bytearray(os.urandom(16 * _IDS_AT_ONCE))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_RFC_4122)
    text = raw.hex()
    _ids.extend(text[i : i + 32] for i in range(0, len(text), 32))
    return _ids.pop()


def _differs(a: object, b: object) -> bool:
    return msgspec.json.encode(a) != msgspec.json.encode(b)


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


class Host:
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
        self.host = Host(config, self)
        self.events = MessageEventLog(
            config.path_in_home(config.events.path),
            retention_days=config.events.retention_days,
            max_bytes=config.events.max_bytes,
        )
        # Statistics, metrics, events out, and the bounded stores' enforcement (issue 10).
        self.stores = CoreStores(config, self.events)
        self.hooks = HookRunner(lambda series: self.stores.metrics.errors.labels(series).inc())
        self.detect = Detect(self.plugins, self.hooks)
        self.maildir = Maildir(config.path_in_home(config.delivery.maildir))
        self.quarantine = Quarantine(config.home / "quarantine")
        self.spool = Spool(config.path_in_home(config.spool.path))
        self.dkim = DkimSigner.from_config(config)
        self.outbox = Outbox(
            config,
            spool=self.spool,
            maildir=self.maildir,
            quarantine=self.quarantine,
            dkim=self.dkim,
            backup=self.stores.backup,
            plugin_hold=self._hold,
            rescan=self.act_on_spooled,
        )
        self.delivery = self.outbox.queue
        # Plugins' policy steps, greylisting and rate limits, asked by the ingresses before a
        # message is scanned.
        self.policy_steps = PolicySteps(config, self.plugins.pm, self.hooks, self.stores.metrics)
        # The cluster's Redis for plugins (mailwarden_sdk.shared_state); None without [redis].
        self.host.shared_state = self.policy_steps.shared
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
        self.hooks.executor = DaemonExecutor(_DETECTOR_THREADS, "detector")
        self.hooks.loop = asyncio.get_running_loop()
        if self.policy_steps.shared is not None:
            self.policy_steps.shared.bind(self.hooks.loop)
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
                await self.hooks.call(impl, budget, host=self.host)
            except TimeoutError as exc:
                self.hooks.executor.shutdown(wait=False, cancel_futures=True)
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
                partial(self.hooks.failed, "mailwarden_message_processed", impl.plugin_name),
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
                await self.hooks.call(impl, budget, host=self.host)
            except TimeoutError:
                log.error(
                    "plugin %s did not shut down within %g s ([hooks] shutdown)",
                    impl.plugin_name,
                    budget,
                )
                self.hooks.failed("mailwarden_shutdown", impl.plugin_name, "timeout")
            except Exception:
                log.exception("plugin %s failed to shut down", impl.plugin_name)
        if self.hooks.executor:
            self.hooks.executor.shutdown(wait=False, cancel_futures=True)
            self.hooks.executor = None
        self.hooks.loop = None
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
        return self.detect.detectors_for(self.config, rule)

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
        rule: RuleConfig | None = None,
        dry_run: bool = True,
        live: bool | None = None,
    ) -> Decision:
        """Parse, pick the rule, run the detectors, fold and decide. Does not act or record;
        unless ``dry_run`` is false (an ingress that acts on the decision next), the action
        hooks keep nothing either (``ScanContext.dry_run``). ``live`` (default: ``not
        dry_run``) says the message is real mail, as from a scan service whose MTA acts on
        the answer: only then do plugins learn from it or send it out (``ScanContext.live``).

        ``message`` is ``raw`` already parsed, so a message scanned once per rule is parsed once;
        ``findings`` are folded in with the detectors' (a plugin's verdict on a resubmission);
        ``rule`` is the one :meth:`split_recipients` found for ``envelope`` (not matched again).
        """
        if not self._started:
            await self.start()
        envelope = envelope or Envelope()
        clock = time.perf_counter
        began = clock()
        message = message if message is not None else parse(raw)
        # What elapsed_ms gives, each stage's end the next one's start (a call fewer each).
        timings: dict[str, float] = {Stage.PARSE: round((clock() - began) * 1000.0, 3)}

        if rule is None:
            first = envelope.rcpt_to[0] if envelope.rcpt_to else ""
            rule = self.rule_for(envelope.mail_from, first, client=envelope.client_address)
        ctx = ScanContext(envelope, message, rule.name, dry_run=dry_run, live=live)

        began = clock()
        found = await self.detect.findings(self.config, ctx, rule, findings, timings)
        ended = clock()
        timings[Stage.DETECT] = round((ended - began) * 1000.0, 3)

        folded = fold_findings(found)
        verdict, action = await decide(
            self.plugins.pm.hook, self.hooks, self.config.hooks, ctx, rule, folded
        )
        timings[Stage.DECIDE] = round((clock() - ended) * 1000.0, 3)
        return Decision(new_id(), envelope, message, rule, verdict, action, timings, context=ctx)

    async def process(self, raw: bytes, envelope: Envelope, *, ingress: str = "library") -> Outcome:
        """Spool, scan, act (queue for the next hop, deliver to the Maildir, quarantine, drop)
        and record.

        The message is fsynced in the spool before it is scanned, so a crash at any point after
        the 250 loses nothing. The reply is 250 only when the message is durable where the
        action put it; a local failure becomes a 451 and the message leaves the spool, because
        the sender keeps it.
        """
        entry = await self.spool.write_async(raw, envelope)
        try:
            groups = self.split_recipients(envelope)
            if len(groups) > 1:
                return await self._process_groups(raw, entry, groups, ingress)
            decision = await self.scan(raw, envelope, dry_run=False)
            code, text = await self.outbox.carry_out(decision, entry)
        except BaseException:
            # No 250 reaches the client, which therefore still has the message.
            await asyncio.to_thread(self.spool.remove, entry)
            raise
        event = self.record(decision, ingress=ingress, reply=f"{code} {text}")
        if code < 400 or decision.action.kind is ActionKind.REJECT:
            await self.outbox.notify(decision)
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
        decisions = [await self.scan(raw, env, message=message, dry_run=False) for _, env in groups]
        refusal = settle(decisions)
        if refusal is not None:
            code, text = refusal.action.smtp_code, refusal.action.smtp_text
            await self.outbox.keep_backups(decisions)
            await asyncio.to_thread(self.spool.remove, entry)
            parts = [
                Outcome(d, code, text, self.record(d, ingress=ingress, reply=f"{code} {text}"))
                for d in decisions
            ]
            if code >= 500:
                for d in decisions:
                    await self.outbox.notify(d)
            return Outcome(parts[0].decision, code, text, parts[0].event, groups=parts)
        # Every group is durable on its own before the shared entry goes, so a crash in between
        # can only deliver twice, never lose a recipient.
        entries = [await asyncio.to_thread(self.spool.write, raw, d.envelope) for d in decisions]
        await asyncio.to_thread(self.spool.remove, entry)
        parts = []
        for d, group_entry in zip(decisions, entries, strict=True):
            code, text = await self.outbox.carry_out(d, group_entry)
            parts.append(
                Outcome(d, code, text, self.record(d, ingress=ingress, reply=f"{code} {text}"))
            )
            if code < 400:
                await self.outbox.notify(d)
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

    async def act_on_spooled(self, entry: SpoolEntry) -> None:
        """Scan and act on a spooled message whose decision was not stored (crash recovery)."""
        raw = await asyncio.to_thread(entry.raw)
        decision = await self.scan(raw, entry.envelope, dry_run=False)
        code, text = await self.outbox.carry_out(decision, entry)
        self.record(decision, ingress="spool", reply=f"{code} {text}")

    async def _hold(self, decision: Decision) -> str | None:
        """Hand a message that waits for a verdict to the plugin that keeps it (SDK 1.5)."""
        ctx = decision.context or ScanContext(
            decision.envelope, decision.message, decision.rule.name
        )
        budget = self.config.hooks.hold
        for impl in self.plugins.pm.hook.mailwarden_hold.get_hookimpls():
            try:
                result = await self.hooks.call(impl, budget, ctx=ctx, verdict=decision.verdict)
            except TimeoutError:
                # A refusal: nobody else taking it means 451, so the sender keeps the message.
                log.error(
                    "plugin %s did not hold %s within %g s ([hooks] hold)",
                    impl.plugin_name,
                    decision.id[:12],
                    budget,
                )
                self.hooks.failed("mailwarden_hold", impl.plugin_name, "timeout")
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
                decision = await self.scan(
                    raw, group, message=message, findings=findings, dry_run=False
                )
                decision.action = accepted_form(decision.action)
                code, text = await self.outbox.carry_out(decision, entry)
            except BaseException:
                await asyncio.to_thread(self.spool.remove, entry)
                raise
            self.record(decision, ingress=ingress, reply=f"{code} {text}")
            if code < 400:
                await self.outbox.notify(decision)
            replies.append((code, text))
        return max(replies, key=lambda reply: reply[0])

    async def release(self, held_id: str) -> str:
        """Send a held message on to its recipients the way delivered mail goes; it leaves the
        quarantine once it is durable there. Returns where it went.

        Exactly once: the message is claimed first (:meth:`Quarantine.claim`), so a second
        release at the same time, in this process or another worker, gets
        :class:`~mailwarden.quarantine.QuarantineBusy` and sends nothing. When delivery
        fails the message is held again and :class:`ReleaseFailed` says why."""
        return await release_held(self.quarantine, self.outbox, held_id)

    async def deliver_released(self, data: bytes, envelope: Envelope) -> str:
        """Send a message an admin released (from any quarantine or the backup) on to
        ``envelope.rcpt_to`` the way delivered mail goes, without scanning it again: the spool
        and the relay queue, else the local Maildir (``Host.deliver``, SDK 1.7). Durable when
        this returns. Returns where it went."""
        return await deliver_released(self.outbox, data, envelope)

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
        # The writer thread stores it (the log on) and sends it out, in batches, off the loop;
        # the mail is already durable (spool or queue), the event is its audit record. With
        # the log off and nothing sent out the writer is not woken (about once a message).
        keep = self.config.events.enabled
        if keep or self.stores.exporting():
            self.events.write_later(event, keep=keep)
        self.stores.observe(event)
        for lane in self._observers:
            lane.offer(event)
        # After the write, so the stored event lacks it; benchmarks read it from the decision.
        decision.timings_ms[Stage.RECORD] = elapsed_ms(began)
        return event


def event_json(event: MessageEvent) -> bytes:
    """One event as a JSON line (what ``--json`` outputs print)."""
    return msgspec.json.encode(event)

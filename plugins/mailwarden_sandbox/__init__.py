"""The built-in sandbox detector (the KATA role): external analysis, hold until verdict.

Objects (attachments, or whole messages) go to an analysis server: an ICAP service (RFC 3507)
or a submit-and-poll HTTP sandbox. Per rule, ``mirror`` sends copies and never delays mail;
``hold`` keeps the message in a bounded quarantine of its own until the verdict, then puts it
back through the pipeline with the verdict added (``Host.resubmit``): clean is delivered,
malicious gets the rule's ``malicious`` action, the gateway keeping its backup copy first
(``Action.backup_id``, SDK 1.8). The web
interface lists, shows, releases and deletes held messages through
:class:`SandboxQuarantineView` (``mailwarden_quarantines``, SDK 1.7).

Written only against ``mailwarden_sdk``, as a third-party detector would be. See
``docs/sandbox.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import click
import msgspec

from mailwarden_sdk import (
    Category,
    Finding,
    Host,
    LearnLabel,
    ParsedMessage,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
    ScanContext,
    StashKey,
    StoreDescriptor,
    Verdict,
    WhenFull,
    command_host,
    config_option,
    hookimpl,
    parse,
    plugin_data_dir,
)

from .backends import Backend, BackendError, HttpBackend, IcapBackend, ObjectVerdict
from .store import HeldMessage, HeldObject, HoldStore, ReleasePending, VerdictCache, valid_id

__all__ = ["RuleSettings", "SandboxConfig", "SandboxPlugin", "SandboxQuarantineView"]

DETECTOR = "sandbox"
log = logging.getLogger("mailwarden.sandbox")

Seconds = Annotated[float, msgspec.Meta(ge=60, le=86400)]
Mode = Literal["mirror", "hold"]
Send = Literal["attachments", "message"]
TimeoutAction = Literal["deliver", "hold"]
FullAction = Literal["deliver", "tempfail"]
Size = Annotated[int, msgspec.Meta(gt=0)]

# Mirror copies in flight beyond this are dropped (logged): mail never waits for them.
_MAX_MIRRORS = 1000
# How long a release or delete from the web waits for the watcher to carry it out.
_ADMIN_WAIT = 30.0


class RuleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sandbox.rules.NAME]``: overrides for the rule called NAME (unset keys inherit)."""

    enabled: bool | None = None
    mode: Mode | None = None
    send: Send | None = None
    send_clean: bool | None = None
    send_detected: bool | None = None
    verdict_timeout: Seconds | None = None
    timeout_action: TimeoutAction | None = None
    full_action: FullAction | None = None
    max_object_size: Size | None = None


@dataclass(frozen=True)
class Policy:
    """What the sandbox does under one rule (the section's keys with the rule's overrides)."""

    enabled: bool
    mode: str
    send: str
    send_clean: bool
    send_detected: bool
    verdict_timeout: float
    timeout_action: str
    full_action: str
    max_object_size: int


class SandboxConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[sandbox]``: the analysis server, what is sent, and how held mail waits for it.

    The first nine keys apply to every rule unless ``[sandbox.rules.NAME]`` overrides them.
    ``mode``: ``mirror`` sends copies and delivers at once; ``hold`` keeps the message in the
    sandbox quarantine until the verdict. ``send``: ``attachments`` (each attachment) or
    ``message`` (the whole message); ``send_clean`` / ``send_detected``: messages the other
    detectors found clean / found something in. Objects above ``max_object_size`` bytes are not
    sent (``SANDBOX_NOT_SCANNED``). ``timeout_action``: after ``verdict_timeout`` seconds
    without a verdict, ``deliver`` (with an ``X-Mailwarden-Sandbox`` header) or ``hold`` for an
    admin. ``full_action``: when the quarantine is full, ``deliver`` with a header or
    ``tempfail`` (451, the sender retries).

    ``backend``: ``icap`` (``icap_url``, RESPMOD or REQMOD) or ``http`` (``http_url``, submit
    and poll every ``poll_interval`` seconds; ``malicious_score`` / ``suspicious_score`` on the
    report's 0-10 score).
    """

    enabled: bool = False
    mode: Mode = "mirror"
    send: Send = "attachments"
    send_clean: bool = True
    send_detected: bool = False
    verdict_timeout: Seconds = 600.0
    timeout_action: TimeoutAction = "deliver"
    full_action: FullAction = "deliver"
    max_object_size: Size = 200 * 1024 * 1024
    backend: Literal["icap", "http"] = "icap"
    icap_url: str = "icap://127.0.0.1:1344/avscan"
    icap_method: Literal["respmod", "reqmod"] = "respmod"
    http_url: str = "http://127.0.0.1:8090"
    http_token: str = ""
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    malicious_score: float = 7.0
    suspicious_score: float = 4.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    cache_ttl: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    cache_max_entries: Size = 100_000
    # The hold quarantine: when full, new messages are not placed and full_action applies.
    quarantine_max_bytes: Size = 1 << 30
    quarantine_max_messages: Size = 5000
    rules: dict[str, RuleSettings] = msgspec.field(default_factory=dict)

    def for_rule(self, rule: str) -> Policy:
        """The settings that apply under ``rule``."""
        base = {name: getattr(self, name) for name in Policy.__dataclass_fields__}
        override = self.rules.get(rule)
        if override is not None:
            base.update(
                {
                    name: value
                    for name in Policy.__dataclass_fields__
                    if (value := getattr(override, name)) is not None
                }
            )
        return Policy(**base)


@dataclass(frozen=True)
class _Object:
    sha256: str
    label: str
    data: bytes


PENDING = StashKey[list[_Object]]("sandbox.pending")
ROOM = StashKey[bool]("sandbox.room")


def _objects(message: ParsedMessage, send: str) -> list[tuple[str, bytes]]:
    if send == "message":
        return [("message", bytes(message.raw))]
    return [
        (part.filename or f"part {part.index}", bytes(part.decoded()))
        for part in message.attachments()
    ]


def _finding(code: str, status: str, **details: str) -> Finding:
    return Finding(
        code=code, detector=DETECTOR, category=Category.SANDBOX, status=status, details=details
    )


_RANK = {None: 0, "clean": 1, "skipped": 2, "hold": 3, "deferred": 4, "suspicious": 5}


def _verdict_finding(obj: HeldObject | _Object, verdict: ObjectVerdict, **extra: str) -> Finding:
    code = {"malicious": "SANDBOX_MALICIOUS", "suspicious": "SANDBOX_SUSPICIOUS"}
    details = {"object": obj.label, "sha256": obj.sha256, **extra}
    if verdict.detail:
        details["threat" if verdict.status == "malicious" else "detail"] = verdict.detail
    return _finding(code.get(verdict.status, "SANDBOX_CLEAN"), verdict.status, **details)


def _worst(verdicts: Sequence[ObjectVerdict]) -> str:
    statuses = {v.status for v in verdicts}
    for status in ("malicious", "suspicious"):
        if status in statuses:
            return status
    return "clean"


class SandboxPlugin:
    """Sends objects for analysis; in hold mode keeps the message until the verdict.

    ``time_scale`` multiplies every wait (verdict timeouts, poll intervals): tests use a small
    one so a 60 s timeout passes in a fraction of a second; the gateway always uses 1.
    """

    requires_sdk = ">=1.8,<2"

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale
        self.config = SandboxConfig()
        self.host: Host | None = None
        self.store: HoldStore | None = None
        self.cache: VerdictCache | None = None
        self.backend: Backend | None = None
        self._slots = asyncio.Semaphore(1)
        self._watching: dict[str, asyncio.Task[None]] = {}
        self._mirrors: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._owner: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Wakes a watcher at once (an admin's release or delete), per held id.
        self._wake: dict[str, asyncio.Event] = {}
        # The last reply of each resubmission, per held id, for the admin who released it.
        self._outcomes: dict[str, tuple[int, str]] = {}
        self._view: SandboxQuarantineView | None = None

    # -- life cycle --------------------------------------------------------------------------

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, SandboxConfig

    @hookimpl
    async def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for(DETECTOR) or SandboxConfig()
        self.host = host
        config = self.config
        if not (config.enabled or any(r.enabled for r in config.rules.values())):
            return
        root = plugin_data_dir(host, DETECTOR)
        self.store = HoldStore(
            root / "quarantine", config.quarantine_max_bytes, config.quarantine_max_messages
        )
        self.cache = VerdictCache(root / "verdicts", config.cache_ttl, config.cache_max_entries)
        if config.backend == "icap":
            self.backend = IcapBackend(config.icap_url, config.icap_method, config.request_timeout)
        else:
            self.backend = HttpBackend(
                config.http_url,
                token=config.http_token,
                timeout=config.request_timeout,
                malicious_score=config.malicious_score,
                suspicious_score=config.suspicious_score,
            )
        self._slots = asyncio.Semaphore(config.concurrency)
        self._loop = asyncio.get_running_loop()
        # Held messages from before a restart are picked up by the first round at once.
        self._loop_task = asyncio.create_task(self._follow_up(), name="sandbox-follow-up")

    @hookimpl
    async def mailwarden_shutdown(self, host: Host) -> None:
        tasks = [*self._watching.values(), *self._mirrors]
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        if self.backend is not None:
            await self.backend.close()
        if self.cache is not None:
            self.cache.close()
        if self._owner is not None and self.store is not None:
            self.store.disown(self._owner)
            self._owner = None

    # -- per message -------------------------------------------------------------------------

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        """Pick the objects to send, drop the too big ones, answer from the cache (a thread)."""
        policy = self.config.for_rule(ctx.rule)
        if not policy.enabled or self.cache is None or self.store is None:
            # Decided on the event loop: under a rule without the sandbox a thread hand-off
            # per message would cost more than everything else this detector does.
            return []
        return await asyncio.to_thread(self._select, ctx, policy)

    def _select(self, ctx: ScanContext, policy: Policy) -> list[Finding]:
        assert self.cache is not None and self.store is not None
        findings: list[Finding] = []
        pending: list[_Object] = []
        for label, data in _objects(ctx.message, policy.send):
            if len(data) > policy.max_object_size:
                findings.append(
                    _finding(
                        "SANDBOX_NOT_SCANNED",
                        "skipped",
                        reason="not scanned: size",
                        limit="size",
                        object=label,
                        size=str(len(data)),
                    )
                )
                continue
            sha256 = hashlib.sha256(data).hexdigest()
            cached = self.cache.get(sha256)
            if cached is not None:
                findings.append(_verdict_finding(_Object(sha256, label, b""), cached, cached="yes"))
            else:
                pending.append(_Object(sha256, label, data))
        if pending:
            ctx.stash[PENDING] = pending
            if policy.mode == "hold":
                ctx.stash[ROOM] = self.store.has_room(len(ctx.raw))
        return findings

    @hookimpl(trylast=True)
    def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
        """Decide what is sent, now that the other detectors have spoken."""
        pending = ctx.stash.get(PENDING, [])
        if not pending or verdict.sandbox in ("suspicious", "malicious"):
            return
        if any(f.detector == DETECTOR and "hold_id" in f.details for f in verdict.findings):
            return  # a resubmission after the verdict: never held or sent again
        policy = self.config.for_rule(ctx.rule)
        others = msgspec.structs.replace(verdict, sandbox=None).detected
        if not (policy.send_detected if others else policy.send_clean):
            return
        if policy.mode == "mirror":
            self._start_mirror(ctx, pending, policy)
            verdict.findings.append(_finding("SANDBOX_MIRRORED", "submitted"))
            return
        if ctx.stash.get(ROOM, False):
            status = "hold"
            verdict.findings.append(_finding("SANDBOX_HOLD", "hold", objects=str(len(pending))))
        else:
            status = "deferred" if policy.full_action == "tempfail" else "skipped"
            verdict.findings.append(
                _finding("SANDBOX_SKIPPED", "skipped", reason="sandbox quarantine full")
            )
        if _RANK.get(status, 0) > _RANK.get(verdict.sandbox, 0):
            verdict.sandbox = status

    @hookimpl
    async def mailwarden_hold(self, ctx: ScanContext, verdict: Verdict) -> str | None:
        """Keep the message in the sandbox quarantine (durably) and follow it up."""
        pending = ctx.stash.get(PENDING, [])
        store = self.store
        if verdict.sandbox != "hold" or not pending or store is None:
            return None
        policy = self.config.for_rule(ctx.rule)
        now = time.time()
        meta = HeldMessage(
            id=uuid.uuid4().hex[:20],
            envelope=ctx.envelope,
            rule=ctx.rule,
            size=len(ctx.raw),
            held_at=now,
            deadline=now + policy.verdict_timeout * self.time_scale,
            objects=[HeldObject(sha256=o.sha256, label=o.label, size=len(o.data)) for o in pending],
            subject=ctx.message.decoded_header("subject") or "",
        )
        if not await asyncio.to_thread(store.admit, bytes(ctx.raw), meta):
            log.warning(
                "sandbox quarantine full: message from <%s> not held", meta.envelope.mail_from
            )
            return None
        if self._owner is not None:
            self._watch_soon(meta.id)
        return meta.id

    # -- mirror ------------------------------------------------------------------------------

    def _start_mirror(self, ctx: ScanContext, pending: list[_Object], policy: Policy) -> None:
        if len(self._mirrors) >= _MAX_MIRRORS:
            log.warning("sandbox: %d copies in flight, this one is not sent", len(self._mirrors))
            return
        deadline = time.time() + policy.verdict_timeout * self.time_scale
        sender = ctx.envelope.mail_from
        if self._loop is not None:
            # Verdict hooks run in a worker thread: the task starts on the gateway's loop.
            self._loop.call_soon_threadsafe(self._spawn_mirror, pending, deadline, sender)

    def _spawn_mirror(self, pending: list[_Object], deadline: float, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(self._mirror(pending, deadline, sender))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, objects: list[_Object], deadline: float, sender: str) -> None:
        for obj in objects:
            try:
                verdict = await self._analyse(obj, deadline)
            except (BackendError, TimeoutError) as exc:
                log.warning("sandbox: copy of %s not analysed: %s", obj.label, exc)
                continue
            if verdict.status != "clean":
                # The message was delivered already: this is for the admin's eyes (and logs).
                log.warning(
                    "sandbox: delivered message from <%s>: %s is %s (%s)",
                    sender,
                    obj.label,
                    verdict.status,
                    verdict.detail,
                )

    async def _analyse(self, obj: _Object, deadline: float) -> ObjectVerdict:
        assert self.backend is not None and self.cache is not None
        async with self._slots:
            answer = await self.backend.submit(obj.data, obj.label)
        while isinstance(answer, str):
            if time.time() >= deadline:
                raise TimeoutError("no verdict in time")
            await asyncio.sleep(self._interval(deadline))
            async with self._slots:
                answer = await self.backend.poll(answer) or answer
        self.cache.put(obj.sha256, answer)
        return answer

    def _interval(self, deadline: float) -> float:
        wait = max(self.config.poll_interval * self.time_scale, 0.02)
        return max(min(wait, deadline - time.time()), 0.0)

    # -- hold: following held messages up --------------------------------------------------------

    async def _follow_up(self) -> None:
        """Own the watcher role when free, and watch every held message that needs it."""
        store = self.store
        assert store is not None
        while True:
            try:
                if self._owner is None:
                    self._owner = await asyncio.to_thread(store.try_own)
                if self._owner is not None:
                    for id in await asyncio.to_thread(store.ids):
                        if id not in self._watching:
                            self._watch_soon(id)
            except Exception:
                log.exception("sandbox: walking the quarantine failed")
            await asyncio.sleep(max(self.config.poll_interval * self.time_scale, 0.05))

    def _watch_soon(self, id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._watch(id), name=f"sandbox-{id}")
        self._watching[id] = task

    async def _watch(self, id: str) -> None:
        store = self.store
        assert store is not None and self.cache is not None
        try:
            while True:
                meta = await asyncio.to_thread(store.load, id)
                if meta is None:
                    return
                if store.marked(id, "delete"):
                    await asyncio.to_thread(store.remove, id)
                    log.info("sandbox: held message %s deleted by an admin", id)
                    return
                if store.marked(id, "release"):
                    released = _finding(
                        "SANDBOX_RELEASED", "skipped", reason="released by an admin", hold_id=id
                    )
                    if await self._finish(meta, [released]):
                        return
                elif meta.state == "expired":
                    return  # an admin decides; a release or delete marker wakes it up again
                elif await self._step(meta):
                    return
                wake = self._wake.setdefault(id, asyncio.Event())
                pause = max(self.config.poll_interval * self.time_scale, 0.02)
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass
                wake.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sandbox: following up %s failed; it stays held", id)
        finally:
            self._watching.pop(id, None)
            self._wake.pop(id, None)

    def _poke(self, id: str) -> None:
        """On the plugin's loop: look at ``id`` now (an admin left a marker)."""
        wake = self._wake.get(id)
        if wake is not None:
            wake.set()
        elif self._owner is not None and id not in self._watching:
            self._watch_soon(id)

    async def admin(self, id: str, what: str) -> str:
        """Carry out an admin's ``release`` or ``delete`` of ``id`` and say what happened.

        The request is the same marker the command line leaves; the process that follows up
        held messages acts on it. When that is this process it is woken at once and this
        waits (up to 30 s) for the result: the reply of the resubmission for a release.
        """
        store = self.store
        if store is None:
            raise QuarantineError("the sandbox is not running")
        try:
            if not await asyncio.to_thread(store.mark, id, what):
                raise QuarantineNotFound(f"no held message {id!r}")
        except ReleasePending as exc:
            meta = await asyncio.to_thread(store.load, id)
            if meta is None:
                raise QuarantineError(f"{id} was released just now") from exc
            note = f" (last: {meta.note})" if meta.note else ""
            raise QuarantineError(
                f"{exc}; the gateway carries it out once, retrying while it is refused{note}"
            ) from exc
        self._outcomes.pop(id, None)
        loop = self._loop
        if self._owner is None or loop is None or loop.is_closed():
            if what == "delete" and not await asyncio.to_thread(store.owned_elsewhere):
                await asyncio.to_thread(store.remove, id)
                return "deleted"
            return f"{what} requested; the gateway process following up held messages does it"
        loop.call_soon_threadsafe(self._poke, id)
        deadline = time.monotonic() + _ADMIN_WAIT
        while time.monotonic() < deadline:
            outcome = self._outcomes.get(id)
            if outcome is not None:
                code, text = outcome
                if code >= 400:
                    raise QuarantineError(
                        f"the gateway answered {code} {text}; it stays held and is tried again"
                    )
                return f"released: {code} {text}"
            if await asyncio.to_thread(store.load, id) is None:
                return "deleted" if what == "delete" else "released"
            await asyncio.sleep(0.05)
        return f"{what} requested; the gateway carries it out shortly"

    async def _step(self, meta: HeldMessage) -> bool:
        """One round for a waiting message; True when it left the quarantine or waits for an
        admin."""
        assert self.store is not None and self.cache is not None and self.backend is not None
        for obj in meta.objects:
            if obj.verdict is None:
                obj.verdict = self.cache.get(obj.sha256)
        verdicts = [o.verdict for o in meta.objects if o.verdict is not None]
        worst = _worst(verdicts)
        if len(verdicts) == len(meta.objects) or worst != "clean":
            findings = [
                _verdict_finding(o, o.verdict, hold_id=meta.id)
                for o in meta.objects
                if o.verdict is not None
            ]
            return await self._finish(meta, findings)
        if time.time() >= meta.deadline:
            policy = self.config.for_rule(meta.rule)
            if policy.timeout_action == "hold":
                meta.state, meta.note = "expired", "no verdict in time; waiting for an admin"
                await asyncio.to_thread(self.store.save, meta)
                log.warning("sandbox: no verdict in time for %s; held for an admin", meta.id)
                return True
            timeout = _finding(
                "SANDBOX_TIMEOUT", "skipped", reason="no verdict in time", hold_id=meta.id
            )
            return await self._finish(meta, [timeout])
        data: dict[str, bytes] | None = None
        changed = False
        for obj in meta.objects:
            if obj.verdict is not None:
                continue
            answer: ObjectVerdict | str | None
            try:
                async with self._slots:
                    if obj.task is None:
                        if data is None:
                            data = await asyncio.to_thread(self._object_data, meta)
                        answer = await self.backend.submit(data.get(obj.sha256, b""), obj.label)
                    else:
                        answer = await self.backend.poll(obj.task)
            except BackendError as exc:
                meta.note = f"analysis server: {exc}"[:300]
                changed = True
                log.warning("sandbox: %s: %s", meta.id, exc)
                break
            if isinstance(answer, str):
                # Persisted at once: after a restart the task is polled, not submitted again.
                obj.task, changed = answer, True
            elif answer is not None:
                obj.verdict, changed = answer, True
                self.cache.put(obj.sha256, answer)
        if changed:
            await asyncio.to_thread(self.store.save, meta)
        return False

    def _object_data(self, meta: HeldMessage) -> dict[str, bytes]:
        assert self.store is not None
        message = parse(self.store.raw(meta.id))
        policy = self.config.for_rule(meta.rule)
        return {hashlib.sha256(d).hexdigest(): d for _, d in _objects(message, policy.send)}

    async def _finish(self, meta: HeldMessage, findings: list[Finding]) -> bool:
        """Put the message back through the pipeline with the verdict; True when it left."""
        assert self.store is not None and self.host is not None
        raw = await asyncio.to_thread(self.store.raw, meta.id)
        code, text = await self.host.resubmit(raw, meta.envelope, findings)
        self._outcomes[meta.id] = (code, text)
        if len(self._outcomes) > 1000:
            self._outcomes.pop(next(iter(self._outcomes)))
        if code >= 400:
            meta.note = f"resubmission answered {code} {text}"[:300]
            await asyncio.to_thread(self.store.save, meta)
            log.warning("sandbox: %s stays held: %s %s", meta.id, code, text)
            return False
        await asyncio.to_thread(self.store.remove, meta.id)
        log.info("sandbox: %s released: %s %s", meta.id, code, text)
        return True

    # -- governance ------------------------------------------------------------------------

    @hookimpl
    def mailwarden_quarantines(self) -> list[Quarantine]:
        """The hold quarantine for the web interface, while the sandbox runs."""
        if self.store is None:
            return []
        if self._view is None:
            self._view = SandboxQuarantineView(self)
        return [self._view]

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        config: SandboxConfig = host.config_for(DETECTOR) or SandboxConfig()
        root = host.data_dir / DETECTOR
        return [
            StoreDescriptor(
                name="sandbox quarantine",
                path=str(root / "quarantine"),
                holds="whole messages held until the analysis verdict arrives, with envelopes",
                max_bytes=config.quarantine_max_bytes,
                max_entries=config.quarantine_max_messages,
                when_full=WhenFull.REFUSE_NEW,
                read_permission="queues.view",
            ),
            StoreDescriptor(
                name="sandbox verdict cache",
                path=str(root / "verdicts"),
                holds="SHA-256 of analysed objects with their verdicts (no content, no addresses)",
                retention_days=config.cache_ttl / 86400,
                max_entries=config.cache_max_entries,
                # An LMDB map keeping its cap in its own transactions (the core leaves it be).
                when_full=WhenFull.EVICT_LRU,
            ),
        ]

    @hookimpl
    def mailwarden_cli_commands(self) -> list[click.Command]:
        return [sandbox_command]


@click.group("sandbox")
@config_option
@click.pass_context
def sandbox_command(ctx: click.Context, config_path: str | None) -> None:
    """List, release and delete messages held for sandbox analysis."""
    # The quarantine the gateway with this config uses, wherever [gateway] home points.
    ctx.obj = HoldStore(plugin_data_dir(command_host(config_path), DETECTOR) / "quarantine")


@sandbox_command.command("list")
@click.pass_obj
def _list(store: HoldStore) -> None:
    """Print every held message: id, state, age, size, sender, recipients, rule, last note."""
    now = time.time()
    metas = [m for m in (store.load(i) for i in store.ids()) if m is not None]
    for meta in sorted(metas, key=lambda m: m.held_at):
        click.echo(
            f"{meta.id}  {meta.state:8}  {now - meta.held_at:8.0f}s  {meta.size:>9}  "
            f"<{meta.envelope.mail_from}> -> {', '.join(meta.envelope.rcpt_to)}  "
            f"rule={meta.rule}" + (f"  ({meta.note})" if meta.note else "")
        )
    count, size = store.usage()
    click.echo(f"{count} held, {size} bytes")


@sandbox_command.command("release")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def _release(store: HoldStore, ids: tuple[str, ...]) -> None:
    """Send held messages on now, without waiting for their verdict."""
    _mark(store, ids, "release")


@sandbox_command.command("delete")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def _delete(store: HoldStore, ids: tuple[str, ...]) -> None:
    """Delete held messages; they are never delivered."""
    _mark(store, ids, "delete")


def _mark(store: HoldStore, ids: tuple[str, ...], what: str) -> None:
    running = store.owned_elsewhere()
    failed = False
    for id in ids:
        try:
            marked = store.mark(id, what)
        except ReleasePending as exc:
            click.echo(f"{id}: {exc}; it is sent once", err=True)
            failed = True
            continue
        if not marked:
            click.echo(f"{id}: no such held message", err=True)
            failed = True
        elif what == "delete" and not running:
            store.remove(id)
            click.echo(f"{id}: deleted")
        else:
            when = "now" if running else "when the gateway starts"
            click.echo(f"{id}: {what} requested; the gateway applies it {when}")
    if failed:
        raise SystemExit(1)


def _subject(raw: bytes) -> str:
    head = raw[:65536]
    end = head.find(b"\r\n\r\n")
    end = head.find(b"\n\n") if end < 0 else end
    return parse(head[: end + 4] if end >= 0 else head).decoded_header("subject") or ""


class SandboxQuarantineView:
    """The sandbox's hold quarantine as a :class:`mailwarden_sdk.Quarantine` (SDK 1.7).

    A release puts the message back through the pipeline without waiting for the verdict
    (``Host.resubmit``, the other detectors still decide), as ``mailwarden sandbox release``
    does; a delete removes it. Nothing to learn.
    """

    name = "sandbox"
    title = "Sandbox quarantine"
    can_learn = False

    def __init__(self, plugin: SandboxPlugin) -> None:
        self.plugin = plugin

    def _store(self) -> HoldStore:
        store = self.plugin.store
        if store is None:
            raise QuarantineError("the sandbox is not running")
        return store

    def _meta(self, id: str) -> HeldMessage:
        meta = self._store().load(id) if valid_id(id) else None
        if meta is None:
            raise QuarantineNotFound(f"no held message {id!r}")
        return meta

    def _entry(self, meta: HeldMessage) -> QuarantineEntry:
        subject = meta.subject
        if not subject:
            try:
                subject = _subject(self._store().raw(meta.id))
            except OSError:
                subject = ""
        details = {"rule": meta.rule, "objects": str(len(meta.objects))}
        if meta.note:
            details["note"] = meta.note
        if meta.state == "waiting":
            details["deadline"] = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(meta.deadline))
        return QuarantineEntry(
            id=meta.id,
            stored_at=meta.held_at,
            sender=meta.envelope.mail_from,
            recipients=list(meta.envelope.rcpt_to),
            subject=subject,
            size=meta.size,
            reason=meta.state,
            details=details,
        )

    def search(
        self, query: str = "", *, limit: int = 100, offset: int = 0
    ) -> list[QuarantineEntry]:
        """Held messages, newest first, matching ``query`` (sender, recipient, subject, id)."""
        store = self._store()
        metas = [m for m in (store.load(i) for i in store.ids()) if m is not None]
        metas.sort(key=lambda m: m.held_at, reverse=True)
        needle = query.strip().lower()
        entries = (self._entry(m) for m in metas)
        found = [
            e
            for e in entries
            if not needle
            or any(needle in f.lower() for f in (e.id, e.sender, e.subject, *e.recipients))
        ]
        return found[offset : offset + limit]

    def get(self, id: str) -> QuarantineEntry:
        """One held message's entry."""
        return self._entry(self._meta(id))

    def raw(self, id: str) -> bytes:
        """The held message as received."""
        self._meta(id)
        try:
            return self._store().raw(id)
        except FileNotFoundError as exc:
            raise QuarantineNotFound(f"no held message {id!r}") from exc

    async def release(self, id: str) -> str:
        """Put it back through the pipeline now, without the verdict."""
        await asyncio.to_thread(self._meta, id)
        return await self.plugin.admin(id, "release")

    async def delete(self, id: str) -> str:
        """Remove it; it is never delivered."""
        await asyncio.to_thread(self._meta, id)
        return await self.plugin.admin(id, "delete")

    async def learn(self, id: str, label: LearnLabel, *, by: str) -> str:
        """Not offered (``can_learn`` is false): there is no classifier to teach."""
        raise QuarantineError("the sandbox quarantine has nothing to learn")

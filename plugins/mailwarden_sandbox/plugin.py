"""The sandbox plugin's hooks: config, life cycle, per-message choice, hold, governance.

What is sent and the findings it makes are in ``objects``, the copies of mirror mode in
``mirror``, the follow-up of held messages in ``watcher``, the hold quarantine's logic and web
view in ``quarantine``, the command line in ``cli``.
"""

from __future__ import annotations

import asyncio
import hashlib

import click
import msgspec

from mailwarden_sdk import (
    Finding,
    Host,
    Quarantine,
    ScanContext,
    StashKey,
    StoreDescriptor,
    Verdict,
    WhenFull,
    hookimpl,
    nonblocking,
    plugin_data_dir,
)

from . import quarantine
from .backends import Backend, HttpBackend, IcapBackend
from .cli import sandbox_command
from .config import DETECTOR, Policy, SandboxConfig
from .mirror import Mirror
from .objects import Analysis, Object, finding, objects, verdict_finding
from .quarantine import SandboxQuarantineView
from .store import HoldStore, VerdictCache
from .watcher import Watcher

__all__ = ["SandboxPlugin"]

PENDING = StashKey[list[Object]]("sandbox.pending")
ROOM = StashKey[bool]("sandbox.room")

_RANK = {None: 0, "clean": 1, "skipped": 2, "hold": 3, "deferred": 4, "suspicious": 5}


class SandboxPlugin:
    """Sends objects for analysis; in hold mode keeps the message until the verdict.

    ``time_scale`` multiplies every wait (verdict timeouts, poll intervals): tests use a small
    one so a 60 s timeout passes in a fraction of a second; the gateway always uses 1.
    """

    requires_sdk = ">=1.19,<2"  # nonblocking (ScanContext.live: 1.18)

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale
        self.config = SandboxConfig()
        self.host: Host | None = None
        self.store: HoldStore | None = None
        self.cache: VerdictCache | None = None
        self.backend: Backend | None = None
        # Both made at startup, when the sandbox is enabled under some rule.
        self.mirror: Mirror | None = None
        self.watcher: Watcher | None = None
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
        # The sandbox kind of the gateway's one quarantine store, in its home.
        self.store = HoldStore(
            host.data_dir, config.quarantine_max_bytes, config.quarantine_max_messages
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
        # Mirror copies and held messages share the analysis server's ``concurrency``.
        analysis = Analysis(
            config,
            self.backend,
            self.cache,
            asyncio.Semaphore(config.concurrency),
            self.time_scale,
            asyncio.get_running_loop(),
        )
        self.mirror = Mirror(analysis)
        self.watcher = Watcher(host, self.store, analysis)
        self.watcher.start()

    @hookimpl
    async def mailwarden_shutdown(self, host: Host) -> None:
        tasks = self.watcher.tasks() if self.watcher is not None else []
        if self.mirror is not None:
            tasks.extend(self.mirror.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.backend is not None:
            await self.backend.close()
        if self.cache is not None:
            self.cache.close()
        if self.watcher is not None:
            self.watcher.stopped()

    # -- per message -------------------------------------------------------------------------

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        """Pick the objects to send, drop the too big ones, answer from the cache (a thread)."""
        if self.cache is None or self.store is None:
            # Enabled under no rule (the default): nothing opened at startup, and no Policy
            # folded from the config for each message either.
            return []
        policy = self.config.for_rule(ctx.rule)
        if not policy.enabled:
            # Decided on the event loop: under a rule without the sandbox a thread hand-off
            # per message would cost more than everything else this detector does.
            return []
        return await asyncio.to_thread(self._select, ctx, policy)

    def _select(self, ctx: ScanContext, policy: Policy) -> list[Finding]:
        assert self.cache is not None and self.store is not None
        findings: list[Finding] = []
        pending: list[Object] = []
        for label, data in objects(ctx.message, policy.send):
            if len(data) > policy.max_object_size:
                findings.append(
                    finding(
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
                findings.append(verdict_finding(Object(sha256, label, b""), cached, cached="yes"))
            else:
                pending.append(Object(sha256, label, data))
        if pending:
            ctx.stash[PENDING] = pending
            if policy.mode == "hold":
                ctx.stash[ROOM] = self.store.has_room(len(ctx.raw))
        return findings

    # Reads what the scan stashed; a mirror copy is handed to the loop, never waited for.
    @hookimpl(trylast=True)
    @nonblocking
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
            if not ctx.live:
                return  # an admin's look at a sample sends nothing to the analysis server
            if self.mirror is not None:
                self.mirror.start(pending, policy, ctx.envelope.mail_from)
            verdict.findings.append(finding("SANDBOX_MIRRORED", "submitted"))
            return
        if ctx.stash.get(ROOM, False):
            status = "hold"
            verdict.findings.append(finding("SANDBOX_HOLD", "hold", objects=str(len(pending))))
        else:
            status = "deferred" if policy.full_action == "tempfail" else "skipped"
            verdict.findings.append(
                finding("SANDBOX_SKIPPED", "skipped", reason="sandbox quarantine full")
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
        id = await quarantine.hold(store, ctx, pending, policy, self.time_scale)
        if id is not None and self.watcher is not None and self.watcher.owner is not None:
            self.watcher.watch_soon(id)
        return id

    async def admin(self, id: str, what: str) -> str:
        """Carry out an admin's ``release`` or ``delete`` of ``id`` and say what happened
        (:func:`mailwarden_sandbox.quarantine.admin`)."""
        return await quarantine.admin(self.store, self.watcher, id, what)

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
                # Its message files in the quarantine store (the index is the core's).
                path=str(host.data_dir / "quarantine" / "sandbox"),
                holds="whole messages held until the analysis verdict arrives, with envelopes "
                "in the quarantine index",
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

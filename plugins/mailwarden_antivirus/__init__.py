"""The built-in antivirus detector: signatures over every decoded part, every archive member
and the whole message.

Written only against ``mailwarden_sdk``, exactly as a third-party detector would be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from mailwarden_sdk import (
    Action,
    Category,
    Finding,
    Host,
    ScanContext,
    StoreDescriptor,
    Verdict,
    hookimpl,
    nonblocking,
    plugin_data_dir,
    run_cpu_bound,
)
from mailwarden_sdk.findings import infected
from mailwarden_sdk.signatures import NativeError, NativeLimitError

from .actions import remove_parts
from .archives import ARCHIVE_TYPES, ArchiveLimits, Item, Problem, Unpacker
from .clamd import ClamdConfig, ClamdError, ClamdLimit, clamd_scan
from .signatures import SignatureSet, load_signatures
from .updates import UpdatesConfig, current_dir

__all__ = ["AntivirusConfig", "AntivirusPlugin", "ArchiveLimits"]

DETECTOR = "antivirus"
SYSTEM_DATABASE = "/var/lib/clamav"
BUILTIN_ONLY = (
    "only the built-in EICAR test signature is loaded: no real virus is detected "
    "(install clamav-freshclam or set [antivirus] signatures)"
)

log = logging.getLogger(__name__)

DEFAULT_NOTICE = (
    'The attachment "{name}" was removed from this message by the mail gateway: '
    "{status} ({signatures}).\n"
    "The administrator keeps a copy under the reference {backup}.\n"
)


class AntivirusConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus]``: where signatures come from and what is scanned."""

    builtin_signatures: bool = True
    signatures: list[str] = msgspec.field(default_factory=list)
    # freshclam's directory: used when it holds a database (.cvd/.cld/.cud) and is not listed
    # in `signatures` already; "" turns this off.
    system_database: str = SYSTEM_DATABASE
    scan_whole_message: bool = True
    limits: ArchiveLimits = msgspec.field(default_factory=ArchiveLimits)
    # "native": the signature engine over the files above (and YARA rules); "clamd": a running
    # clamd over INSTREAM ([antivirus.clamd]); both may be listed.
    engines: list[Literal["native", "clamd"]] = msgspec.field(default_factory=lambda: ["native"])
    clamd: ClamdConfig = msgspec.field(default_factory=ClamdConfig)
    # The text of the part that replaces a removed attachment; {name}, {status}, {signatures}
    # and {backup} are filled in.
    notice: str = DEFAULT_NOTICE
    updates: UpdatesConfig = msgspec.field(default_factory=UpdatesConfig)


class AntivirusPlugin:
    """Scans each leaf part's decoded content and, optionally, the raw message."""

    requires_sdk = ">=1.19,<2"  # nonblocking

    def __init__(self) -> None:
        self.config = AntivirusConfig()
        self.signatures = SignatureSet()
        self.data_dir: Path | None = None
        self._paths: list[Path] = []
        self._installed: Path | None = None
        self._checked = 0.0

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, AntivirusConfig

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        return [
            StoreDescriptor(
                name="antivirus signatures",
                path=str(host.data_dir / DETECTOR),
                holds="compiled signature databases and installed signature updates; no mail "
                "and no personal data",
                read_permission="settings.view",
            )
        ]

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for(DETECTOR) or AntivirusConfig()
        paths = signature_paths(self.config)
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"signature path {path} does not exist")
        self.data_dir = plugin_data_dir(host, DETECTOR)
        self._paths = paths
        self._load()

    def _load(self) -> None:
        assert self.data_dir is not None
        # The set `mailwarden sigs update` installed, beside the configured files; the compiled
        # database is cached (and memory-mapped) under the plugin's data dir.
        installed = current_dir(self.data_dir / "updates")
        self._installed = installed
        self._checked = time.monotonic()
        paths = [*self._paths, installed] if installed is not None else list(self._paths)
        # One assignment: a scan in another thread keeps the set it started with.
        self.signatures = load_signatures(paths, cache_dir=self.data_dir)
        if "native" in self.config.engines and builtin_only(self.signatures):
            log.warning("antivirus: %s", BUILTIN_ONLY)

    def banner_note(self) -> str:
        """One line for the ``serve`` banner: what the antivirus detects with."""
        if "native" not in self.config.engines:
            return f"engines {', '.join(self.config.engines)}"
        if builtin_only(self.signatures):
            return f"WARNING: {BUILTIN_ONLY}"
        return self.signatures.report()

    def _check_for_update(self) -> None:
        if self.data_dir is None:
            return
        if time.monotonic() - self._checked < self.config.updates.check_interval:
            return
        self._checked = time.monotonic()
        installed = current_dir(self.data_dir / "updates")
        if installed != self._installed:
            log.info("antivirus: new signature set %s", installed)
            self._load()

    @hookimpl
    def mailwarden_cli_commands(self) -> list[Any]:
        from .cli import sigs

        return [sigs]

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        if "clamd" in self.config.engines or _carries_archives(ctx):
            # clamd is a socket round trip, and archives are unpacked within seconds-long limits
            # (7z by a child process waited for): never on the event loop.
            return await asyncio.to_thread(self._scan, ctx)
        return await run_cpu_bound(len(ctx.raw), self._scan, ctx)

    def _scan(self, ctx: ScanContext) -> list[Finding]:
        self._check_for_update()
        findings: list[Finding] = []
        reported: set[str] = set()
        use_clamd = "clamd" in self.config.engines
        # Decoded leaves catch what transfer encoding hides, archive members what compression
        # hides; the raw message catches what sits outside any part the parser recognised (a
        # broken structure is an attacker's tool).
        unpacker = Unpacker(self.config.limits)
        for item in unpacker.message(ctx.message, whole=self.config.scan_whole_message):
            try:
                names = self.scan_object(item.data)
            except NativeError as exc:  # hits not all recorded: this object only, never clean
                status = "not_scanned" if isinstance(exc, NativeLimitError) else "error"
                findings.append(_engine_finding(status, item, str(exc), "native"))
                names = []
            if use_clamd:
                try:
                    found = clamd_scan(self.config.clamd, item.data)
                except ClamdLimit as exc:
                    findings.append(_engine_finding("not_scanned", item, str(exc)))
                    found = None
                except ClamdError as exc:
                    # one error finding, not one timeout per object
                    findings.append(_engine_finding("error", item, str(exc)))
                    use_clamd = False
                    found = None
                if found is not None and found not in names:
                    names.append(found)
            if item.part is None:
                # The whole message repeats what its parts hold; report only what they missed.
                names = [name for name in names if name not in reported]
            for name in names:
                reported.add(name)
                findings.append(infected(DETECTOR, name, part=item.part, object=item.label))
        findings.extend(_problem_finding(problem) for problem in unpacker.problems)
        return findings

    def scan_object(self, data: bytes | memoryview) -> list[str]:
        """Names of the native signatures matching one object (hash signatures first)."""
        if "native" not in self.config.engines:
            return []
        return [*self.signatures.scan_hashes(data), *self.signatures.scan_body(data)]

    # Cutting parts out rebuilds the message (CPU work the size of the message): a worker's.
    @hookimpl
    @nonblocking(when=lambda action, **_: not action.remove_parts)
    def mailwarden_action(
        self, ctx: ScanContext, verdict: Verdict, action: Action
    ) -> Action | None:
        if not action.remove_parts:
            return None
        # The gateway keeps the original (as action.backup_id) before the cut message goes on.
        notice = (
            self.config.notice.replace("{status}", verdict.antivirus.value)
            .replace("{signatures}", ", ".join(verdict.virus_names) or verdict.antivirus.value)
            .replace("{backup}", action.backup_id or "(none: backups are off for this rule)")
        )
        cleaned = remove_parts(ctx.message, action.remove_parts, notice)
        if cleaned is None:
            return None
        return msgspec.structs.replace(action, replace_message=cleaned)


def signature_paths(config: AntivirusConfig) -> list[Path]:
    """The signature files and directories ``config`` loads: the built-in set, the
    configured ones and freshclam's directory when it holds a database."""
    paths = [Path(p) for p in config.signatures]
    system = Path(config.system_database) if config.system_database else None
    if (
        system is not None
        and system not in paths
        and system.is_dir()
        and any(p.suffix in (".cvd", ".cld", ".cud") for p in system.iterdir())
    ):
        paths.append(system)
    if config.builtin_signatures and "native" in config.engines:
        paths.insert(0, Path(__file__).parent / "signatures")
    return paths


def builtin_only(signatures: SignatureSet) -> bool:
    """Whether every signature loaded comes from the built-in test set."""
    builtin = Path(__file__).parent / "signatures"
    return all(Path(source).is_relative_to(builtin) for source in signatures.sources)


def _carries_archives(ctx: ScanContext) -> bool:
    return any(
        leaf.detected_type in ARCHIVE_TYPES or leaf.content_type.startswith("message/")
        for leaf in ctx.message.leaves()
    )


def _engine_finding(status: str, item: Item, error: str, engine: str = "clamd") -> Finding:
    details = {"engine": engine, "object": item.label, "error": error[:300]}
    if status == "not_scanned":
        details["limit"] = "clamd_stream_max_length" if engine == "clamd" else "signature_hits"
    code = "AV_NOT_SCANNED" if status == "not_scanned" else "AV_ENGINE_ERROR"
    return Finding(
        code=code,
        detector=DETECTOR,
        category=Category.ANTIVIRUS,
        status=status,
        details=details,
        part=item.part,
    )


def _problem_finding(problem: Problem) -> Finding:
    return Finding(
        code=problem.code,
        detector=DETECTOR,
        category=Category.ANTIVIRUS,
        status=problem.status,
        details=problem.details,
        part=problem.part,
    )

"""The built-in antivirus detector: signatures over every decoded part, every archive member
and the whole message.

Written only against ``mailwarden_sdk``, exactly as a third-party detector would be.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from mailwarden_sdk import Category, Finding, Host, ScanContext, hookimpl, plugin_data_dir
from mailwarden_sdk.findings import infected

from .archives import ArchiveLimits, Problem, Unpacker
from .signatures import SignatureSet, load_signatures

__all__ = ["AntivirusConfig", "AntivirusPlugin", "ArchiveLimits"]

DETECTOR = "antivirus"


class AntivirusConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus]``: where signatures come from and what is scanned."""

    builtin_signatures: bool = True
    signatures: list[str] = msgspec.field(default_factory=list)
    scan_whole_message: bool = True
    limits: ArchiveLimits = msgspec.field(default_factory=ArchiveLimits)


class AntivirusPlugin:
    """Scans each leaf part's decoded content and, optionally, the raw message."""

    requires_sdk = ">=1.0,<2"

    def __init__(self) -> None:
        self.config = AntivirusConfig()
        self.signatures = SignatureSet()

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, AntivirusConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for(DETECTOR) or AntivirusConfig()
        paths = [Path(p) for p in self.config.signatures]
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"signature path {path} does not exist")
        if self.config.builtin_signatures:
            paths.insert(0, Path(__file__).parent / "signatures")
        # the compiled database is cached (and memory-mapped) under the plugin's data dir
        self.signatures = load_signatures(paths, cache_dir=plugin_data_dir(host, DETECTOR))

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        findings: list[Finding] = []
        reported: set[str] = set()
        # Decoded leaves catch what transfer encoding hides, archive members what compression
        # hides; the raw message catches what sits outside any part the parser recognised (a
        # broken structure is an attacker's tool).
        unpacker = Unpacker(self.config.limits)
        for item in unpacker.message(ctx.message, whole=self.config.scan_whole_message):
            names = self.scan_object(item.data)
            if item.part is None:
                # The whole message repeats what its parts hold; report only what they missed.
                names = [name for name in names if name not in reported]
            for name in names:
                reported.add(name)
                findings.append(infected(DETECTOR, name, part=item.part, object=item.label))
        findings.extend(_problem_finding(problem) for problem in unpacker.problems)
        return findings

    def scan_object(self, data: bytes | memoryview) -> list[str]:
        """Names of the signatures matching one object (hash signatures first)."""
        return [*self.signatures.scan_hashes(data), *self.signatures.scan_body(data)]


def _problem_finding(problem: Problem) -> Finding:
    return Finding(
        code=problem.code,
        detector=DETECTOR,
        category=Category.ANTIVIRUS,
        status=problem.status,
        details=problem.details,
        part=problem.part,
    )

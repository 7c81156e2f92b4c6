"""The built-in antivirus detector: signatures over every decoded part and the whole message.

Written only against ``mailwarden_sdk``, exactly as a third-party detector would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from mailwarden_sdk import Finding, Host, ScanContext, hookimpl, plugin_data_dir
from mailwarden_sdk.findings import infected

from .signatures import SignatureSet, load_signatures

__all__ = ["AntivirusConfig", "AntivirusPlugin"]

DETECTOR = "antivirus"


class AntivirusConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus]``: where signatures come from and what is scanned."""

    builtin_signatures: bool = True
    signatures: list[str] = msgspec.field(default_factory=list)
    scan_whole_message: bool = True


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
        for index, label, data in self._objects(ctx):
            names = [*self.signatures.scan_hashes(data), *self.signatures.scan_body(data)]
            if index is None:
                # The whole message repeats what its parts hold; report only what they missed.
                names = [name for name in names if name not in reported]
            for name in names:
                reported.add(name)
                findings.append(infected(DETECTOR, name, part=index, object=label))
        return findings

    def _objects(self, ctx: ScanContext) -> Iterator[tuple[int | None, str, bytes | memoryview]]:
        # Decoded leaves catch what transfer encoding hides; the raw message catches what sits
        # outside any part the parser recognised (a broken structure is an attacker's tool).
        for part in ctx.message.leaves():
            yield part.index, part.filename or f"part {part.index}", part.decoded()
        if self.config.scan_whole_message:
            yield None, "message", ctx.raw

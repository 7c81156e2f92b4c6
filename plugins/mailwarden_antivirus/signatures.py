"""Reading signature files in ClamAV's formats into one native matcher and hash tables.

This is the slice the foundation needs: `.ndb` body signatures whose pattern is plain hex at
any offset (compiled into the native multi-pattern matcher), and `.hdb`/`.hsb` whole-object
hashes. Wildcards, offsets and logical signatures arrive with the signature-engine issue;
until then such lines are counted as unsupported, never silently mis-read.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailwarden_sdk import Matcher

__all__ = ["SignatureSet", "load_signatures"]

log = logging.getLogger(__name__)

_HEX = set("0123456789abcdefABCDEF")


@dataclass
class SignatureSet:
    """Compiled signatures: body patterns in a matcher, hashes in dicts keyed by digest."""

    names: list[str] = field(default_factory=list)
    patterns: list[bytes] = field(default_factory=list)
    hashes: dict[str, dict[str, tuple[int | None, str]]] = field(
        default_factory=lambda: {"md5": {}, "sha1": {}, "sha256": {}}
    )
    unsupported: int = 0
    sources: list[str] = field(default_factory=list)
    matcher: Matcher | None = None

    def compile(self) -> None:
        """Build the native matcher over every body pattern loaded so far."""
        self.matcher = Matcher(self.patterns) if self.patterns else None

    def scan_body(self, data: bytes | memoryview) -> list[str]:
        """Names of the body signatures found in ``data`` (each once, in offset order)."""
        if self.matcher is None or not len(data):
            return []
        seen: list[str] = []
        for sig_id, _offset in self.matcher.scan(data):
            name = self.names[sig_id]
            if name not in seen:
                seen.append(name)
        return seen

    def scan_hashes(self, data: bytes | memoryview) -> list[str]:
        """Names of the hash signatures matching ``data`` as a whole object."""
        found: list[str] = []
        size = len(data)
        for algo, table in self.hashes.items():
            if not table:
                continue
            entry = table.get(hashlib.new(algo, data).hexdigest())
            if entry and entry[0] in (None, size):
                found.append(entry[1])
        return found


def load_signatures(paths: Iterable[Path]) -> SignatureSet:
    """Read ``.ndb``, ``.hdb`` and ``.hsb`` files (directories are searched for them)."""
    sigs = SignatureSet()
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if file.suffix in (".ndb", ".hdb", ".hsb"):
                _load_file(file, sigs)
                sigs.sources.append(str(file))
    sigs.compile()
    if sigs.unsupported:
        log.warning(
            "%d signatures use features not supported yet and were skipped", sigs.unsupported
        )
    return sigs


def _load_file(path: Path, sigs: SignatureSet) -> None:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if path.suffix == ".ndb":
                _add_ndb(line, sigs)
            else:
                _add_hash(line, sigs)


def _add_ndb(line: str, sigs: SignatureSet) -> None:
    fields = line.split(":")
    if len(fields) < 4:
        sigs.unsupported += 1
        return
    name, target, offset, pattern = fields[:4]
    # Target 0 (any file) and a floating offset are what a literal multi-pattern scan means.
    if target != "0" or offset != "*" or len(pattern) % 2 or not pattern or set(pattern) - _HEX:
        sigs.unsupported += 1
        return
    sigs.names.append(name)
    sigs.patterns.append(bytes.fromhex(pattern))


def _add_hash(line: str, sigs: SignatureSet) -> None:
    fields = line.split(":")
    if len(fields) < 3:
        sigs.unsupported += 1
        return
    digest, size, name = fields[0].lower(), fields[1], fields[2]
    algo = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(digest))
    if algo is None or set(digest) - _HEX or not (size == "*" or size.isdigit()):
        sigs.unsupported += 1
        return
    sigs.hashes[algo][digest] = (None if size == "*" else int(size), name)

"""Signature databases in ClamAV's formats (and YARA rules), compiled once into the native engine.

Formats read: ``.ndb`` body signatures (hex, ``??`` and nibble wildcards, ``{n}``, ``{n-m}``,
``{-n}``, ``{n-}``, ``*``, ``(aa|bb)`` and ``!(aa|bb)``; offsets ``*``, ``n``, ``n,m``,
``EOF-n[,m]``; target types detectable from content), ``.hdb``/``.hsb`` whole-object hashes
(MD5, SHA-1, SHA-256; size or ``*``), ``.ldb`` logical signatures (``&``, ``|``, ``=n``,
``>n``, ``<n``, ``=n,m`` over body subsignatures; ``Target`` and ``FileSize`` attributes) and
``.yar``/``.yara`` through yara-python. Anything else, a whole file kind or one signature using
a feature this engine lacks, is counted with its reason in :attr:`SignatureSet.skipped` and
logged: never silently dropped.

The body signatures of all files become one native database. With a cache directory it is
written there as a file keyed by the sources' contents and memory-mapped: a later start (or
another worker) whose sources did not change maps the same file in milliseconds instead of
compiling again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mailwarden_sdk.signatures import (
    OFF_ABS,
    OFF_ANY,
    OFF_EOF,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
)

__all__ = [
    "TARGET_NAMES",
    "LogicalSignature",
    "SignatureSet",
    "detect_targets",
    "load_signatures",
]

log = logging.getLogger(__name__)

# Bump when what goes into the cache changes meaning.
CACHE_FORMAT = 2

_HEX = set("0123456789abcdefABCDEF")

TARGET_NAMES = {
    0: "any",
    1: "PE",
    2: "OLE2",
    3: "HTML (normalized)",
    4: "mail",
    5: "graphics",
    6: "ELF",
    7: "ASCII text (normalized)",
    9: "Mach-O",
    10: "PDF",
    11: "Flash",
    12: "Java class",
}
# 3 and 7 match ClamAV's normalized text (tags and case folded, whitespace squeezed); matching
# them against raw bytes would be a different signature, so they are skipped with a reason.
SUPPORTED_TARGETS = frozenset({0, 1, 2, 4, 5, 6, 9, 10, 11, 12})

# Whole kinds of database this engine does not read, with the reason reported at load.
_UNSUPPORTED_KINDS = {
    ".cbc": "bytecode signatures (.cbc) need the ClamAV bytecode VM",
    ".idb": "icon groups (.idb) need PE resource parsing",
    ".crb": "Authenticode certificate rules (.crb)",
    ".pdb": "phishing domain lists (.pdb)",
    ".wdb": "phishing allow lists (.wdb)",
    ".gdb": "phishing hash lists (.gdb)",
    ".ftm": "file-type magic (.ftm)",
    ".cdb": "container metadata signatures (.cdb)",
    ".fp": "false-positive hash lists (.fp)",
    ".sfp": "false-positive hash lists (.sfp)",
    ".ign": "ignore lists (.ign)",
    ".ign2": "ignore lists (.ign2)",
}
_BODY_KINDS = (".ndb", ".hdb", ".hsb", ".ldb", ".mdb", ".msb", ".imp")
_CONTAINER_KINDS = (".cvd", ".cld", ".cud")
_YARA_KINDS = (".yar", ".yara")


# The first bytes of the magics detect_targets looks for at offset 0.
_MAGIC_FIRST = frozenset(b"M\xd0G\x89\xffB\x7f\xfe\xce\xcfFCZ\xca")


def detect_targets(data: bytes | memoryview, *, mail: bool = False) -> set[int]:
    """ClamAV target types that ``data`` is, from its first bytes (0, "any", always applies)."""
    head = bytes(data[:1024])
    found = {0, 4} if mail else {0}
    if not head or head[0] not in _MAGIC_FIRST:
        # Text and most parts start with none of the magics below: only the PDF marker,
        # which may sit anywhere in the head, is left to look for.
        if b"%PDF-" in head:
            found.add(10)
        return found
    if head[:2] == b"MZ" and len(head) >= 64:
        pe = int.from_bytes(head[60:64], "little")
        tail = bytes(data[pe : pe + 4]) if pe < len(data) else b""
        if tail == b"PE\0\0":
            found.add(1)
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        found.add(2)
    if head[:6] in (b"GIF87a", b"GIF89a") or head[:8] == b"\x89PNG\r\n\x1a\n":
        found.add(5)
    if head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM":
        found.add(5)
    if head[:4] == b"\x7fELF":
        found.add(6)
    if head[:4] in (
        b"\xfe\xed\xfa\xce",
        b"\xfe\xed\xfa\xcf",
        b"\xce\xfa\xed\xfe",
        b"\xcf\xfa\xed\xfe",
    ):
        found.add(9)
    if b"%PDF-" in head:
        found.add(10)
    if head[:3] in (b"FWS", b"CWS", b"ZWS"):
        found.add(11)
    if head[:4] == b"\xca\xfe\xba\xbe":
        found.update((9, 12))  # universal Mach-O and Java class share the magic
    return found


# ------------------------------------------------------------------ logical signatures


class _Expr(msgspec.Struct, frozen=True, array_like=True):
    """A parsed logical expression: ``op`` is "sub", "&" or "|"; cmp applies to the node."""

    op: str
    sub: int = -1
    kids: tuple[_Expr, ...] = ()
    cmp: str = ""
    n: int = 0
    distinct: int = 0


_TOKEN = re.compile(r"\s*(\d+|[()&|=<>,])")


def _parse_expr(text: str, n_subs: int) -> _Expr:
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"bad logical expression at {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    at = 0

    def peek() -> str:
        return tokens[at] if at < len(tokens) else ""

    def take() -> str:
        nonlocal at
        tok = peek()
        if not tok:
            raise ValueError("logical expression ends early")
        at += 1
        return tok

    def factor() -> _Expr:
        tok = take()
        if tok == "(":
            node = expr()
            if take() != ")":
                raise ValueError("unbalanced parenthesis")
        elif tok.isdigit():
            if int(tok) >= n_subs:
                raise ValueError(f"subsignature {tok} does not exist")
            node = _Expr("sub", sub=int(tok))
        else:
            raise ValueError(f"unexpected {tok!r}")
        if peek() in ("=", "<", ">"):
            cmp = take()
            num = take()
            distinct = 0
            if peek() == ",":
                take()
                distinct = int(take())
            node = _Expr(node.op, node.sub, node.kids, cmp, int(num), distinct)
        return node

    def term() -> _Expr:
        kids = [factor()]
        while peek() == "&":
            take()
            kids.append(factor())
        return kids[0] if len(kids) == 1 else _Expr("&", kids=tuple(kids))

    def expr() -> _Expr:
        kids = [term()]
        while peek() == "|":
            take()
            kids.append(term())
        return kids[0] if len(kids) == 1 else _Expr("|", kids=tuple(kids))

    tree = expr()
    if at != len(tokens):
        raise ValueError(f"trailing {tokens[at]!r} in logical expression")
    return tree


def _evaluate(node: _Expr, counts: Sequence[int]) -> tuple[bool, int, int]:
    """(true, matches, distinct subsignatures matched) of a node; counts per subsignature."""
    if node.op == "sub":
        c = counts[node.sub]
        truth, total, distinct = c > 0, c, int(c > 0)
    else:
        parts = [_evaluate(k, counts) for k in node.kids]
        truth = all(p[0] for p in parts) if node.op == "&" else any(p[0] for p in parts)
        total = sum(p[1] for p in parts)
        distinct = sum(p[2] for p in parts)
    if node.cmp:
        ok = {"=": total == node.n, ">": total > node.n, "<": total < node.n}[node.cmp]
        truth = ok and distinct >= node.distinct
    return truth, total, distinct


class LogicalSignature(msgspec.Struct, frozen=True):
    """One ``.ldb`` line: subsignature ids in the native database and the expression."""

    name: str
    target: int
    expression: str
    subs: tuple[int, ...]
    min_size: int = 0
    max_size: int = -1

    def tree(self) -> _Expr:
        return _parse_expr(self.expression, len(self.subs))


# ------------------------------------------------------------------ the loaded set


class _Meta(msgspec.Struct):
    """Everything but the native blob, kept beside it in the cache."""

    format: int
    names: list[str]
    ldb: list[LogicalSignature]
    hashes: dict[str, dict[str, list[tuple[int | None, str]]]]
    skipped: dict[str, int]
    sources: list[str]
    yara: list[str]
    sections: dict[str, dict[str, list[tuple[int | None, str]]]] = {}
    imports: dict[str, dict[str, list[tuple[int | None, str]]]] = {}


@dataclass
class SignatureSet:
    """Loaded signatures: the native body database, hash tables, logical and YARA rules."""

    names: list[str] = field(default_factory=list)  # native id -> name ("" for ldb subsigs)
    ldb: list[LogicalSignature] = field(default_factory=list)
    hashes: dict[str, dict[str, list[tuple[int | None, str]]]] = field(
        default_factory=lambda: {"md5": {}, "sha1": {}, "sha256": {}}
    )
    # PE section (.mdb/.msb) and import-table (.imp) hashes: algorithm -> digest -> entries
    sections: dict[str, dict[str, list[tuple[int | None, str]]]] = field(
        default_factory=lambda: {"md5": {}, "sha1": {}, "sha256": {}}
    )
    imports: dict[str, dict[str, list[tuple[int | None, str]]]] = field(
        default_factory=lambda: {"md5": {}, "sha1": {}, "sha256": {}}
    )
    skipped: Counter[str] = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)
    yara_files: list[str] = field(default_factory=list)
    db: SignatureDB | None = None
    db_path: str | None = None
    from_cache: bool = False
    _trees: list[_Expr] = field(default_factory=list)
    _sub_of: dict[int, tuple[int, int]] = field(default_factory=dict)
    _yara: Any = None

    @property
    def unsupported(self) -> int:
        """How many signatures were skipped, for every reason together."""
        return sum(self.skipped.values())

    @property
    def count(self) -> int:
        """Signatures usable for detection (body, logical, hash; YARA rules not counted)."""
        n_hash = sum(
            len(v)
            for tables in (self.hashes, self.sections, self.imports)
            for t in tables.values()
            for v in t.values()
        )
        return sum(1 for n in self.names if n) + len(self.ldb) + n_hash

    def _index(self) -> None:
        self._trees = [sig.tree() for sig in self.ldb]
        self._sub_of = {
            sub_id: (li, si)
            for li, sig in enumerate(self.ldb)
            for si, sub_id in enumerate(sig.subs)
        }
        self._yara = _compile_yara(self.yara_files) if self.yara_files else None

    def scan_body(
        self, data: bytes | memoryview, *, mail: bool = False, targets: Iterable[int] | None = None
    ) -> list[str]:
        """Names of body, logical and YARA signatures found in ``data`` (each once)."""
        found: list[str] = []
        if not len(data):
            return found
        kinds = detect_targets(data, mail=mail) if targets is None else {0, *targets}
        if self.db is not None:
            counts: dict[int, list[int]] = {}
            for hit in self.db.scan(data, kinds):
                name = self.names[hit.sig_id]
                if name:
                    found.append(name)
                    continue
                li, si = self._sub_of[hit.sig_id]
                counts.setdefault(li, [0] * len(self.ldb[li].subs))[si] = hit.count
            size = len(data)
            for li in sorted(counts):
                sig = self.ldb[li]
                if sig.target not in kinds or size < sig.min_size:
                    continue
                if sig.max_size >= 0 and size > sig.max_size:
                    continue
                if _evaluate(self._trees[li], counts[li])[0]:
                    found.append(sig.name)
        if self._yara is not None:
            for match in self._yara.match(data=bytes(data)):
                found.append(f"YARA.{match.rule}")
        return list(dict.fromkeys(found)) if len(found) > 1 else found

    def scan_hashes(self, data: bytes | memoryview) -> list[str]:
        """Names of the hash signatures matching ``data`` as a whole object."""
        found: list[str] = []
        size = len(data)
        for algo, table in self.hashes.items():
            if not table:
                continue
            for want, name in table.get(hashlib.new(algo, data).hexdigest(), ()):
                if want in (None, size):
                    found.append(name)
        if any(self.sections.values()) or any(self.imports.values()):
            found.extend(self._scan_pe(data))
        return found

    def _scan_pe(self, data: bytes | memoryview) -> list[str]:
        """Section and import-table hash signatures of a PE file (through ``pefile``)."""
        parsed = _pe_parts(data)
        if parsed is None:
            return []
        sections, imports = parsed
        found: list[str] = []
        for tables, parts in ((self.sections, sections), (self.imports, [imports])):
            for algo, table in tables.items():
                if not table:
                    continue
                for part in parts:
                    if not part:
                        continue
                    for want, name in table.get(hashlib.new(algo, part).hexdigest(), ()):
                        if want in (None, len(part)):
                            found.append(name)
        return found

    def scan(self, data: bytes | memoryview, *, mail: bool = False) -> list[str]:
        """Everything that matches ``data``: hash signatures first, then the rest."""
        return list(dict.fromkeys([*self.scan_hashes(data), *self.scan_body(data, mail=mail)]))

    def report(self) -> str:
        """One line of what was loaded and, per reason, what was skipped."""
        loaded = f"{self.count} signatures loaded from {len(self.sources)} files"
        if self.yara_files:
            loaded += f" (+ YARA rules from {len(self.yara_files)} files)"
        if not self.skipped:
            return loaded
        why = "; ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return f"{loaded}; skipped {self.unsupported}: {why}"


# ------------------------------------------------------------------ loading


@dataclass
class _Plan:
    """Parsed source files before the native compile."""

    body: list[tuple[str, int, int, int, int, str]] = field(default_factory=list)
    ldb: list[tuple[str, int, str, list[int], int, int]] = field(default_factory=list)
    sets: SignatureSet = field(default_factory=SignatureSet)


def _files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _offset(text: str) -> tuple[int, int, int] | str:
    """(kind, offset, shift), or the reason the offset is not supported."""
    if text == "*":
        return OFF_ANY, 0, 0
    base, _, shift_text = text.partition(",")
    if shift_text and not shift_text.isdigit():
        return f"offset {text!r} is malformed"
    shift = int(shift_text) if shift_text else 0
    if base.isdigit():
        return OFF_ABS, int(base), shift
    if base.startswith("EOF-") and base[4:].isdigit():
        return OFF_EOF, int(base[4:]), shift
    kind = re.match(r"[A-Z]+", base)
    where = kind.group(0) if kind else base
    return f"offset {where} (executable structure) not supported"


def _target(text: str) -> int | str:
    if not text.isdigit():
        return f"target {text!r} is malformed"
    t = int(text)
    if t not in SUPPORTED_TARGETS:
        return f"target {t} ({TARGET_NAMES.get(t, 'unknown')}) not supported"
    return t


def _add_ndb(line: str, plan: _Plan) -> None:
    fields = line.split(":")
    if len(fields) < 4:
        plan.sets.skipped["malformed .ndb line"] += 1
        return
    name, target_text, offset_text, pattern = fields[:4]
    target = _target(target_text)
    offset = _offset(offset_text)
    if isinstance(target, str) or isinstance(offset, str):
        plan.sets.skipped[target if isinstance(target, str) else str(offset)] += 1
        return
    plan.body.append((pattern, target, *offset, name))


def _add_hash(line: str, plan: _Plan, suffix: str = ".hdb") -> None:
    fields = line.split(":")
    if len(fields) < 3:
        plan.sets.skipped["malformed hash line"] += 1
        return
    digest, size, name = fields[0].lower(), fields[1], fields[2]
    table = plan.sets.hashes
    if suffix in (".mdb", ".msb"):
        # PESectionSize:PESectionHash:Name, the hash of one section's raw data
        size, digest, table = fields[0], fields[1].lower(), plan.sets.sections
    elif suffix == ".imp":
        # ImportHash:ImportStringSize:Name, as pefile's imphash string
        table = plan.sets.imports
    algo = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(digest))
    if algo is None or set(digest) - _HEX or not (size == "*" or size.isdigit()):
        plan.sets.skipped["malformed hash line"] += 1
        return
    # one digest may be listed with its size and again with "*" under another name
    entry = (None if size == "*" else int(size), name)
    table[algo].setdefault(digest, []).append(entry)


def _add_ldb(line: str, plan: _Plan) -> None:
    fields = line.split(";")
    if len(fields) < 4:
        plan.sets.skipped["malformed .ldb line"] += 1
        return
    name, tdb, expression, subs = fields[0], fields[1], fields[2], fields[3:]
    target, min_size, max_size = 0, 0, -1
    for attr in tdb.split(","):
        key, _, value = attr.partition(":")
        if key == "Engine":
            continue
        if key == "Target":
            t = _target(value)
            if isinstance(t, str):
                plan.sets.skipped[t] += 1
                return
            target = t
        elif key == "FileSize":
            lo, _, hi = value.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                plan.sets.skipped["malformed .ldb FileSize"] += 1
                return
            min_size, max_size = int(lo), int(hi) if hi else int(lo)
        else:
            plan.sets.skipped[f".ldb attribute {key} not supported"] += 1
            return
    parsed: list[tuple[str, int, int, int]] = []
    for sub in subs:
        if "::" in sub:
            plan.sets.skipped[".ldb subsignature modifiers (::i/w/a/f) not supported"] += 1
            return
        if "/" in sub:
            plan.sets.skipped[".ldb PCRE subsignatures not supported"] += 1
            return
        if "$" in sub or "#" in sub:
            plan.sets.skipped[".ldb macro or byte-compare subsignatures not supported"] += 1
            return
        offset: tuple[int, int, int] | str = (OFF_ANY, 0, 0)
        pattern = sub
        if ":" in sub:
            offset_text, pattern = sub.split(":", 1)
            offset = _offset(offset_text)
            if isinstance(offset, str):
                plan.sets.skipped[offset] += 1
                return
        parsed.append((pattern, *offset))
    try:
        _parse_expr(expression, len(parsed))
    except ValueError as exc:
        plan.sets.skipped[f"malformed .ldb expression ({exc})"] += 1
        return
    first = len(plan.body)
    for pattern, kind, off, shift in parsed:
        plan.body.append((pattern, target, kind, off, shift, ""))
    plan.ldb.append(
        (name, target, expression, list(range(first, len(plan.body))), min_size, max_size)
    )


def _read(files: list[Path], plan: _Plan) -> None:
    for file in files:
        suffix = file.suffix.lower()
        if suffix in _CONTAINER_KINDS:
            _read_container(file, plan)
            continue
        if suffix in _YARA_KINDS:
            plan.sets.yara_files.append(str(file))
            plan.sets.sources.append(str(file))
            continue
        if suffix not in _BODY_KINDS:
            reason = _UNSUPPORTED_KINDS.get(suffix)
            if reason == _UNSUPPORTED_KINDS[".cbc"]:
                plan.sets.skipped[reason] += 1  # one bytecode signature per file
            elif reason:
                with file.open("rb") as handle:
                    lines = sum(1 for raw in handle if raw.strip() and not raw.startswith(b"#"))
                plan.sets.skipped[reason] += max(lines, 1)
            continue
        plan.sets.sources.append(str(file))
        with file.open(encoding="utf-8", errors="replace") as handle:
            _add_lines(handle, suffix, plan)


def _add_lines(lines: Iterable[str], suffix: str, plan: _Plan) -> None:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if suffix == ".ndb":
            _add_ndb(line, plan)
        elif suffix == ".ldb":
            _add_ldb(line, plan)
        else:
            _add_hash(line, plan, suffix)


def _read_container(file: Path, plan: _Plan) -> None:
    """A ClamAV database container (.cvd/.cld/.cud from freshclam): header checked as
    ``sigtool --info`` does, then each database file inside read by its kind."""
    try:
        members = read_cvd(file.read_bytes(), file.name)
    except ValueError as exc:
        plan.sets.skipped[f"{file.suffix} container not read: {exc}"] += 1
        log.warning("signature container %s not read: %s", file, exc)
        return
    plan.sets.sources.append(str(file))
    for name, data in members:
        suffix = Path(name).suffix.lower()
        if suffix in _BODY_KINDS:
            _add_lines(data.decode("utf-8", "replace").splitlines(), suffix, plan)
        elif suffix in _UNSUPPORTED_KINDS:
            lines = sum(1 for raw in data.splitlines() if raw.strip() and not raw.startswith(b"#"))
            plan.sets.skipped[_UNSUPPORTED_KINDS[suffix]] += max(lines, 1)
        elif suffix in _YARA_KINDS:
            plan.sets.skipped["YARA rules inside a .cvd container"] += 1


def read_cvd(data: bytes, name: str = "database.cvd") -> list[tuple[str, bytes]]:
    """The files inside a ClamAV ``.cvd``/``.cld``/``.cud`` container.

    The 512-byte header is ``ClamAV-VDB:time:version:signatures:level:MD5:dsig:builder:stime``;
    the MD5 is of what follows it (a gzipped tar for .cvd/.cud, a plain or gzipped tar for
    .cld, whose MD5 freshclam leaves stale after applying diffs), checked for .cvd/.cud as
    ``sigtool --info`` does. The RSA signature is not checked (ClamAV's own key scheme).
    """
    import gzip
    import io
    import tarfile

    header = data[:512].rstrip(b"\0 ").decode("latin-1", "replace")
    fields = header.split(":")
    if len(data) < 512 or fields[0] != "ClamAV-VDB" or len(fields) < 6:
        raise ValueError("not a ClamAV database container (no ClamAV-VDB header)")
    body = data[512:]
    if not name.lower().endswith(".cld") and hashlib.md5(body).hexdigest() != fields[5].lower():
        raise ValueError("MD5 in the header does not match the contents (damaged download?)")
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise ValueError(f"gzip: {exc}") from None
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
            for member in archive:
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    out.append((member.name, handle.read()))
    except tarfile.TarError as exc:
        raise ValueError(f"tar: {exc}") from None
    return out


def _compile(plan: _Plan) -> bytes:
    """Compile the body signatures; an ldb whose subsignature fails is skipped whole."""
    sets = plan.sets
    compiler = SignatureCompiler()
    ids: list[int | None] = []
    for pattern, target, kind, off, shift, name in plan.body:
        try:
            ids.append(compiler.add(pattern, target=target, kind=kind, offset=off, shift=shift))
        except SignatureError as exc:
            ids.append(None)
            if name:
                sets.skipped[exc.reason] += 1
    names = [""] * len(compiler)
    for (_, _, _, _, _, name), sig_id in zip(plan.body, ids, strict=True):
        if sig_id is not None:
            names[sig_id] = name
    for name, target, expression, subs, lo, hi in plan.ldb:
        sub_ids = [ids[i] for i in subs]
        if any(s is None for s in sub_ids):
            # its subsignatures that did compile stay in the database, unnamed and unused
            sets.skipped[".ldb with a subsignature the engine cannot compile"] += 1
            continue
        sets.ldb.append(
            LogicalSignature(
                name, target, expression, tuple(s for s in sub_ids if s is not None), lo, hi
            )
        )
    sets.names = names
    return compiler.build()


def _yara_available() -> bool:
    try:
        import yara  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_key(files: list[Path]) -> str:
    digest = hashlib.sha256(f"mailwarden-sigs {CACHE_FORMAT}\n".encode())
    # a set compiled without yara-python records its YARA rules as skipped: installing it
    # must give a new key, not the skip again
    digest.update(b"yara\n" if _yara_available() else b"no yara\n")
    for file in files:
        digest.update(str(file.resolve()).encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:32]


def _compile_yara(paths: list[str]) -> Any:
    import yara

    return yara.compile(filepaths={f"f{i}": p for i, p in enumerate(paths)})


def load_signatures(paths: Iterable[Path], cache_dir: Path | None = None) -> SignatureSet:
    """Read signature files (directories are searched recursively) into one SignatureSet.

    With ``cache_dir`` the compiled database is kept there as ``<key>.mwsig`` (plus a
    ``.meta`` file), where the key is a hash of the sources' paths and contents: it is
    rebuilt only when they change, and memory-mapped otherwise.
    """
    files = _files(paths)
    key = _cache_key(files) if cache_dir is not None else ""
    if cache_dir is not None:
        cached = _load_cached(cache_dir, key)
        if cached is not None:
            _log_report(cached)
            return cached
    plan = _Plan()
    _read(files, plan)
    sets = plan.sets
    if sets.yara_files and not _yara_available():
        sets.skipped["YARA rules: yara-python is not installed"] += len(sets.yara_files)
        sets.yara_files = []
    blob = _compile(plan)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        blob_path = cache_dir / f"{key}.mwsig"
        meta = _Meta(
            CACHE_FORMAT,
            sets.names,
            sets.ldb,
            sets.hashes,
            dict(sets.skipped),
            sets.sources,
            sets.yara_files,
            sets.sections,
            sets.imports,
        )
        SignatureDB.write(blob, blob_path)
        SignatureDB.write(msgspec.json.encode(meta), cache_dir / f"{key}.meta")
        sets.db = SignatureDB.load(blob_path)
        sets.db_path = str(blob_path)
    else:
        sets.db = SignatureDB.from_bytes(blob)
    sets._index()
    _log_report(sets)
    return sets


def _load_cached(cache_dir: Path, key: str) -> SignatureSet | None:
    blob_path, meta_path = cache_dir / f"{key}.mwsig", cache_dir / f"{key}.meta"
    if not (blob_path.exists() and meta_path.exists()):
        return None
    try:
        meta = msgspec.json.decode(meta_path.read_bytes(), type=_Meta)
        if meta.format != CACHE_FORMAT:
            return None
        db = SignatureDB.load(blob_path)
    except (ValueError, OSError, msgspec.DecodeError) as exc:
        # another build's or a damaged file: compile again and overwrite it
        log.info("signature cache %s not usable (%s); compiling", blob_path, exc)
        return None
    sets = SignatureSet(
        names=meta.names,
        ldb=meta.ldb,
        hashes=meta.hashes,
        skipped=Counter(meta.skipped),
        sources=meta.sources,
        yara_files=meta.yara,
        sections=meta.sections or {"md5": {}, "sha1": {}, "sha256": {}},
        imports=meta.imports or {"md5": {}, "sha1": {}, "sha256": {}},
        db=db,
        db_path=str(blob_path),
        from_cache=True,
    )
    sets._index()
    return sets


def _log_report(sets: SignatureSet) -> None:
    if sets.skipped:
        log.warning("%s", sets.report())
    else:
        log.info("%s", sets.report())


def _pe_parts(data: bytes | memoryview) -> tuple[list[bytes], bytes] | None:
    """Each section's raw data and the import string (``lib.func,...`` as ClamAV and
    pefile's imphash make it) of a PE file; ``None`` for anything else."""
    head = bytes(data[:1024])
    if head[:2] != b"MZ" or 1 not in detect_targets(data):
        return None
    try:
        import pefile
    except ImportError:
        return None
    try:
        pe = pefile.PE(data=bytes(data), fast_load=True)
        pe.parse_data_directories(
            directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]]
        )
    except pefile.PEFormatError:
        return None
    raw = bytes(data)
    sections = [raw[s.PointerToRawData : s.PointerToRawData + s.SizeOfRawData] for s in pe.sections]
    names: list[str] = []
    for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", []):
        lib = entry.dll.decode("latin-1").lower()
        for ext in (".ocx", ".sys", ".dll"):
            lib = lib.removesuffix(ext)
        for imp in entry.imports:
            func = imp.name.decode("latin-1").lower() if imp.name else f"ord{imp.ordinal}"
            names.append(f"{lib}.{func}")
    return sections, ",".join(names).encode()

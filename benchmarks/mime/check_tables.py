"""Check that this build parses every corpus file exactly as another build does.

Usage: python benchmarks/mime/check_tables.py --baseline DIR

DIR holds another build's ``mailwarden_native`` package (see ``bench_parse.py`` for how
to build one from a commit).  For every file of ``mime``, ``mime-expected``,
``security-repro``, ``av`` and ``spam`` under ``$MAILWARDEN_CORPUS`` it compares:

- the C tables: the words ``mw_parse_table`` writes (message flags, part records with
  every field, header records), byte for byte;
- every part's Python view: offsets, kind, flags, content type, filename, charset,
  disposition, transfer encoding, parameters, headers, children, and the SHA-256 of the
  decoded body, plus the message's flags after decoding.

Prints the first differences and exits 1 if there is any.  This is the check a
change to the parser or to its binding runs before it is merged: speed work must leave
both unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_parse import ROOT, SKIP_NAMES, load_baseline

import mailwarden_native
import mailwarden_native._core as core

SUBDIRS = ("mime", "mime-expected", "security-repro", "av", "spam")
TABLE_WORDS = 1 << 22


def corpus_files() -> list[Path]:
    base = Path(os.environ.get("MAILWARDEN_CORPUS") or ROOT.parent / "shared" / "corpus")
    files = [
        p
        for sub in SUBDIRS
        for p in sorted((base / sub).rglob("*"))
        if p.is_file() and p.name not in SKIP_NAMES and p.suffix not in {".json", ".md"}
    ]
    if not files:
        sys.exit(f"no corpus files under {base} (set MAILWARDEN_CORPUS)")
    return files


def c_table(mod: Any, raw: bytes) -> bytes:
    ffi, lib = mod.ffi, mod.lib
    out = ffi.new("int64_t[]", TABLE_WORDS)
    need = lib.mw_parse_table(raw, len(raw), ffi.NULL, out, TABLE_WORDS)
    if need < 0 or need > TABLE_WORDS:
        return f"status {need}".encode()
    return bytes(ffi.buffer(out, need * 8))


def views(msg: Any) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    # Leaves first, as a walk does (parts made by leaves(), then the rest by parts).
    for p in [*msg.leaves(), *msg.parts]:
        out.append(
            (
                p.index,
                p.parent,
                p.depth,
                p.header_start,
                p.header_end,
                p.body_start,
                p.body_end,
                p.is_multipart,
                p.is_message,
                p.is_leaf,
                int(p.flags),
                p.content_type,
                p.filename,
                p.charset,
                p.disposition,
                p.transfer_encoding,
                sorted(p.params.items()),
                p.headers,
                p.header("content-type"),
                p.header_all("received"),
                p.children,
                bytes(p.body_raw) == msg.raw[p.body_start : p.body_end],
                hashlib.sha256(p.decoded()).hexdigest(),
            )
        )
    out.append((int(msg.flags), msg.subject, msg.message_id))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--baseline", required=True, metavar="DIR", help="the other build")
    args = ap.parse_args()
    old_parse = load_baseline(args.baseline)
    old_core = sys.modules["mailwarden_native_baseline._core"]
    files = corpus_files()
    bad = 0
    for path in files:
        raw = path.read_bytes()
        problems = []
        if c_table(core, raw) != c_table(old_core, raw):
            problems.append("C tables differ")
        new_v, old_v = views(mailwarden_native.parse(raw)), views(old_parse(raw))
        if new_v != old_v:
            first = next(
                (i for i, (a, b) in enumerate(zip(new_v, old_v, strict=False)) if a != b),
                min(len(new_v), len(old_v)),
            )
            problems.append(f"views differ from entry {first}: {new_v[first : first + 1]}")
        if problems:
            bad += 1
            if bad <= 10:
                print(f"{path}: {'; '.join(problems)}"[:2000])
    print(f"{len(files)} files, {bad} differ ({', '.join(SUBDIRS)})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

"""Parse every corpus message and compare its shape with Python's email package.

Exceptions and out-of-bounds offsets fail the test.  Disagreements with
``email`` (policy compat32) in leaf count or attachment filenames are only
printed for now: the two parsers legitimately differ on broken mail, and the
expected-structure sets will become hard assertions later.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from mailwarden_native import ParsedMessage, parse
from tests.conftest import corpus_dir, need

SKIP_NAMES = {"LICENSE", "MIT-LICENSE", "COPYING"}
SKIP_SUFFIXES = {".json", ".md"}


def message_files(*subdirs: str) -> list[Path]:
    out: list[Path] = []
    for sub in subdirs:
        base = corpus_dir() / sub
        need(base.is_dir(), f"corpus directory {base} not found (set MAILWARDEN_CORPUS)")
        out += sorted(
            p
            for p in base.rglob("*")
            if p.is_file() and p.name not in SKIP_NAMES and p.suffix not in SKIP_SUFFIXES
        )
    return out


def check_bounds(msg: ParsedMessage) -> None:
    n = len(msg.raw)
    for p in msg.parts:
        assert 0 <= p.header_start <= p.header_end <= p.body_start <= p.body_end <= n, p
        if p.parent >= 0:
            parent = msg.parts[p.parent]
            assert parent.body_start <= p.header_start and p.body_end <= parent.body_end, p


def email_shape(raw: bytes) -> tuple[int, set[str]]:
    em = email.message_from_bytes(raw, policy=email.policy.compat32)
    leaves = 0
    names: set[str] = set()
    for part in em.walk():
        if not part.is_multipart():
            leaves += 1
        name = part.get_filename()
        if name:
            names.add(str(name))
    return leaves, names


def test_corpus_parses_and_shape_vs_email() -> None:
    files = message_files("mime", "mime-expected")
    assert files, "no corpus messages found"
    disagreements: list[str] = []
    for path in files:
        raw = path.read_bytes()
        msg = parse(raw)
        check_bounds(msg)
        for leaf in msg.leaves():
            leaf.decoded()
        ours = (len(list(msg.leaves())), {p.filename for p in msg.parts if p.filename})
        theirs = email_shape(raw)
        if ours != theirs:
            rel = path.relative_to(corpus_dir())
            disagreements.append(
                f"{rel}: leaves {ours[0]} vs email {theirs[0]}"
                + (
                    f"; names only ours {sorted(ours[1] - theirs[1])}"
                    f" only email {sorted(theirs[1] - ours[1])}"
                    if ours[1] != theirs[1]
                    else ""
                )
            )
    print(f"\n{len(files)} corpus messages parsed; {len(disagreements)} differ from email:")
    for line in disagreements:
        print("  " + line)

"""The native signature engine: ClamAV body-signature semantics, streaming, the database file."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import (
    OFF_ABS,
    OFF_ANY,
    OFF_EOF,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
)


def compile_db(*sigs: str | tuple[str, dict[str, int]]) -> SignatureDB:
    comp = SignatureCompiler()
    for sig in sigs:
        if isinstance(sig, tuple):
            comp.add(sig[0], **sig[1])
        else:
            comp.add(sig)
    return SignatureDB.from_bytes(comp.build())


def first(pattern: str, data: bytes, **opts: int) -> int | None:
    """Offset of the first match of one signature in data, or None."""
    hits = compile_db((pattern, opts)).scan(data, targets=range(32))
    return hits[0].offset if hits else None


H = bytes.hex
# (signature, data, expected start of the first match or None)
SEMANTICS = [
    # plain hex, case-insensitive hex digits
    ("41424344", b"xxABCDxx", 2),
    ("41424344", b"xxABCxDx", None),
    ("4142434A", b"ABCJ", 0),
    # ?? any byte; nibble wildcards
    ("4142??4344", b"-AB\x00CD", 1),
    ("4142??4344", b"-ABCD", None),
    ("41424?43", b"ABD\x4fC", None),
    ("41424?4344", b"AB\x4fCD", 0),
    ("41424?4344", b"AB\x5fCD", None),
    ("4142?f4344", b"AB\x3fCD", 0),
    ("4142?f4344", b"AB\x3eCD", None),
    # {n}: exactly n bytes
    ("4142{2}4344", b"ABxyCD", 0),
    ("4142{2}4344", b"ABxCD", None),
    ("4142{2}4344", b"ABxyzCD", None),
    ("4142{100}4344", b"AB" + b"x" * 100 + b"CD", 0),
    ("4142{100}4344", b"AB" + b"x" * 99 + b"CD", None),
    # {n-m}, {-n}, {n-}, [n-m]
    ("4142{1-3}4344", b"ABCD", None),
    ("4142{1-3}4344", b"ABxCD", 0),
    ("4142{1-3}4344", b"ABxyzCD", 0),
    ("4142{1-3}4344", b"ABxyzwCD", None),
    ("4142{-2}4344", b"ABCD", 0),
    ("4142{-2}4344", b"ABxxCD", 0),
    ("4142{-2}4344", b"ABxxxCD", None),
    ("4142{3-}4344", b"ABxxCD", None),
    ("4142{3-}4344", b"AB" + b"x" * 5000 + b"CD", 0),
    ("4142[1-2]4344", b"ABxCD", 0),
    ("4142[1-2]4344", b"ABxxxCD", None),
    # * any number of bytes, in order only
    ("4142*4344", b"ABCD", 0),
    ("4142*4344", b"AB" + b"." * 100000 + b"CD", 0),
    ("4142*4344", b"CDAB", None),
    ("4142*4344*4546", b"AB..CD..EF", 0),
    ("4142*4344*4546", b"AB..EF..CD", None),
    # parts may not overlap: AB*BC needs ABBC or more
    ("4142*4243", b"ABC", None),
    ("4142*4243", b"ABBC", 0),
    # alternatives, single and multi-byte; negations
    ("4142(43|44)4546", b"ABDEF", 0),
    ("4142(43|44)4546", b"ABCEF", 0),
    ("4142(43|44)4546", b"ABXEF", None),
    ("4142(4344|5859)4546", b"..ABXYEF", 2),
    ("4142(4344|5859)4546", b"ABXDEF", None),
    ("4142!(43|44)4546", b"ABXEF", 0),
    ("4142!(43|44)4546", b"ABCEF", None),
    ("4142!(4344|5859)4546", b"ABCYEF", 0),
    ("4142!(4344|5859)4546", b"ABCDEF", None),
    ("(41|42)(43|44)(45|46)", b"..BDF", 2),
    ("(4?|5?)434445", b"\x5aCDE", 0),
    # the first match is reported, its count is every occurrence
    ("4142", b"ABAB.AB", 0),
    # a signature found across the end of one part and the start of the next (no overlap)
    ("4142{-3}4344*4546", b"AB..CD.EF", 0),
    # a 3-byte part (anchored on 2 bytes) before a longer one: parts are seen in order
    ("424344*45464748", b"xxABCDpyEFGHzz", 3),
    ("4142{-3}4344*4546", b"AB....CD.EF", None),
]


@pytest.mark.parametrize(("sig", "data", "expected"), SEMANTICS)
def test_semantics(sig: str, data: bytes, expected: int | None) -> None:
    assert first(sig, data) == expected
    # the same result when the object arrives one byte at a time
    db = compile_db(sig)
    sc = db.scanner()
    for i in range(len(data)):
        sc.feed(data[i : i + 1])
    hits = sc.finish()
    assert (hits[0].offset if hits else None) == expected


OFFSETS = [
    # (kind, offset, shift, data, expected)
    (OFF_ANY, 0, 0, b"..ABCD", 2),
    (OFF_ABS, 2, 0, b"..ABCD", 2),
    (OFF_ABS, 1, 0, b"..ABCD", None),
    (OFF_ABS, 0, 1, b"..ABCD", None),
    (OFF_ABS, 0, 2, b"..ABCD", 2),
    (OFF_ABS, 0, 0, b"ABCD..ABCD", 0),
    (OFF_EOF, 4, 0, b"......ABCD", 6),
    (OFF_EOF, 5, 0, b"......ABCD", None),
    (OFF_EOF, 6, 2, b"......ABCD", 6),
    (OFF_EOF, 6, 1, b"......ABCD", None),
    (OFF_EOF, 4, 0, b"ABCD", 0),
    (OFF_EOF, 10, 0, b"ABCD", None),
]


@pytest.mark.parametrize(("kind", "offset", "shift", "data", "expected"), OFFSETS)
def test_offsets(kind: int, offset: int, shift: int, data: bytes, expected: int | None) -> None:
    assert first("41424344", data, kind=kind, offset=offset, shift=shift) == expected
    db = compile_db(("41424344", {"kind": kind, "offset": offset, "shift": shift}))
    sc = db.scanner()
    for i in range(0, len(data), 3):
        sc.feed(data[i : i + 3])
    hits = sc.finish()
    assert (hits[0].offset if hits else None) == expected


def test_targets_apply_only_to_their_type() -> None:
    db = compile_db(("41424344", {"target": 1}), ("45464748", {"target": 0}))
    data = b"ABCDEFGH"
    assert [h.sig_id for h in db.scan(data)] == [1]
    assert sorted(h.sig_id for h in db.scan(data, targets=[1])) == [0, 1]


ERRORS = [
    ("4142434", "syntax"),
    ("41424g", "syntax"),
    ("4142{2-1}4344", "syntax"),
    ("4142{x}4344", "syntax"),
    ("{2}41424344", "syntax"),
    ("4142(43|4445)46", "different lengths"),
    ("4142(B)4344", "boundary"),
    ("41??42", "anchor"),
    ("41*42", "anchor"),
    ("4142{99999999}4344", "limit"),
    ("41" * 5000, "limit"),
    ("", "syntax"),
]


@pytest.mark.parametrize(("sig", "why"), ERRORS)
def test_compile_errors_say_why(sig: str, why: str) -> None:
    comp = SignatureCompiler()
    with pytest.raises(SignatureError, match=why):
        comp.add(sig)
    assert len(comp) == 0


def test_hits_count_every_occurrence() -> None:
    db = compile_db("41414141")
    (hit,) = db.scan(b"AAAAAA.AAAA")
    assert (hit.offset, hit.count) == (0, 4)  # overlapping occurrences count


# ------------------------------------------------------------------ properties


def naive(patterns: list[bytes], data: bytes) -> dict[int, tuple[int, int]]:
    out = {}
    for pid, p in enumerate(patterns):
        starts = [i for i in range(len(data) - len(p) + 1) if data.startswith(p, i)]
        if starts:
            out[pid] = (starts[0], len(starts))
    return out


def scan_chunked(db: SignatureDB, data: bytes, cuts: list[int]) -> dict[int, tuple[int, int]]:
    sc = db.scanner()
    at = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        sc.feed(data[at:cut])
        at = max(at, cut)
    sc.feed(data[at:])
    return {h.sig_id: (h.offset, h.count) for h in sc.finish()}


LITERAL = st.binary(min_size=2, max_size=12).map(lambda b: bytes(c % 3 + 97 for c in b))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(LITERAL, min_size=1, max_size=20, unique=True),
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_literal_sets_match_naive_search(
    patterns: list[bytes], raw: bytes, cuts: list[int]
) -> None:
    data = bytes(c % 4 + 97 for c in raw) + b"".join(patterns[:2])
    comp = SignatureCompiler()
    for p in patterns:
        comp.add(p.hex())
    db = SignatureDB.from_bytes(comp.build())
    expected = naive(patterns, data)
    assert {h.sig_id: (h.offset, h.count) for h in db.scan(data)} == expected
    assert scan_chunked(db, data, cuts) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.binary(min_size=4, max_size=40), min_size=1, max_size=30, unique=True),
    st.binary(min_size=0, max_size=2000),
)
def test_any_byte_literals_match_naive_search(patterns: list[bytes], data: bytes) -> None:
    data = data + b"".join(patterns[:5])
    comp = SignatureCompiler()
    for p in patterns:
        comp.add(p.hex())
    db = SignatureDB.from_bytes(comp.build())
    assert {h.sig_id: (h.offset, h.count) for h in db.scan(data)} == naive(patterns, data)


def _wild(draw: st.DrawFn) -> tuple[str, str]:
    """A random signature and the equivalent Python regex (parts of 3+ fixed bytes)."""
    sig, rx = [], []

    def fixed() -> None:
        lit = bytes(draw(st.lists(st.sampled_from(b"abcd"), min_size=3, max_size=5)))
        sig.append(lit.hex())
        rx.append(re.escape(lit).decode("latin-1"))

    fixed()
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["any", "range", "star", "alt", "neg"]))
        if kind == "any":
            sig.append("??")
            rx.append(".")
        elif kind == "range":
            lo = draw(st.integers(0, 3))
            hi = lo + draw(st.integers(0, 3))
            sig.append(f"{{{lo}-{hi}}}")
            rx.append(f".{{{lo},{hi}}}")
        elif kind == "star":
            sig.append("*")
            rx.append(".*")
        elif kind == "alt":
            sig.append("(61|63)")
            rx.append("[ac]")
        else:
            sig.append("!(61|62)")
            rx.append("[^ab]")
        fixed()
    return "".join(sig), "".join(rx)


@settings(max_examples=300, deadline=None)
@given(st.composite(_wild)(), st.lists(st.sampled_from(b"abcde"), max_size=120))
def test_wildcard_signatures_match_regex(sig_rx: tuple[str, str], chars: list[int]) -> None:
    sig, rx = sig_rx
    text = bytes(chars)
    m = re.search(rx.encode("latin-1"), text, re.DOTALL)
    db = compile_db(sig)
    hits = db.scan(text)
    assert (hits[0].offset if hits else None) == (m.start() if m else None), (sig, rx, text)


# ------------------------------------------------------------------ the database file


def test_database_file_is_mapped_and_equivalent(tmp_path: Path) -> None:
    comp = SignatureCompiler()
    pats = [random.Random(i).randbytes(16).hex() for i in range(500)]
    for p in pats:
        comp.add(p)
    blob = comp.build()
    path = tmp_path / "db.mwsig"
    SignatureDB.write(blob, path)
    data = b"x" * 1000 + bytes.fromhex(pats[123]) + b"y" * 10
    with SignatureDB.load(path) as mapped:
        assert mapped.info["n_sigs"] == 500
        assert [(h.sig_id, h.offset) for h in mapped.scan(data)] == [(123, 1000)]
    assert [(h.sig_id, h.offset) for h in SignatureDB.from_bytes(blob).scan(data)] == [(123, 1000)]


def test_damaged_databases_are_refused_never_crash() -> None:
    comp = SignatureCompiler()
    for sig in ("41424344*45464748", "4142(43|44)45", "41424344", "4142{2-5}4344"):
        comp.add(sig)
    comp.add("41424344", kind=OFF_EOF, offset=8)
    blob = comp.build()
    rng = random.Random(7)
    for _ in range(300):
        bad = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        if rng.random() < 0.2:
            bad = bad[: rng.randrange(len(bad))]
        try:
            db = SignatureDB.from_bytes(bytes(bad))
        except ValueError:
            continue
        db.scan(b"ABCDEFGH" * 20 + bytes(range(256)))  # a valid-looking one must scan safely
    with pytest.raises(ValueError):
        SignatureDB.from_bytes(b"MWSIGDB\x01" + b"\0" * 300)

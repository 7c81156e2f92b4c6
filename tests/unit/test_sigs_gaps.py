"""Signatures with gaps between their parts are matched exactly.

The engine remembers, per part, every place a later part may chain from: a sample padded with
repeats of a signature's first part must not push the one real predecessor out (a silent miss),
and when the memory bound is reached the scan is reported incomplete, never clean. A brute-force
reference matcher written here is the oracle for random signatures, buffers and chunkings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.testing import build_message
from mailwarden_antivirus.signatures import SignatureSet
from mailwarden_native import (
    OFF_ABS,
    OFF_ANY,
    NativeLimitError,
    SignatureCompiler,
    SignatureDB,
)
from tests.unit.test_antivirus import Run, av_findings
from tests.unit.test_sigs_engine import scan_chunked

HEAD, TAIL = b"EVIL", b"TAIL"
Hits = dict[int, tuple[int, int]]


def _db(*sigs: str, **limits: int) -> SignatureDB:
    comp = SignatureCompiler()
    for sig in sigs:
        comp.add(sig)
    return SignatureDB.from_bytes(comp.build(), **limits)


def _hits(db: SignatureDB, data: bytes) -> Hits:
    return {h.sig_id: (h.offset, h.count) for h in db.scan(data)}


# ------------------------------------------------------------------ padding with repeats


def _padded(repeats: int, uneven: bool) -> bytes:
    """HEAD at 0, TAIL 200 bytes after its end, `repeats` more HEADs packed just before TAIL.

    Only the first HEAD is at a distance the gaps below allow; every repeat ends too close to
    TAIL. Uneven: a byte between every other repeat, so that no two spacings line up."""
    pad = b"".join(HEAD + b"." * (i % 2 if uneven else 0) for i in range(repeats))
    filler = 200 - len(pad)
    assert filler >= 0
    return HEAD + b"." * filler + pad + TAIL + b"..."


@pytest.mark.parametrize("repeats", [9, 17, 40])
@pytest.mark.parametrize("uneven", [False, True], ids=["packed", "uneven"])
@pytest.mark.parametrize("gap", ["{200-300}", "{200}"], ids=["bounded", "exact"])
def test_repeats_of_the_first_part_do_not_hide_the_match(
    repeats: int, uneven: bool, gap: str
) -> None:
    db = _db(f"{HEAD.hex()}{gap}{TAIL.hex()}")
    data = _padded(repeats, uneven)
    # the repeats alone are all too close to TAIL: without the first HEAD, nothing
    assert _hits(db, b"." * len(HEAD) + data[len(HEAD) :]) == {}
    assert _hits(db, data) == {0: (0, 1)}
    for size in (1, 7, 64):
        assert scan_chunked(db, data, list(range(size, len(data), size))) == {0: (0, 1)}


def test_a_middle_part_chains_to_its_only_valid_predecessor_among_many() -> None:
    # ONE, TWO anywhere within 200 bytes, THREE exactly 64 bytes after TWO: twenty more TWOs
    # (each chained to ONE) come between the one TWO that fits and THREE.
    db = _db(f"{b'ONE'.hex()}{{0-200}}{b'TWO'.hex()}{{64}}{b'THREE'.hex()}")
    data = b"ONE" + b"TWO" + b".." + b"TWO" * 20 + b".." + b"THREE"
    assert data.index(b"THREE") == 6 + 64
    assert _hits(db, data) == {0: (0, 1)}
    assert scan_chunked(db, data, [5, 40, 69]) == {0: (0, 1)}
    assert _hits(db, data.replace(b"ONETWO", b"ONE...", 1)) == {}


# ------------------------------------------------------------------ the memory bound


def test_remembered_predecessors_over_the_limit_make_the_scan_incomplete() -> None:
    # 40 HEADs at uneven spacing inside one exact gap: each is a place TAIL may chain from.
    sig = f"{HEAD.hex()}{{200}}{TAIL.hex()}"
    data = _padded(40, uneven=True)
    assert _hits(_db(sig), data) == {0: (0, 1)}
    capped = _db(sig, max_partials=8)
    with pytest.raises(NativeLimitError):
        capped.scan(data)
    sc = capped.scanner()
    with pytest.raises(NativeLimitError):
        for at in range(0, len(data), 16):
            sc.feed(data[at : at + 16])
        sc.finish()
    # a run of evenly spaced repeats is one remembered entry, whatever its length
    packed = _padded(40, uneven=False)
    assert _hits(capped, packed) == {0: (0, 1)}
    # ...and predecessors that fell behind are forgotten: many far-apart HEADs are fine
    far = (HEAD + b"." * 400) * 100 + HEAD + b"." * 200 + TAIL
    assert _hits(capped, far) == {0: (len(far) - 208, 1)}


@pytest.mark.parametrize(
    ("limits", "status"), [({}, "infected"), ({"max_partials": 8}, "not_scanned")]
)
def test_the_antivirus_finds_a_padded_sample_or_says_it_could_not(
    tmp_path: Path, limits: dict[str, int], status: str
) -> None:
    run = Run(tmp_path / "home")
    try:
        plugin = run.runner.gateway.plugins.pm.get_plugin("antivirus")
        sets = SignatureSet(
            names=["Padded.Test"], db=_db(f"{HEAD.hex()}{{200}}{TAIL.hex()}", **limits)
        )
        sets._index()
        plugin.signatures = sets
        sample = _padded(40, uneven=True)
        outcome = run.process(build_message(attachments=[("sample.bin", sample)]))
    finally:
        run.close()
    verdict = outcome.decision.verdict
    assert verdict.antivirus.value == status, av_findings(outcome)
    assert outcome.decision.action.kind.value != "deliver"
    if status == "infected":
        assert "Padded.Test" in verdict.virus_names


# ------------------------------------------------------------------ against a reference


@dataclass(frozen=True)
class Sig:
    lits: tuple[bytes, ...]
    gaps: tuple[tuple[int, int | None], ...]  # before lits[1:]; None: unbounded
    texts: tuple[str, ...]  # each gap as written
    abs_off: tuple[int, int] | None  # (offset, shift) of an OFF_ABS signature

    def text(self) -> str:
        out = [self.lits[0].hex()]
        for lit, gap in zip(self.lits[1:], self.texts, strict=True):
            out += [gap, lit.hex()]
        return "".join(out)


def reference(sig: Sig, data: bytes) -> tuple[int, int] | None:
    """(start of the earliest match, number of places the last literal completes a match),
    by brute force over every placement of every literal."""
    occ = [
        [p for p in range(len(data) - len(lit) + 1) if data.startswith(lit, p)] for lit in sig.lits
    ]
    # best[p]: earliest start of a chain whose current literal starts at p
    best = {p: p for p in occ[0]}
    if sig.abs_off is not None:
        off, shift = sig.abs_off
        best = {p: s for p, s in best.items() if off <= p <= off + shift}
    for i in range(1, len(sig.lits)):
        lo, hi = sig.gaps[i - 1]
        prev_len = len(sig.lits[i - 1])
        nxt = {}
        for p in occ[i]:
            starts = [
                s
                for q, s in best.items()
                if q + prev_len + lo <= p and (hi is None or p <= q + prev_len + hi)
            ]
            if starts:
                nxt[p] = min(starts)
        best = nxt
    return (min(best.values()), len(best)) if best else None


ALPHABET = b"abc"
LITERAL = st.one_of(
    st.lists(st.sampled_from(ALPHABET), min_size=2, max_size=9).map(bytes),
    # periodic parts: their occurrences overlap and crowd together
    st.tuples(
        st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=2).map(bytes),
        st.integers(4, 9),
    ).map(lambda t: (t[0] * 9)[: t[1]]),
)


@st.composite
def gap_text(draw: st.DrawFn) -> tuple[tuple[int, int | None], str]:
    kind = draw(st.sampled_from(["exact", "range", "upto", "from", "star"]))
    n = draw(st.integers(0, 45))
    if kind == "exact":
        return (n, n), f"{{{n}}}"
    if kind == "range":
        m = n + draw(st.integers(0, 30))
        return (n, m), f"{{{n}-{m}}}"
    if kind == "upto":
        return (0, n), f"{{-{n}}}"
    if kind == "from":
        return (n, None), f"{{{n}-}}"
    return (0, None), "*"


@st.composite
def signature(draw: st.DrawFn) -> Sig:
    n = draw(st.integers(2, 3))
    lits = tuple(draw(LITERAL) for _ in range(n))
    gaps = [draw(gap_text()) for _ in range(n - 1)]
    abs_off = None
    if draw(st.booleans()) and draw(st.booleans()):
        abs_off = (draw(st.integers(0, 40)), draw(st.integers(0, 40)))
    return Sig(lits, tuple(g for g, _ in gaps), tuple(t for _, t in gaps), abs_off)


@st.composite
def scan_case(draw: st.DrawFn) -> tuple[list[Sig], bytes, list[int]]:
    sigs = draw(st.lists(signature(), min_size=1, max_size=4))
    pieces = [lit for s in sigs for lit in s.lits]
    # the buffer: the signatures' own literals, runs of them, among random filler
    chunks = draw(
        st.lists(
            st.one_of(
                st.sampled_from(pieces),
                st.tuples(st.sampled_from(pieces), st.integers(2, 16)).map(lambda t: t[0] * t[1]),
                st.lists(st.sampled_from(ALPHABET), max_size=12).map(bytes),
            ),
            max_size=40,
        )
    )
    data = b"".join(chunks)[:600]
    cuts = draw(st.lists(st.integers(0, 600), max_size=8))
    return sigs, data, cuts


@settings(max_examples=400, deadline=None)
@given(scan_case())
def test_gapped_signatures_match_a_brute_force_reference(
    case: tuple[list[Sig], bytes, list[int]],
) -> None:
    sigs, data, cuts = case
    comp = SignatureCompiler()
    for s in sigs:
        if s.abs_off is None:
            comp.add(s.text(), kind=OFF_ANY)
        else:
            comp.add(s.text(), kind=OFF_ABS, offset=s.abs_off[0], shift=s.abs_off[1])
    db = SignatureDB.from_bytes(comp.build())
    expected = {}
    for i, s in enumerate(sigs):
        found = reference(s, data)
        if found is not None:
            expected[i] = found
    assert _hits(db, data) == expected, [s.text() for s in sigs]
    assert scan_chunked(db, data, cuts) == expected, [s.text() for s in sigs]

"""Matcher results against a naive Python search."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import Matcher


def naive(patterns: list[bytes], data: bytes) -> list[tuple[int, int]]:
    out = []
    for pid, p in enumerate(patterns):
        start = data.find(p)
        while start >= 0:
            out.append((pid, start))
            start = data.find(p, start + 1)
    return sorted(out, key=lambda m: (m[1], m[0]))


def naive_first(patterns: list[bytes], data: bytes) -> tuple[int, int] | None:
    found = naive(patterns, data)
    if not found:
        return None
    # earliest end, then longest (smallest start), then lowest id
    pid, start = min(found, key=lambda m: (m[1] + len(patterns[m[0]]), m[1], m[0]))
    return pid, start


SMALL_ALPHABET = st.binary(min_size=1, max_size=6).map(lambda b: bytes(c % 3 + 97 for c in b))


@settings(max_examples=400, deadline=None)
@given(st.lists(SMALL_ALPHABET, min_size=1, max_size=12), st.binary(max_size=300))
def test_matches_naive_search_small_alphabet(patterns: list[bytes], raw: bytes) -> None:
    data = bytes(c % 4 + 97 for c in raw)  # dense overlaps; 'd' is in no pattern
    m = Matcher(patterns)
    assert m.scan(data) == naive(patterns, data)
    assert m.first(data) == naive_first(patterns, data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=20), st.binary(max_size=500)
)
def test_matches_naive_search_any_bytes(patterns: list[bytes], data: bytes) -> None:
    data = data + b"".join(patterns[:3])  # make some matches likely
    m = Matcher(patterns)
    assert m.scan(data) == naive(patterns, data)
    assert m.first(data) == naive_first(patterns, data)


def test_overlapping_and_duplicate_patterns() -> None:
    pats = [b"he", b"she", b"his", b"hers", b"s", b"he"]
    data = b"ushers"
    with Matcher(pats) as m:
        assert len(m) == 6
        assert m.scan(data) == naive(pats, data)
        assert (0, 2) in m.scan(data) and (5, 2) in m.scan(data)


def test_buffer_edges_and_single_bytes() -> None:
    m = Matcher([b"a", b"z", b"abc", b"yz"])
    assert m.scan(b"abcxyz") == [(0, 0), (2, 0), (3, 4), (1, 5)]
    assert m.scan(bytearray(b"a")) == [(0, 0)]
    assert m.scan(memoryview(b"zz")[1:]) == [(1, 0)]
    assert m.scan(b"") == [] and m.first(b"") is None
    assert m.first(b"..abc") == (0, 2)


def test_all_byte_values_and_many_matches() -> None:
    pats = [bytes([i]) for i in range(256)]
    data = bytes(range(256)) * 40
    m = Matcher(pats)
    res = m.scan(data)
    assert len(res) == len(data)
    assert res[:3] == [(0, 0), (1, 1), (2, 2)]


def test_errors_and_close() -> None:
    with pytest.raises(ValueError):
        Matcher([b"ok", b""])
    m = Matcher([b"x"])
    m.close()
    m.close()
    with pytest.raises(ValueError):
        m.scan(b"x")
    with pytest.raises(TypeError):
        Matcher([b"x"]).scan("x")  # type: ignore[arg-type]
    assert Matcher([]).scan(b"abc") == []

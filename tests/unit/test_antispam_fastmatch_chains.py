"""A whole-pattern repeat X{m} scanned as X (hyperscan refuses m copies of a large X, as for
SpamAssassin's __FILL_THIS_FORM_*) is tried by re only at the starts a chain of m copies can
begin at, and still answers as re on any text."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam import fastmatch
from mailwarden_antispam.fastmatch import HAVE_HYPERSCAN, PatternSet
from tests.conftest import need


@pytest.fixture(scope="module")
def hyperscan() -> None:
    """The hyperscan wheel is a dependency: without it these skip, and fail in CI."""
    need(HAVE_HYPERSCAN, "the hyperscan wheel is not installed")


def _latest_by_search(starts: list[int], ends: set[int], copies: int, width: int) -> int:
    """Every chain tried: the latest start of m links, each >= width, joined at offsets in
    both sets, the last ending in ``ends``."""
    joins = sorted(set(starts) & ends)
    best = -1
    for chain in itertools.combinations(joins, copies - 1):
        steps = list(chain)
        fits = all(b - a >= width for a, b in itertools.pairwise(steps))
        if fits and any(e - steps[-1] >= width for e in ends) and steps:
            best = max(best, steps[0] - width)
    return max(best, -1)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=10),
    st.sets(st.integers(0, 30), max_size=10),
    st.integers(2, 4),
    st.integers(1, 5),
)
def test_the_latest_chain_start_is_the_one_every_chain_allows(
    starts: list[int], ends: set[int], copies: int, width: int
) -> None:
    # Below 0: no offset can start a chain.
    latest = fastmatch._chain_start(starts, ends, copies, width)
    assert max(latest, -1) == _latest_by_search(starts, ends, copies, width)


# Copies a few characters long of several widths, words that almost chain (one character
# between them), and newlines: where a bound off by one would skip a real match.
_WORDS = ["ab", "abc", "a", "b", "c", " ", "x", "abab", "\n", "é"]
_PATTERNS = [
    r"(?:ab|abc)\s?",
    r"(?:a[bc]?|b)",
    r"(?:ab\s|c)",
    r"(?:\w{2}|x )",
    r"(?:ab(?=c)|abc|é)",
]


@pytest.mark.usefixtures("hyperscan")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_PATTERNS),
    st.integers(2, 4),
    st.sampled_from(["", ",6", ","]),
    st.lists(st.lists(st.sampled_from(_WORDS), max_size=16), min_size=1, max_size=6),
)
def test_a_repeat_scanned_as_one_copy_answers_as_re(
    copy: str, copies: int, upper: str, texts: list[list[str]]
) -> None:
    pattern = re.compile(f"(?:{copy}){{{copies}{upper}}}")
    real = fastmatch._compile
    whole = f"{{{copies}}}".encode()

    def refuse_the_whole(chosen: dict[int, tuple[object, bool]]) -> object:
        if any(r.expression.endswith(whole) for r, _loose in chosen.values()):  # type: ignore[attr-defined]
            return None
        return real(chosen)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastmatch, "_compile", refuse_the_whole)
        patterns = PatternSet([pattern])
    assert patterns._copies == {0: copies}
    for words in texts:
        text = "".join(words)
        assert patterns.confirmed(text) == ([0] if pattern.search(text) else []), text

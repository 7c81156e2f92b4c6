"""Rules answered by an exact test instead of hyperscan (plugins/mailwarden_antispam/shapes.py)
give re's answer on any text, and a third party's rule of the same shape is answered so too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam import shapes
from mailwarden_antispam.fastmatch import HAVE_HYPERSCAN, PatternSet
from mailwarden_antispam.rules import RuleTargets, load_rules
from tests.conftest import need


@pytest.fixture(scope="module")
def hyperscan() -> None:
    """The hyperscan wheel is a dependency: without it these skip, and fail in CI."""
    need(HAVE_HYPERSCAN, "the hyperscan wheel is not installed")


# Every excluded set the recogniser takes, with the characters around them (CR without LF,
# tabs, non-ASCII letters and spaces) that a chunk walk could get wrong.
_EXCLUDED = ["\n", "\r\n", "\n\t", ".", "\n\x00", "-"]
_FILLER = "ab \t\r\n.-\x00\xe9\u2028\u4e2d"


def _source(excluded: str, anchored: bool, run: int, lazy: bool, upper: int | None) -> str:
    item = "." if excluded == "." else "[^" + re.escape(excluded) + "]"
    bound = f"{{{run}}}" if upper is None else f"{{{run},{upper}}}"
    return ("^" if anchored else "") + item + bound + ("?" if lazy else "")


@st.composite
def _texts(draw: st.DrawFn, run: int) -> str:
    """Pieces of runs near ``run`` long (either side of it) with short stretches of anything
    between them, so runs end just short of, at, and just past the length asked."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        length = draw(st.sampled_from([0, 1, run // 2, run - 2, run - 1, run, run + 1, 2 * run]))
        pieces.append(draw(st.sampled_from("xyé")) * length)
        pieces.append(draw(st.text(_FILLER, max_size=4)))
    return "".join(pieces)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_EXCLUDED),
    st.booleans(),
    st.sampled_from([64, 65, 100, 127]),
    st.booleans(),
    st.sampled_from([None, 130, 500]),
    st.data(),
)
def test_a_long_run_rule_answers_as_re_on_any_text(
    excluded: str, anchored: bool, run: int, lazy: bool, upper: int | None, data: st.DataObject
) -> None:
    flags = re.MULTILINE if anchored else 0
    pattern = re.compile(_source(excluded, anchored, run, lazy, upper), flags)
    test = shapes.recognise(pattern)
    if anchored and "\n" not in excluded and excluded != ".":  # "." is all but a newline
        assert test is None  # a match may span lines: left to hyperscan
        return
    assert test is not None
    text = data.draw(_texts(run))
    assert test(text) == (pattern.search(text) is not None), (pattern.pattern, text)


@pytest.mark.parametrize(
    ("source", "flags"),
    [
        (r"^[a-z]{100}", re.MULTILINE),  # a class of what is taken, not of what is not
        (r"^[^\r\n]{998}x", re.MULTILINE),  # something after the run
        (r"^[^\r\n]{998}", 0),  # ^ is the text's start only
        (r"[^k]{100}", re.IGNORECASE),  # folding adds the Kelvin sign to what is excluded
        (r"[^\r\n]{20}", re.MULTILINE),  # short: hyperscan's own repeat is cheap
        (r"[^\r\n\t ]{100}", 0),  # four excluded: a find each per chunk costs more
        (r".{100}", re.DOTALL),  # excludes nothing: any text that long
        (r"(?:ab){100}", 0),
    ],
)
def test_patterns_of_other_shapes_are_not_taken(source: str, flags: int) -> None:
    assert shapes.recognise(re.compile(source, flags)) is None


@pytest.mark.usefixtures("hyperscan")
def test_a_pattern_set_answers_a_shaped_pattern_beside_its_database_as_re() -> None:
    patterns = [
        re.compile(r"^[^\r\n]{300}", re.MULTILINE),
        re.compile(r"hello"),
        re.compile(r"[^\n]{120}"),
    ]
    matched = PatternSet(patterns, cache=None)
    assert matched.shaped == frozenset({0, 2})
    assert not matched.rejected
    texts = [
        "",
        "hello",
        "x" * 299 + "\nhello",
        "x" * 300,
        "ab\r" + "y" * 400,
        "hello\n" + "z" * 120,
        "\u4e2d" * 301,
    ]
    for text in texts:
        expected = sorted(i for i, p in enumerate(patterns) if p.search(text))
        assert sorted(matched.confirmed(text)) == expected, text


@pytest.mark.usefixtures("hyperscan")
def test_a_third_party_long_line_rule_takes_the_exact_test_and_hits_as_re(tmp_path: Path) -> None:
    rules_file = tmp_path / "local.cf"
    rules_file.write_text(
        "full     LOCAL_WIDE_LINE   /^[^\\r\\n]{200}/m\n"
        "score    LOCAL_WIDE_LINE   1.0\n"
        "body     LOCAL_WORD        /unsubscribe/i\n"
        "score    LOCAL_WORD        1.0\n"
    )
    ruleset = load_rules([rules_file], cache=tmp_path / "cache")
    patterns, rules = ruleset._matching.fast["full"]
    assert [rules[i].name for i in patterns.shaped] == ["LOCAL_WIDE_LINE"]

    def hits(full: str) -> set[str]:
        targets = RuleTargets(headers={}, body="", rawbody="", uris=[], full=full)
        return {rule.name for rule in ruleset.match(targets)}

    head = "Subject: hi\r\n\r\n"
    assert hits(head + "a" * 199 + "\r\nb") == set()
    assert hits(head + "a" * 200 + "\r\nb") == {"LOCAL_WIDE_LINE"}
    # A CR inside the line ends the run a line start begins, as in re.
    assert hits(head + "a\r" + "a" * 300 + "\r\n") == set()

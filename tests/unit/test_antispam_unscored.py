"""A rule scored 0 that no meta names is not run (SpamAssassin: "a score of 0 disables the
rule"): its hit could change no verdict, and the stock set's score set 0 turns about 150 of
its regex rules off so. `antispam fit` still runs it: a rule scored 0 today may earn a score."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden_antispam import fit as fitting
from mailwarden_antispam.rules import RuleTargets, load_rules
from tests.conftest import make_message

RULES = """
body   ZERO_WORD   /zeroword/
score  ZERO_WORD   0
header ZERO_SUBJ   Subject =~ /zerosubject/
score  ZERO_SUBJ   0
body   READ_ZERO   /readword/
score  READ_ZERO   0
meta   READS_IT    READ_ZERO
score  READS_IT    2
body   SCORED      /scoredword/
score  SCORED      1
"""


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_a_zero_scored_rule_no_meta_names_is_not_run(tmp_path: Path, engine: str) -> None:
    rules = tmp_path / "zero.cf"
    rules.write_text(RULES)
    targets = RuleTargets(
        headers={},
        body="zeroword readword scoredword",
        rawbody="",
        uris=[],
        full="",
    )
    off = load_rules([rules], engine=engine, cache=tmp_path / "cache")
    assert off.disabled == {"ZERO_WORD", "ZERO_SUBJ"}
    # A zero-scored rule a meta names still runs, so the meta still hits.
    assert {r.name for r in off.match(targets)} == {"READ_ZERO", "READS_IT", "SCORED"}
    every = load_rules([rules], engine=engine, cache=tmp_path / "cache", unscored=True)
    assert every.disabled == frozenset()
    assert {r.name for r in every.match(targets)} == {
        "ZERO_WORD",
        "READ_ZERO",
        "READS_IT",
        "SCORED",
    }


def test_fitting_sees_the_hits_of_zero_scored_rules(tmp_path: Path) -> None:
    rules = tmp_path / "zero.cf"
    rules.write_text(RULES)
    sample = tmp_path / "one.eml"
    sample.write_bytes(make_message(subject="zerosubject", body="zeroword scoredword\n"))
    hits, _nice, _rules = fitting.rule_hits([fitting.Sample(sample, "spam")], [str(rules)])
    assert {"ZERO_WORD", "ZERO_SUBJ", "SCORED"} <= hits[0]

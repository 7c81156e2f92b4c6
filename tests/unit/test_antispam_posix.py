"""Perl's POSIX classes inside a bracket expression (``[[:xdigit:]]``, ``[^[:punct:]\\d]``).

SpamAssassin's stock rules use them (``__GROUPSIO_MSGID``, ``__MCRSFT_MSGID``,
``SCC_SPECIAL_GUID``, ``__FROM_FULL_NAME``). Python's ``re`` has none: it read
``[[:xdigit:]]+`` as one of ``[:xdigt`` followed by a literal ``]``, so those rules could not
hit what SpamAssassin hits. A rule loaded here must match what it matches in Perl."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden_antispam.rules import RuleTargets, load_rules, perl_regex

# Perl's definitions for ASCII text, written from the string module and str's predicates
# rather than from the translation under test.
PERL = {
    "alpha": set(string.ascii_letters),
    "digit": set(string.digits),
    "alnum": set(string.ascii_letters + string.digits),
    "xdigit": set(string.hexdigits),
    "upper": set(string.ascii_uppercase),
    "lower": set(string.ascii_lowercase),
    "word": set(string.ascii_letters + string.digits + "_"),
    "space": set(" \t\n\r\f\v"),
    "blank": set(" \t"),
    "cntrl": {chr(c) for c in range(32)} | {"\x7f"},
    "punct": set(string.punctuation),
    "print": {chr(c) for c in range(32, 127)},
    "graph": {chr(c) for c in range(33, 127)},
}


@given(
    name=st.sampled_from(sorted(PERL)),
    negated=st.booleans(),
    char=st.characters(max_codepoint=127),
)
def test_each_posix_class_matches_what_perl_matches(name: str, negated: bool, char: str) -> None:
    pattern, _literal, _nocase = perl_regex(f"/^[{'^' if negated else ''}[:{name}:]]$/")
    assert (pattern.match(char) is not None) == ((char in PERL[name]) != negated)


@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=12))
def test_classes_mix_with_ranges_escapes_and_other_posix_classes(text: str) -> None:
    # __FROM_FULL_NAME's first class: not a-z, punctuation, a control, a digit or a space.
    pattern, _literal, _nocase = perl_regex(r"/^[^a-z[:punct:][:cntrl:]\d\s]+$/")
    refused = PERL["punct"] | PERL["cntrl"] | PERL["digit"] | set(string.ascii_lowercase)
    expected = bool(text) and all(c not in refused and not c.isspace() for c in text)
    assert (pattern.match(text) is not None) == expected


def test_an_unknown_or_negated_posix_class_is_refused_not_misread() -> None:
    for text in (r"/[[:nothing:]]/", r"/[[:^alpha:]]/"):
        with pytest.raises(ValueError, match="POSIX class"):
            perl_regex(text)


@pytest.mark.parametrize("engine", ["hyperscan", "re"])
def test_stock_rules_with_posix_classes_hit_in_both_engines(tmp_path: Path, engine: str) -> None:
    rules = tmp_path / "posix.cf"
    rules.write_text(
        "header GROUPSIO_MSGID  Message-Id =~ /^<[[:xdigit:]]+\\.[[:xdigit:]]+\\@groups.io>$/m\n"
        "score  GROUPSIO_MSGID  1\n"
        "rawbody SPECIAL_GUID   /^[[:xdigit:]]{8}-[[:xdigit:]]{4}-([[:xdigit:]]{3})-\\1-"
        "[[:xdigit:]]{12}$/m\n"
        "score  SPECIAL_GUID    1\n"
    )
    ruleset = load_rules([rules], engine=engine, cache=tmp_path / "cache")

    def hits(message_id: str, rawbody: str) -> set[str]:
        targets = RuleTargets(
            headers={"message-id": [message_id]}, body="", rawbody=rawbody, uris=[], full=""
        )
        return {r.name for r in ruleset.match(targets)}

    guid = "0a1b2c3d-4e5f-abc-abc-0123456789ab"
    assert hits("<5f0e1a.9BC@groups.io>", f"x\n{guid}\n") == {"GROUPSIO_MSGID", "SPECIAL_GUID"}
    # Letters past f are not hexadecimal; "[:" and "x" are not members either.
    assert hits("<5g0e1a.9BC@groups.io>", "0a1b2c3d-4e5f-abc-abd-0123456789ab\n") == set()
    assert hits("<[:x].[:x]@groups.io>", "x") == set()

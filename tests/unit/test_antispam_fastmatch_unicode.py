"""Regex rules through hyperscan on non-ASCII text: exact, so ``re`` need not confirm them.

A text is scanned with each non-ASCII character as the one byte of its class in the pattern
set's alphabet (plugins/mailwarden_antispam/fastmatch.py, ``Alphabet``). Checked here on
random Unicode text: the bytes line up one character to one byte; characters sharing a byte
answer every item of the set alike; and where a rewrite says it is exact for a text (nothing
loosened, none of its ambiguous bytes in the text), hyperscan's answer is ``re``'s, and the
engine's confirmed answer is ``re``'s on every text.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_antispam.fastmatch import Alphabet, PatternSet, Untranslatable, to_bytes_pattern

pytest.importorskip("hyperscan")

# Characters where re's classes and case folding are at their least obvious: Latin-1
# letters and spaces (\xa0, \x85), Cyrillic, CJK and its space, non-ASCII digits, the
# characters IGNORECASE equates with ASCII letters (Kelvin sign, long s, dotless i, I with
# a dot), sharp s and its capital, zero-width and line separators, emoji, a lone surrogate
# (what surrogateescape leaves of an undecodable byte) and the UTF-8 bytes SpamAssassin's
# rules name as characters (\xe2\x80\x8b).
_SPECIAL = (
    "aAkKsSiI09_ .\n\t-"
    "\xe9\xc9\xe0\xe6\xc6\xff\xb5\xaa\xa0\x85\xe2\x80\x8b\x9d\xef\xbb\xbf"
    "\u0434\u0414\u0451\u4e2d\u3000\u0663\uff11\u212a\u017f\u0131\u0130\u1e9e\xdf"
    "\u200b\u2028\U0001f600\U0001d400\udcff"
)
_TEXT = st.text(st.one_of(st.sampled_from(_SPECIAL), st.characters()), max_size=30)

_ATOMS = [
    r"\w",
    r"\W",
    r"\s",
    r"\S",
    r"\d",
    r"\D",
    ".",
    "a",
    "k",
    "s",
    "i",
    "\xe9",
    "\xc9",
    "\xdf",
    "\u0434",
    "\u212a",
    "\u200b",
    "\U0001f600",
    "\xe2\x80\x8b",
    "[\xe0-\xe6]",
    "[\x80-\xff]",
    "[^\x00-\x7f]",
    "[^a\xe9]",
    "[^\\s\\d]",
    "[\\w\u0400-\u04ff]",
    "[a-z]",
    r"\b",
]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        atom = draw(st.sampled_from(_ATOMS))
        if atom != r"\b":
            atom += draw(st.sampled_from(["", "", "+", "{2}", "{1,3}", "?"]))
        parts.append(atom)
    return "".join(parts)


_FLAGS = st.sampled_from([0, re.I, re.A, re.I | re.A, re.S, re.M])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_patterns(), min_size=1, max_size=4), _FLAGS, st.lists(_TEXT, min_size=1, max_size=5)
)
def test_random_unicode_text_gives_re_s_hits_without_re_where_the_rewrite_is_exact(
    sources: list[str], flags: int, texts: list[str]
) -> None:
    patterns = [re.compile(source, flags) for source in sources]
    compiled = PatternSet(patterns)
    if not compiled.active:
        return
    for text in texts:
        data = compiled.encode(text)
        reported = compiled.scan(data)
        expected = {i for i, p in enumerate(patterns) if p.search(text)}
        # The engine's answer is re's on any text (confirmation where not exact).
        assert set(compiled.confirmed(text)) == expected - compiled.rejected, (sources, text)
        for index in range(len(patterns)):
            if index in compiled.rejected:
                continue
            assert index in reported or index not in expected, (sources[index], text)
            if compiled.exact[index] and compiled.ambiguous[index].isdisjoint(data):
                assert (index in reported) == (index in expected), (sources[index], flags, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=6), _FLAGS, _TEXT)
def test_one_character_is_one_byte_and_alike_bytes_answer_alike(
    atoms: list[str], flags: int, text: str
) -> None:
    alphabet = Alphabet.for_patterns([re.compile("|".join(atoms), flags)])
    data = alphabet.encode(text)
    assert len(data) == len(text)
    assert data == b"".join(alphabet.encode(c) for c in text)
    for char, byte in zip(text, data, strict=True):
        if char.isascii():
            assert byte == ord(char)
            continue
        assert byte >= 0x80
        # Each character answers every item of the patterns as its class's representative
        # does: what makes the rewrite exact.
        other = alphabet.representatives[byte - 0x80]
        for item in {a for a in atoms if a != r"\b"} | {r"\w", r"\s", r"\d"}:
            singles = [item] if item.startswith(("[", "\\")) else list(item)
            for single in singles:
                one = re.compile(single, flags & (re.I | re.A | re.S))
                assert bool(one.fullmatch(char)) == bool(one.fullmatch(other)), (
                    single,
                    flags,
                    char,
                    other,
                )


def test_named_non_ascii_characters_are_exact_and_not_any_three_characters() -> None:
    # SpamAssassin's __UNICODE_OBFU_ZW names "\xe2\x80\x8b" (three characters, as the
    # rule's Python form reads it); scanned as "any three non-ASCII characters" it was
    # reported on every Cyrillic word and confirmed by re each time.
    zero_width = re.compile("\xe2\x80[\x8b\x8c\x8d]")
    patterns = PatternSet(
        [zero_width, re.compile(r"\w{3}\s\d"), re.compile("\\b\u0441\u0447\u0451\u0442\\b", re.I)]
    )
    # "Invoice for the meeting: invoice 3 and budget", in Russian.
    cyrillic = (
        "\u0421\u0447\u0451\u0442 \u0437\u0430 \u0432\u0441\u0442\u0440\u0435\u0447\u0443: "
        "\u043e\u0442\u0447\u0451\u0442 3 \u0438 \u0431\u044e\u0434\u0436\u0435\u0442"
    )
    data = patterns.encode(cyrillic)
    assert 0 not in patterns.scan(data)
    assert patterns.scan(data) == {1, 2}
    assert all(patterns.exact[i] and patterns.ambiguous[i].isdisjoint(data) for i in (1, 2))
    assert sorted(patterns.confirmed(cyrillic)) == [1, 2]
    assert patterns.confirmed("a\xe2\x80\x8bb") == [0]
    assert patterns.confirmed("\u0434\u0434\u0434 \u0663") == [1]  # Arabic-Indic three is \d


def test_case_insensitive_non_ascii_literals_find_their_other_case() -> None:
    patterns = PatternSet(
        [re.compile("caf\xe9", re.I), re.compile("stra\xdfe"), re.compile("ok", re.I)]
    )
    assert patterns.confirmed("CAF\xc9 au lait") == [0]
    assert patterns.scan(patterns.encode("CAF\xc9 au lait")) == {0}
    assert patterns.confirmed("strasse") == []
    # Kelvin sign is "k" to re.IGNORECASE: its own byte, taken by [Kk...].
    assert patterns.scan(patterns.encode("O\u212a")) == {2}
    assert patterns.scan(patterns.encode("O\u0138")) == set()


def test_ascii_flagged_patterns_go_to_hyperscan_and_answer_as_re() -> None:
    ascii_word = re.compile(r"\bcaf\w\b", re.ASCII)
    patterns = PatternSet([ascii_word])
    assert patterns.rejected == set()
    assert patterns.confirmed("un cafe noir") == [0]
    assert patterns.confirmed("un caf\xe9 noir") == []  # \w is ASCII only: é is not one
    assert patterns.confirmed("cafx\xe9") == [0]  # and \b holds before it
    rewrite = to_bytes_pattern(ascii_word)
    assert rewrite.exact_on_ascii and not rewrite.ambiguous


def test_more_named_characters_than_bytes_still_answer_as_re() -> None:
    # 200 named characters do not fit 128 bytes: the least used share classes and their
    # patterns are confirmed where those classes occur.
    sources = [f"x{chr(0x100 + i)}y" for i in range(200)]
    patterns = PatternSet([re.compile(s) for s in sources])
    assert patterns.alphabet is not None and patterns.alphabet.dropped
    for i in (0, 57, 140, 199):
        text = f"a x{chr(0x100 + i)}y b"
        assert patterns.confirmed(text) == [i]
    assert patterns.confirmed("x\u0300y \u4e2d") == []


@pytest.mark.parametrize(
    "text",
    ["", "ascii only", "caf\xe9", "\u0434\u0430 \u4e2d\u6587", "\U0001f600 a \udcff", "\u3000" * 3],
)
def test_encoding_keeps_one_byte_per_character(text: str) -> None:
    alphabet = Alphabet.for_patterns([re.compile("\xe9|\u4e2d|\U0001f600")])
    data = alphabet.encode(text)
    assert len(data) == len(text)
    assert [b < 0x80 for b in data] == [c.isascii() for c in text]


def test_an_untranslatable_pattern_is_still_refused() -> None:
    with pytest.raises(Untranslatable):
        to_bytes_pattern(re.compile(r"(\w)\1"))


@pytest.mark.parametrize("item", ["k", "s", "i", "\xe9", "\xdf", "[\xe0-\xe6]", "[^a\u03c3]"])
def test_every_character_ignorecase_equates_with_a_named_one_is_told_apart(item: str) -> None:
    # Over all of Unicode: where re.IGNORECASE answers otherwise than without it, the
    # character has a class of its own (Kelvin sign for k, long s for s, dotless i for i,
    # capital sharp s for sharp s, final sigma for sigma).
    everything = "".join(map(chr, range(0x80, 0x110000)))
    patterns = PatternSet([re.compile(item, re.I)])
    assert patterns.alphabet is not None
    with_case = re.compile(item, re.I).sub("\0", everything)
    without = re.compile(item).sub("\0", everything)
    differ = {c for c, a, b in zip(everything, with_case, without, strict=True) if a != b}
    assert differ, item
    for char in differ:
        data = patterns.encode(char)
        assert (0 in patterns.scan(data)) == bool(re.fullmatch(item, char, re.I)), (item, char)
        shared = patterns.alphabet.representatives[data[0] - 0x80]
        assert shared == char or bool(re.fullmatch(item, shared, re.I)) == bool(
            re.fullmatch(item, char, re.I)
        )

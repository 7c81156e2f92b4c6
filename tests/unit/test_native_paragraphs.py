"""``paragraph_lines`` (the C core's ``mw_paragraph_lines``) gives exactly what antispam's body
text was built with in Python: the text split into paragraphs at blank lines, each paragraph's
whitespace runs made one space, empty paragraphs dropped. The rules' ``body`` target, the Bayes
tokens and the fuzzy sketch read that text, so a difference would change what they find."""

from __future__ import annotations

import re
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_antispam.content import body_text
from mailwarden_native import _words
from mailwarden_sdk import paragraph_lines, parse

_PARAGRAPH = re.compile(r"\n\s*\n")

# Every character Python counts as whitespace, the line feed more often, and others of every
# UTF-8 length beside them (the multi-byte spaces' lead bytes start other characters too).
_SPACES = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
_OTHERS = "ab.\u00e9\u00a9\u0100\u1600\u1681\u200b\u2010\u2030\u2060\u3001\u4e00\U0001f600"
_TEXT = st.text(
    alphabet=st.sampled_from(_SPACES + "\n\n\n\r" + _OTHERS) | st.characters(),
    max_size=200,
)


def _reference(text: str) -> str:
    return "\n".join(line for p in _PARAGRAPH.split(text) if (line := " ".join(p.split())))


def test_the_c_core_knows_this_pythons_whitespace() -> None:
    # Otherwise paragraph_lines takes the regex path and the tests below would not reach C.
    assert _words._c_spaces_agree()
    assert {ord(c) for c in _SPACES} == _words._C_SPACES


@settings(max_examples=600)
@given(_TEXT)
def test_paragraph_lines_equal_the_regex_split(text: str) -> None:
    assert paragraph_lines(text) == _reference(text)


def test_paragraph_lines_of_blank_lines_spaces_and_surrogates() -> None:
    assert paragraph_lines("  Hello \r\n  world.\r\n \t\r\nNext\u2028\u2028one\u3000 ") == (
        "Hello world.\nNext one"
    )
    assert paragraph_lines("\ud800 a\n\n\n\u00a0\n b") == "\ud800 a\nb"
    assert paragraph_lines(" \n\n \t") == ""


def test_body_text_keeps_paragraphs_one_a_line() -> None:
    raw = (
        b"Subject: =?utf-8?q?Caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"First line\r\nsame  paragraph.\r\n\r\n\r\nSecond\xc2\xa0one.\r\n"
    )
    assert body_text(parse(raw)) == "Caf\u00e9\nFirst line same paragraph.\nSecond one."

"""code_point_bytes: text as one byte per character, its code point's byte in a table (the
antispam pattern sets' alphabets), computed in the C core."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_sdk import code_point_bytes

# Every code point's byte: its low byte turned by a per-plane offset, so that neighbouring
# code points, surrogates and astral characters all read distinct table entries.
_TABLE = bytes((cp * 7 + (cp >> 16) * 13) & 0xFF for cp in range(sys.maxunicode + 1))
_TEXT = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from("a\xe9\u0434\u4e2d\U0001f600\udcff\ud800\U0010ffff\x00"),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_each_character_is_its_code_point_s_byte(text: str) -> None:
    assert code_point_bytes(text, _TABLE) == bytes(_TABLE[ord(c)] for c in text)


def test_a_code_point_beyond_the_table_is_refused() -> None:
    assert code_point_bytes("ab", bytes(range(128))) == b"ab"
    with pytest.raises(ValueError):
        code_point_bytes("a\xe9", bytes(range(128)))
    assert code_point_bytes("", b"") == b""

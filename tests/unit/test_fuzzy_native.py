"""The fuzzy sketch hashed in the C core is bit-identical to the Python reference (stored
sketches of reported spam depend on the exact digests), and a part's URLs are extracted once
and cannot be changed by one caller under another."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailwarden_antispam.fuzzy import _MAX_WORDS, _WORD, SHINGLE, SKETCH, sketch, sketch_python
from mailwarden_native import parse, shingle_sketch
from mailwarden_native._core import lib

# Words of every script and length around the {2,30} cut, so the text also has runs the
# tokenizer splits, 1-letter leftovers it drops, and shingles over BLAKE2b's 128-byte block.
_letters = st.characters(blacklist_categories=("Cs",))
_vocabulary = st.sampled_from(["win", "cash", "now", "free", "Straße", "ΔΙΣ", "免费", "été", "x"])
_word = st.one_of(
    _vocabulary,
    _vocabulary,
    st.text(alphabet=st.characters(categories=("L", "N", "M")), min_size=1, max_size=70),
    st.text(alphabet=_letters, min_size=1, max_size=70),
)
_separator = st.sampled_from([" ", "  ", "\n", ", ", "_", "-", "\u00a0", "\u3000", "!? "])


@st.composite
def _texts(draw: st.DrawFn) -> str:
    words = draw(st.lists(_word, min_size=40, max_size=200))
    seps = draw(st.lists(_separator, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


def _message(text: str) -> bytes:
    return (
        b"From: a@example.org\r\nSubject: hello\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + text.encode()
        + b"\r\n"
    )


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 63, 64, 127, 128, 129, 255, 256, 257, 1000])
def test_blake2b64_is_hashlib_blake2b_with_an_8_byte_digest(length: int) -> None:
    data = bytes((i * 31 + 7) & 0xFF for i in range(length))
    expected = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    assert lib.mw_blake2b64(data, length) == expected


@settings(max_examples=400, deadline=None)
@given(_texts())
def test_native_sketch_equals_the_python_reference_on_random_unicode_text(text: str) -> None:
    words = _WORD.findall(text.lower())[:_MAX_WORDS]
    expected = sketch_python(words)
    event("sketch" if expected else "too short")
    assert sketch(parse(_message("")), text) == expected
    # Below the sketch's size the native call still gives the smallest distinct digests.
    full = shingle_sketch(words, SHINGLE, SKETCH)
    if expected:
        assert full == expected
    assert full == sorted(set(full))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=40),
        min_size=30,
        max_size=150,
    )
)
def test_ascii_text_is_cut_into_the_words_the_unicode_pattern_cuts(chunks: list[str]) -> None:
    # Case, underscores, digits, punctuation and runs past 30 characters: the ASCII pattern
    # the sketch takes for ASCII text must cut exactly the reference's words.
    text = " ".join(chunks)
    expected = sketch_python(_WORD.findall(text.lower()))
    event("sketch" if expected else "too short")
    assert sketch(parse(_message("")), text) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["ab", "cd", "ef", "gh", "免费"]), min_size=0, max_size=60),
    st.integers(1, 8),
    st.integers(1, 40),
)
def test_repeated_shingles_count_once_for_any_shingle_and_sketch_size(
    words: list[str], shingle: int, k: int
) -> None:
    digests = {
        int.from_bytes(
            hashlib.blake2b(" ".join(words[i : i + shingle]).encode(), digest_size=8).digest(),
            "big",
        )
        for i in range(len(words) - shingle + 1)
    }
    assert shingle_sketch(words, shingle, k) == sorted(digests)[:k]


def test_sketch_of_a_message_read_from_its_body() -> None:
    text = " ".join(f"word{i} campaign text" for i in range(40))
    raw = _message(text)
    words = _WORD.findall(("hello\n" + text).lower())
    assert sketch(parse(raw)) == sketch_python(words) != []


def test_out_of_range_shingle_or_sketch_size_is_refused() -> None:
    with pytest.raises(ValueError):
        shingle_sketch(["ab", "cd"], 0, 24)
    with pytest.raises(ValueError):
        shingle_sketch(["ab", "cd"], 4, lib.MW_SKETCH_MAX_K + 1)


_HTML_MAIL = (
    b"From: a@example.org\r\nSubject: links\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b'<p>Go to <a href="http://bank.example@evil.example/login">your bank</a> or '
    b"hxxp://phish[.]example/x now</p>\r\n"
)


def test_part_urls_are_extracted_once_and_shared_by_every_caller() -> None:
    part = next(parse(_HTML_MAIL).leaves())
    first = part.urls()
    assert [u.url for u in first] == ["http://evil.example/login", "http://phish.example/x"]
    # The same Url objects again: a second plugin reading the part pays no extraction.
    assert all(a is b for a, b in zip(part.urls(), first, strict=True))


def test_a_caller_changing_its_url_list_does_not_change_the_next_callers() -> None:
    msg = parse(_HTML_MAIL)
    part = next(msg.leaves())
    mine = part.urls()
    mine.clear()
    assert [u.url for u in part.urls()] == ["http://evil.example/login", "http://phish.example/x"]
    theirs = msg.urls()
    assert [u.url for u in theirs] == ["http://evil.example/login", "http://phish.example/x"]
    theirs.pop()
    assert [u.url for u in msg.urls()] == ["http://evil.example/login", "http://phish.example/x"]
    assert all(a is b for a, b in zip(msg.urls(), part.urls(), strict=True))

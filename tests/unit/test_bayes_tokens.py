"""The Bayes tokenizer gives exactly the tokens of its first implementation, kept here as the
reference: stored Bayes databases (LMDB and the cluster's Redis keys) are keyed by these
strings, so a token that changed would silently lose what a site's Bayes learned. Random
messages cover Unicode and ASCII text (the fast path), header names in any case, repeated and
missing headers, digits of every script, HTML tags and attributes in any case. The C core's
word cutting (``ascii_words``, ``unicode_words``) is held to the regexes it replaces."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mailwarden_antispam.bayes import tokens
from mailwarden_antispam.content import body_text, message_urls
from mailwarden_sdk import ParsedMessage, ascii_words, parse, unicode_words

# -- the reference: tokens() as first written (every Bayes store was learned with it) --------

_REF_WORD = re.compile(r"[^\W_]{3,24}|\$\d+", re.UNICODE)
_REF_DIGITS = re.compile(r"\d+")
_REF_HEADERS = (
    "from",
    "reply-to",
    "to",
    "cc",
    "x-mailer",
    "user-agent",
    "content-type",
    "content-transfer-encoding",
    "message-id",
    "x-priority",
    "x-msmail-priority",
    "precedence",
    "importance",
    "list-id",
    "organization",
)
_REF_HEADER_WORD = re.compile(r"[^\s<>\"'(),;:=]{2,40}")
_REF_TAG_WORD = re.compile(r"<([a-z][a-z0-9]{0,9})\b([^>]{0,300})>", re.IGNORECASE)
_REF_ATTR = re.compile(r"([a-z-]{1,20})\s*=\s*[\"']?([^\s\"'>]{1,20})", re.IGNORECASE)
_REF_MAX_TOKENS = 3000


def reference_tokens(
    message: ParsedMessage, text: str | None = None, urls: Sequence[str] | None = None
) -> set[str]:
    words = _REF_WORD.findall((body_text(message) if text is None else text).lower())
    out = set(words)
    if len(out) >= _REF_MAX_TOKENS:
        out = set()
        for word in words:
            out.add(word)
            if len(out) >= _REF_MAX_TOKENS:
                break
    sender = (message.header("from") or "").lower()
    if "@" in sender:
        out.add("from:" + sender.rsplit("@", 1)[1].strip(" >"))
    for url in message_urls(message, 50) if urls is None else urls[:50]:
        host = url.split("/")[2] if url.count("/") >= 2 else url
        out.add("url:" + host)
    for name in _REF_HEADERS:
        for value in message.header_all(name)[:3]:
            for word in _REF_HEADER_WORD.findall(value.lower())[:30]:
                out.add(f"h:{name}:{_REF_DIGITS.sub('N', word)}")
    for part in message.leaves():
        if part.content_type == "text/html":
            for tag, attrs in _REF_TAG_WORD.findall(part.text()[:200_000])[:2000]:
                out.add("tag:" + tag.lower())
                for key, value in _REF_ATTR.findall(attrs):
                    out.add(f"tag:{tag.lower()}:{key.lower()}={value.lower()}")
    return out


# -- random messages -----------------------------------------------------------------------

# ASCII with its edges weighted up: the control characters \\s matches (\\x1c-\\x1f, \\v, \\f)
# and the characters the patterns cut on.
_ascii = st.one_of(
    st.characters(max_codepoint=127, blacklist_characters="\r\n"),
    st.sampled_from(list("\x1c\x1d\x1e\x1f\x0b\x0c \t$_-<>=\"'09AZaz")),
)
# Every script, digits of other scripts (\d matches them), the characters whose lowercase is
# longer or ASCII (U+0130, U+212A), Unicode spaces (\s) and the tokenizers' punctuation.
_unicode = st.one_of(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    st.sampled_from(
        list("\u0130\u212a\u0131\u017f\u00dfΣς\u0663\u09ed\u00a0\u2028\u3000\x1c\x1f\x85$_-<>=\"'")
    ),
)
_vocabulary = st.sampled_from(
    ["win", "CASH", "$100", "$٣٣", "now", "Straße", "ΔΙΣ", "免费", "été", "x", "a1b2c3d4e5"]
)


def _text(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    word = st.one_of(
        _vocabulary, st.text(alphabet=alphabet, max_size=40), st.text(alphabet=alphabet)
    )
    sep = st.sampled_from([" ", "\n", ", ", "_", "-", "\t", "\u00a0", "\x1c", ""])
    return st.lists(st.tuples(word, sep), max_size=max_size).map(
        lambda pairs: "".join(w + s for w, s in pairs)
    )


_texts = st.one_of(_text(_ascii, 120), _text(_unicode, 120))
_tag_names = st.sampled_from(
    ["a", "A", "td", "TD", "font", "Font", "img", "br", "x" * 12, "\u017fpan"]
)
_attr_names = st.sampled_from(["href", "HREF", "size", "Face", "style", "data-x", "a" * 22])
_known_values = st.sampled_from(["1", "Arial", "#FF0000", '"x"', "'y'", "http://Example.COM/p"])


@st.composite
def _html(draw: st.DrawFn, alphabet: st.SearchStrategy[str]) -> str:
    # One alphabet for the whole part, so ASCII parts (the fast path) come often.
    values = st.one_of(_known_values, st.text(alphabet=alphabet, max_size=25))
    chunks = []
    for _ in range(draw(st.integers(0, 30))):
        attrs = "".join(
            f" {draw(_attr_names)}{draw(st.sampled_from(['=', ' = ', '=']))}{draw(values)}"
            for _ in range(draw(st.integers(0, 3)))
        )
        tag = draw(_tag_names)
        # Repeated tags: the tokenizer cuts a tag it saw once.
        chunks += [f"<{tag}{attrs}>"] * draw(st.integers(1, 3))
        chunks.append(draw(st.text(alphabet=alphabet, max_size=20)))
    return "".join(chunks)


# A few names often, so some come more than the three values read of each.
_header_names = st.one_of(
    st.sampled_from(["From", "to", "X-Mailer"]),
    st.sampled_from(_REF_HEADERS),
    st.sampled_from(["FROM", "Reply-To", "X-Mailer", "Message-ID", "LIST-id", "CC", "To"]),
    st.sampled_from(["Received", "Subject", "X-Spam-Flag", "Fröm", "X-Mailer2", "Kc"]),
)
_header_values = st.one_of(
    st.sampled_from(
        [
            "Alice <alice@Example.org>",
            "<1234.5678@mail.example.com>",
            "Microsoft Outlook Express 6.00.2800.1106",
            "text/html; charset=utf-8",
            "3 (Normal)",
            "bulk",
        ]
    ),
    st.text(alphabet=_ascii, max_size=80),
    st.text(alphabet=_unicode, max_size=80),
)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    alphabet = draw(st.sampled_from([_ascii, _unicode]))
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=40))
    lines = [f"{name}: {value}".encode() for name, value in headers]
    plain = draw(_text(alphabet, 60))
    html = draw(_html(alphabet))
    body = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + plain.encode() + b"\r\n"
        b"--BB\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + html.encode() + b"\r\n--BB--\r\n"
    )
    return b"\r\n".join(lines) + b"\r\n" + body


@settings(max_examples=400, deadline=None)
@given(_messages())
def test_tokens_of_a_random_message_are_the_reference_tokens(raw: bytes) -> None:
    # Each from its own parse: the reference reads headers by name, tokens() in one walk,
    # and neither may see what the other cached.
    expected = reference_tokens(parse(raw))
    event("html tokens" if any(t.startswith("tag:") for t in expected) else "no html tokens")
    event("header tokens" if any(t.startswith("h:") for t in expected) else "no header tokens")
    assert tokens(parse(raw)) == expected


@settings(max_examples=400, deadline=None)
@given(_texts, st.lists(st.text(alphabet=st.one_of(_ascii, st.just("/")), max_size=30)))
def test_tokens_of_the_callers_text_and_urls_are_the_reference_tokens(
    text: str, urls: list[str]
) -> None:
    # The scan hands its body text and URLs in: Unicode and ASCII text (the fast path), words
    # around the {3,24} cut, "$" amounts in any script's digits.
    message = parse(b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n")
    event("ascii" if text.lower().isascii() else "unicode")
    assert tokens(message, text, urls) == reference_tokens(message, text, urls)


@settings(max_examples=300, deadline=None)
@given(
    # The vocabulary's non-ASCII letters dropped: ascii_words takes ASCII text only.
    _text(_ascii, 150).map(lambda t: t.encode("ascii", "ignore").decode()),
    st.sampled_from([(3, 24, True), (2, 30, False), (1, 1, True), (1, 5, False), (4, 4, True)]),
)
def test_native_ascii_words_are_the_regex_words(text: str, cut: tuple[int, int, bool]) -> None:
    # Bayes's cut (3..24 and "$" amounts), the fuzzy sketch's (2..30) and the edges: runs
    # shorter, as long as and longer than the bounds, "$" with and without digits, any case.
    low, high, amounts = cut
    pattern = f"[a-z0-9]{{{low},{high}}}" + (r"|\$[0-9]+" if amounts else "")
    event("words" if re.search(pattern, text.lower()) else "no words")
    assert ascii_words(text, low, high, amounts) == re.findall(pattern, text.lower())


@settings(max_examples=300, deadline=None)
@given(
    _text(st.one_of(_unicode, st.sampled_from(["\udc80", "\ud800"])), 150),
    st.sampled_from([(3, 24, True), (2, 30, False), (1, 1, True), (1, 5, False), (4, 4, True)]),
)
def test_native_unicode_words_are_the_regex_words(text: str, cut: tuple[int, int, bool]) -> None:
    # Letters and digits of every script, "_" and Unicode spaces between them, "$" before
    # other scripts' digits (\d), lone surrogates: the regex's own classes, cut in C.
    low, high, amounts = cut
    pattern = f"[^\\W_]{{{low},{high}}}" + (r"|\$\d+" if amounts else "")
    event("words" if re.search(pattern, text) else "no words")
    assert unicode_words(text, low, high, amounts) == re.findall(pattern, text)
    lowered = text.lower()
    assert unicode_words(lowered, low, high, amounts) == re.findall(pattern, lowered)


def test_native_ascii_words_refuse_what_they_cannot_cut() -> None:
    with pytest.raises(UnicodeEncodeError):
        ascii_words("café", 3, 24)
    with pytest.raises(ValueError, match="min_len"):
        ascii_words("words", 0, 24)
    with pytest.raises(ValueError, match="min_len"):
        ascii_words("words", 5, 4)


def test_a_known_message_keeps_its_stored_tokens() -> None:
    # Spelled out, so a change of the reference itself shows: these are keys in stored stores.
    raw = (
        b"From: Alice <alice@Example.ORG>\r\nTo: bob@example.net\r\n"
        b"Message-ID: <20261207.1234@mx.example.org>\r\nSubject: Win $500 NOW\r\n"
        b"X-Priority: 3 (Normal)\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<HTML><Font SIZE=2 face="Arial">Cheap pills <a href="http://Shop.example.com/x">'
        b"here</a></font></html>\r\n"
    )
    assert tokens(parse(raw)) == {
        "win",
        "$500",
        "now",
        "cheap",
        "pills",
        "here",
        "from:example.org",
        "url:shop.example.com",
        "h:from:alice",
        "h:from:alice@example.org",
        "h:to:bob@example.net",
        "h:message-id:N.N@mx.example.org",
        "h:x-priority:normal",
        "h:content-type:text/html",
        "h:content-type:charset",
        "h:content-type:utf-N",
        "tag:html",
        "tag:font",
        "tag:font:size=2",
        "tag:font:face=arial",
        "tag:a",
        "tag:a:href=http://shop.example.",  # values are cut at 20 characters
    }

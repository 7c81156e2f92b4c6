"""Hypothesis properties of content extraction: RFC 2047 round-trips through Python's
``email.header``, and the C extractors never crash, stay bounded and find what was planted."""

from __future__ import annotations

import email.header

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailwarden_native import decode_header, detect_type, extract_urls, html_to_text
from mailwarden_native._core import lib

# Printable text without controls or surrogates (a decoded header is one line).
header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=80
)


@settings(max_examples=300, deadline=None)
@given(header_text, st.sampled_from(["utf-8", "iso-8859-1", "koi8-r", "shift_jis", "gb2312"]))
def test_rfc2047_round_trip_with_email_header(text: str, charset: str) -> None:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        charset = "utf-8"
    encoded = email.header.Header(text, charset).encode(maxlinelen=60)
    # What Part.header() hands over: line breaks of the folding removed.
    unfolded = encoded.replace("\r", "").replace("\n", "")
    assert decode_header(unfolded) == text
    # And Python's own decoder agrees with ours on the words it produced.
    parts = email.header.decode_header(unfolded)
    theirs = "".join(b.decode(c or "ascii") if isinstance(b, bytes) else b for b, c in parts)
    assert decode_header(unfolded) == theirs


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_decode_header_never_raises(value: str) -> None:
    assert isinstance(decode_header(value), str)


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
url_st = st.builds(
    lambda scheme, labels, tld, path: f"{scheme}://{'.'.join(labels)}.{tld}{path}",
    st.sampled_from(["http", "https", "HTTP", "hxxp", "ftp"]),
    st.lists(label, min_size=1, max_size=3),
    st.sampled_from(["com", "net", "org", "io", "example"]),
    # A path never ends in sentence punctuation ("?" at the end belongs to the sentence).
    st.text(alphabet="abcXYZ0123456789/_-=?&", max_size=30).map(
        lambda p: "/" + p + "x" if p else ""
    ),
)


def _normal(url: str) -> str:
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    scheme = {"hxxp": "http"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}://{host.lower()}/{path}"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=40), url_st), min_size=1, max_size=5), st.text(max_size=40)
)
def test_every_planted_url_is_found(chunks: list[tuple[str, str]], tail: str) -> None:
    text = "".join(f"{noise} {url} " for noise, url in chunks) + tail
    found = {u.url for u in extract_urls(text)}
    for _, url in chunks:
        assert _normal(url) in found
    # The same URLs as links in HTML, with the noise as text around them.
    html = "".join(f"<p>{noise}</p><a href='{url}'>x</a>" for noise, url in chunks)
    found_html = {u.url for u in extract_urls(html, html=True)}
    for _, url in chunks:
        assert _normal(url) in found_html


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_url_extraction_never_crashes(data: bytes, html: bool) -> None:
    for u in extract_urls(data, html=html, max_urls=50, max_url_len=300):
        assert len(u.url.encode()) <= 300 + 64  # IDNA may lengthen the host a little
        assert u.host in u.url


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_html_to_text_bounded(data: bytes) -> None:
    text = html_to_text(data)
    assert len(text.encode("utf-8", "surrogatepass")) <= lib.mw_html_text_max_len(len(data))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_script_content_never_shown(before: str, after: str) -> None:
    assume("<" not in before and "<" not in after)
    text = html_to_text(f"{before}<script>var SECRETMARK = 1;</script>{after}")
    assert "SECRETMARK" not in text


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"", b"%PDF-", b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"MZ"]),
    st.binary(max_size=5000),
)
def test_detect_type_never_crashes(prefix: bytes, data: bytes) -> None:
    kind = detect_type(prefix + data)
    assert isinstance(kind, str) and kind
    if prefix == b"%PDF-":
        assert kind == "pdf"

"""Transfer decoders against Python's reference implementations."""

from __future__ import annotations

import base64
import binascii
import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import decode_base64, decode_base64_ex, decode_quoted_printable


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_base64_matches_python_on_valid_input(data: bytes) -> None:
    for encoded in (base64.b64encode(data), base64.encodebytes(data)):
        assert decode_base64(encoded) == data
        assert decode_base64_ex(encoded) == (data, True)
    crlf = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert decode_base64(memoryview(crlf)) == data
    assert decode_base64(bytearray(crlf)) == data


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=500))
def test_base64_missing_padding_is_accepted(data: bytes) -> None:
    encoded = base64.b64encode(data).rstrip(b"=")
    assert decode_base64_ex(encoded) == (data, True)


@settings(max_examples=300)
@given(st.binary(max_size=1000))
def test_base64_never_fails_on_junk(junk: bytes) -> None:
    out, _clean = decode_base64_ex(junk)
    assert len(out) <= len(junk)
    # Python's lenient decoder agrees whenever the input has no padding
    # problems, because both simply drop foreign bytes.
    alphabet_only = bytes(
        c for c in junk if c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    )
    if b"=" not in junk and len(alphabet_only) % 4 == 0:
        assert out == binascii.a2b_base64(junk)


def test_base64_junk_is_reported_and_skipped() -> None:
    assert decode_base64_ex(b"aGVs*bG8=") == (b"hello", False)
    assert decode_base64_ex(b"aGVsbG8=\n") == (b"hello", True)
    assert decode_base64_ex(b"aGVsbG8") == (b"hello", True)
    # Data hidden after padding is still decoded, and reported.
    assert decode_base64_ex(b"aGk=aGk=") == (b"hihi", False)
    assert decode_base64_ex(b"aGVsbG8=x") == (b"hello", False)
    assert decode_base64(b"") == b""


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.booleans())
def test_qp_matches_python_on_valid_input(data: bytes, quotetabs: bool) -> None:
    # quopri writes a CR before LF as a plain line break, so CR LF comes back as LF: the round
    # trip holds for data whose line breaks are LF, which is what it writes.
    data = data.replace(b"\r\n", b"\n")
    encoded = quopri.encodestring(data, quotetabs=quotetabs)
    assert decode_quoted_printable(encoded) == data
    encoded = binascii.b2a_qp(data, quotetabs=quotetabs)
    assert decode_quoted_printable(encoded) == binascii.a2b_qp(encoded)


def test_qp_soft_breaks_and_invalid_escapes() -> None:
    assert decode_quoted_printable(b"ab=\r\ncd=\nef=  \r\ngh=") == b"abcdefgh"
    assert decode_quoted_printable(b"a=3db=3D") == b"a=b="
    assert decode_quoted_printable(b"100% =ZZ =4 =") == b"100% =ZZ =4 "
    assert decode_quoted_printable(b"line1\r\nline2\n") == b"line1\r\nline2\n"
    assert decode_quoted_printable(memoryview(b"=41")) == b"A"


@settings(max_examples=300)
@given(st.binary(max_size=500))
def test_qp_never_fails_and_never_grows(data: bytes) -> None:
    assert len(decode_quoted_printable(data)) <= len(data)

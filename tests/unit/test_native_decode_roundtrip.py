"""Round trips through Python's encoders and our decoders, with the damage mail adds on the way
(line breaks of every kind, blanks, junk bytes, lost padding, soft breaks), and the per-message
decoded-bytes limit of ``Part.decoded()``."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import (
    MalformationFlag,
    ParseLimits,
    decode_base64,
    decode_base64_ex,
    decode_quoted_printable,
    parse,
)

F = MalformationFlag
BREAKS = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"\r\n ", b"  \r\n"]
# Bytes outside the base64 alphabet that are neither whitespace nor '=' padding.
JUNK = [bytes([c]) for c in b"!#$%&*-.:;<>?@[]^_`{|}~\x00\x7f\x80\xff"]


def inject(data: bytes, cuts: list[int], pieces: list[bytes]) -> bytes:
    """Insert pieces[k] at position cuts[k] (positions taken modulo the length)."""
    out = data
    for pos, piece in sorted(zip((c % (len(data) + 1) for c in cuts), pieces, strict=False))[::-1]:
        out = out[:pos] + piece + out[pos:]
    return out


inserts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), inserts, st.data())
def test_base64_roundtrip_with_line_breaks(
    data: bytes, cuts: list[int], draw: st.DataObject
) -> None:
    encoded = base64.b64encode(data)
    pieces = [draw.draw(st.sampled_from(BREAKS)) for _ in cuts]
    damaged = inject(encoded, cuts, pieces)
    assert decode_base64_ex(damaged) == (data, True)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=2000), inserts, st.data())
def test_base64_roundtrip_with_junk(data: bytes, cuts: list[int], draw: st.DataObject) -> None:
    encoded = base64.encodebytes(data)  # 76-column lines, as mail carries it
    pieces = [draw.draw(st.sampled_from(JUNK + BREAKS)) for _ in cuts]
    damaged = inject(encoded, cuts, pieces)
    out, clean = decode_base64_ex(damaged)
    assert out == data
    # Junk is skipped but reported; whitespace alone is clean.
    assert clean == all(p in BREAKS for p in pieces)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_base64_roundtrip_without_padding(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data).rstrip(b"=")) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.binary(min_size=1, max_size=300))
def test_base64_concatenated_blobs_decode_both(a: bytes, b: bytes) -> None:
    # Data after padding is decoded (hiding content behind an early '=' is an evasion) and the
    # input is reported unclean when the first blob was padded.
    out, clean = decode_base64_ex(base64.b64encode(a) + b"\r\n" + base64.b64encode(b))
    assert out == a + b
    assert clean == (len(a) % 3 == 0)


SOFT_BREAKS = [b"=\r\n", b"=\n", b"=\r", b"= \r\n", b"=\t\t\n", b"="]


def qp_cut_points(encoded: bytes) -> list[int]:
    """Positions where a soft break may go: not inside an =XX escape."""
    points = [0]
    i = 0
    while i < len(encoded):
        if encoded[i : i + 1] != b"=":
            i += 1
        elif encoded[i + 1 : i + 3] == b"\r\n":
            i += 3  # a soft break the encoder wrote itself
        elif encoded[i + 1 : i + 2] == b"\n":
            i += 2
        else:
            i += 3  # an =XX escape
        points.append(i)
    return points


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500), st.booleans(), inserts, st.data())
def test_qp_roundtrip_with_soft_breaks(
    data: bytes, quotetabs: bool, cuts: list[int], draw: st.DataObject
) -> None:
    encoded = binascii.b2a_qp(data, quotetabs=quotetabs, istext=False)
    points = qp_cut_points(encoded)
    chosen = [points[c % len(points)] for c in cuts]
    pieces = [draw.draw(st.sampled_from(SOFT_BREAKS[:-1])) for _ in cuts]
    damaged = encoded
    for pos, piece in sorted(zip(chosen, pieces, strict=True))[::-1]:
        damaged = damaged[:pos] + piece + damaged[pos:]
    # A lone "=" only counts as a soft break at the very end of the input.
    damaged += draw.draw(st.sampled_from([b"", b"=", b"=\r\n"]))
    assert decode_quoted_printable(damaged) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_qp_roundtrip_lowercase_hex(data: bytes) -> None:
    encoded = binascii.b2a_qp(data, istext=False)
    lowered = bytearray(encoded)
    hexdigits = b"0123456789ABCDEF"
    for i in range(len(lowered) - 2):
        # Only escapes: the "=" of a soft line break is followed by a line end and then text,
        # which must keep its case.
        if lowered[i] == ord("=") and all(c in hexdigits for c in lowered[i + 1 : i + 3]):
            lowered[i + 1 : i + 3] = bytes(lowered[i + 1 : i + 3]).lower()
    assert decode_quoted_printable(bytes(lowered)) == data


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=800))
def test_qp_roundtrip_text_keeps_line_breaks(text: str) -> None:
    data = text.encode("utf-8").replace(b"\r", b"")
    assert decode_quoted_printable(binascii.b2a_qp(data, istext=True)) == data


# --- decoded-bytes limit ----------------------------------------------------------------------


def three_parts(a: bytes, b: bytes, c: bytes) -> bytes:
    def part(data: bytes, cte: bytes) -> bytes:
        body = base64.encodebytes(data) if cte == b"base64" else data + b"\n"
        return b"--b\nContent-Transfer-Encoding: " + cte + b"\n\n" + body

    return (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        + part(a, b"base64")
        + part(b, b"7bit")
        + part(c, b"base64")
        + b"--b--\n"
    )


def test_decoded_limit_cuts_and_flags() -> None:
    a, b, c = b"A" * 1000, b"B" * 1000, b"C" * 1000
    msg = parse(three_parts(a, b, c), ParseLimits(max_decoded_bytes=1500))
    first, second, third = msg.leaves()
    assert msg.flags == F.NONE  # nothing decoded yet
    assert first.decoded() == a and first.flags == F.NONE
    assert second.decoded() == b[:500]  # cut at the limit
    assert second.flags & F.DECODED_LIMIT and msg.flags & F.DECODED_LIMIT
    assert third.decoded() == b"" and third.flags & F.DECODED_LIMIT
    assert not first.flags & F.DECODED_LIMIT
    assert second.decoded() is second.decoded()  # the cut result is the cached one


def test_decoded_limit_counts_each_part_once() -> None:
    msg = parse(three_parts(b"x" * 100, b"y" * 100, b"z" * 100), ParseLimits(max_decoded_bytes=300))
    for _ in range(3):
        for leaf in msg.leaves():
            leaf.decoded()
    assert [len(p.decoded()) for p in msg.leaves()] == [100, 100, 100]
    assert msg.flags == F.NONE


def test_decoded_limit_exact_fit_is_not_flagged() -> None:
    msg = parse(b"Subject: x\n\n" + b"q" * 64, ParseLimits(max_decoded_bytes=64))
    assert msg.root.decoded() == b"q" * 64 and msg.flags == F.NONE
    msg = parse(b"Subject: x\n\n" + b"q" * 65, ParseLimits(max_decoded_bytes=64))
    assert msg.root.decoded() == b"q" * 64 and msg.flags == F.DECODED_LIMIT


def test_decoded_limit_zero_and_default() -> None:
    raw = three_parts(b"a" * 10, b"b", b"c")
    msg = parse(raw, ParseLimits(max_decoded_bytes=0))
    assert [p.decoded() for p in msg.leaves()] == [b"", b"", b""]
    assert all(p.flags & F.DECODED_LIMIT for p in msg.leaves())
    assert ParseLimits().max_decoded_bytes == 64 << 20
    assert [p.decoded() for p in parse(raw).leaves()] == [b"a" * 10, b"b", b"c"]


def test_decoded_limit_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_decoded_bytes"):
        parse(b"x", ParseLimits(max_decoded_bytes=-1))


B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
b64ish = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=40).map(lambda b: base64.b64encode(b)),
        st.sampled_from([bytes([c]) for c in B64_ALPHABET]),
        st.sampled_from(BREAKS + JUNK + [b"=", b"==", b"\r\n"]),
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(b64ish)
def test_parse_time_base64_check_agrees_with_the_decoder(body: bytes) -> None:
    # The parser's block-wise (SSE2/AVX2) check must give the decoder's verdict exactly.
    msg = parse(b"Content-Transfer-Encoding: base64\r\n\r\n" + body)
    flagged = bool(msg.root.flags & F.BAD_BASE64)
    assert flagged == (not decode_base64_ex(body)[1])
    assert msg.root.decoded() == decode_base64(body)


def test_inlined_base64_bound_matches_the_c_one() -> None:
    from mailwarden_native._core import lib

    for n in [*range(0, 64), 1000, 4095, 4096, 4097, 1 << 20]:
        assert (n >> 2) * 3 + 3 == lib.mw_base64_max_len(n)

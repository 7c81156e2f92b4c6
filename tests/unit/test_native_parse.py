"""Behaviour of mailwarden_native.parse as a user of the part table sees it."""

from __future__ import annotations

import base64
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden_native import MalformationFlag, ParsedMessage, ParseLimits, parse
from mailwarden_native._core import ffi, lib
from mailwarden_native._mime import PART_FIELDS

F = MalformationFlag
ATTACHMENT = os.urandom(3000) + bytes(range(256))


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


def mixed_with_attachment() -> bytes:
    b64 = base64.encodebytes(ATTACHMENT)
    return (
        b"From: alice@example.org\n"
        b"Subject: report\n"
        b"  folded\n"
        b"Message-ID: <1@example.org>\n"
        b'Content-Type: multipart/mixed; boundary="=_outer"\n'
        b"\n"
        b"This is a preamble.\n"
        b"--=_outer\n"
        b"Content-Type: text/plain; charset=UTF-8\n"
        b"\n"
        b"Hello\n"
        b"--=_outer\n"
        b"Content-Type: application/pdf; name=ignored.pdf\n"
        b"Content-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="report.pdf"\n'
        b"\n" + b64 + b"--=_outer--\n"
        b"epilogue\n"
    )


def nested_message() -> bytes:
    return (
        b"Subject: outer\n"
        b"Content-Type: multipart/mixed; boundary=A\n"
        b"\n"
        b"--A\n"
        b"\n"
        b"outer text\n"
        b"--A\n"
        b"Content-Type: message/rfc822\n"
        b"\n"
        b"Subject: inner\n"
        b"Content-Type: multipart/alternative; boundary=B\n"
        b"\n"
        b"--B\n"
        b"Content-Type: text/plain\n"
        b"\n"
        b"plain\n"
        b"--B\n"
        b"Content-Type: text/html\n"
        b"\n"
        b"<p>html</p>\n"
        b"--B--\n"
        b"--A--\n"
    )


def check_offsets(msg: ParsedMessage) -> None:
    n = len(msg.raw)
    for p in msg.parts:
        assert 0 <= p.header_start <= p.header_end <= p.body_start <= p.body_end <= n
        if p.parent >= 0:
            parent = msg.parts[p.parent]
            assert parent.index < p.index
            assert p.depth == parent.depth + 1
            assert parent.body_start <= p.header_start and p.body_end <= parent.body_end
            assert p.index in parent.children
        else:
            assert p.index == 0 and p.depth == 0
        # body_raw / decoded never fail
        assert len(p.body_raw) == p.body_end - p.body_start
        p.decoded()
        _ = p.headers, p.params, p.filename, p.transfer_encoding


def test_part_layout_matches_c_struct() -> None:
    assert ffi.sizeof("mw_part") == 8 * len(PART_FIELDS)
    for i, name in enumerate(PART_FIELDS):
        assert ffi.offsetof("mw_part", name) == 8 * i


def test_multipart_with_base64_attachment() -> None:
    msg = parse(mixed_with_attachment())
    assert msg.flags == F.NONE
    assert [p.content_type for p in msg.parts] == [
        "multipart/mixed",
        "text/plain",
        "application/pdf",
    ]
    root = msg.root
    assert root.is_multipart and root.children == [1, 2] and not root.is_leaf
    assert msg.subject == "report  folded"
    assert msg.message_id == "<1@example.org>"
    assert root.params["boundary"] == "=_outer"
    text, pdf = msg.parts[1], msg.parts[2]
    assert text.charset == "utf-8" and bytes(text.body_raw) == b"Hello"
    assert pdf.transfer_encoding == "base64"
    assert pdf.disposition == "attachment"
    assert pdf.filename == "report.pdf"
    assert pdf.decoded() == ATTACHMENT
    assert pdf.decoded() is pdf.decoded()  # cached
    assert [p.index for p in msg.attachments()] == [2]
    assert [p.index for p in msg.leaves()] == [1, 2]


def test_nested_multipart_inside_message_rfc822() -> None:
    msg = parse(nested_message())
    assert msg.flags == F.NONE
    tree = [(p.content_type, p.parent, p.depth) for p in msg.parts]
    assert tree == [
        ("multipart/mixed", -1, 0),
        ("text/plain", 0, 1),
        ("message/rfc822", 0, 1),
        ("multipart/alternative", 2, 2),
        ("text/plain", 3, 3),
        ("text/html", 3, 3),
    ]
    assert msg.parts[2].is_message and not msg.parts[2].is_leaf
    assert msg.parts[3].header("subject") == "inner"
    assert bytes(msg.parts[5].body_raw) == b"<p>html</p>"
    check_offsets(msg)


def test_crlf_and_lf_give_the_same_structure() -> None:
    for raw in (mixed_with_attachment(), nested_message()):
        lf, cr = parse(raw), parse(crlf(raw))
        assert cr.flags == F.NONE
        shape = [(p.content_type, p.parent, p.depth, p.filename) for p in lf.parts]
        assert shape == [(p.content_type, p.parent, p.depth, p.filename) for p in cr.parts]
        for c, n in zip(cr.leaves(), lf.leaves(), strict=True):
            # base64 gives the same bytes whatever the line endings (and the random attachment
            # may hold CR LF itself); text bodies differ exactly by them.
            binary = c.transfer_encoding == "base64"
            assert (c.decoded() if binary else c.decoded().replace(b"\r\n", b"\n")) == n.decoded()
        assert lf.headers == cr.headers


def test_bare_cr_line_endings_are_lines() -> None:
    msg = parse(nested_message().replace(b"\n", b"\r"))
    assert [p.content_type for p in msg.parts][-2:] == ["text/plain", "text/html"]


def test_mixed_line_endings_flagged() -> None:
    raw = b"Subject: a\r\nFrom: b\n\nbody\r\n"
    assert F.BARE_CR_OR_LF_MIX in parse(raw).flags


def test_filename_rfc2231_and_content_type_name() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n"
        b"--b\n"
        b"Content-Type: application/octet-stream\n"
        b"Content-Disposition: attachment;\n filename*=utf-8''%E2%82%AC%20rates.pdf\n\n"
        b"x\n"
        b"--b\n"
        b"Content-Type: application/octet-stream;\n"
        b"  name*0*=iso-8859-1''caf%E9;\n  name*1=\" menu.txt\"\n\n"
        b"y\n"
        b"--b\n"
        b'Content-Type: image/png; name="from-type.png"\n'
        b"Content-Disposition: inline\n\n"
        b"z\n"
        b"--b--\n"
    )
    msg = parse(raw)
    assert [p.filename for p in msg.leaves()] == [
        "\u20ac rates.pdf",
        "caf\u00e9 menu.txt",
        "from-type.png",
    ]
    assert [p.disposition for p in msg.leaves()] == ["attachment", None, "inline"]
    assert len(list(msg.attachments())) == 3


def test_defaults() -> None:
    msg = parse(b"Subject: plain\n\nhi\n")
    p = msg.root
    assert p.content_type == "text/plain" and p.transfer_encoding == "7bit"
    assert p.charset is None and p.filename is None and p.disposition is None
    assert p.is_leaf and msg.flags == F.NONE
    assert p.header("SUBJECT") == "plain" and p.header_all("x-none") == []


def test_digest_children_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\n\n"
        b"--d\n\nSubject: one\n\nfirst\n"
        b"--d\nContent-Type: text/plain\n\nsecond\n"
        b"--d--\n"
    )
    msg = parse(raw)
    assert [p.content_type for p in msg.parts] == [
        "multipart/digest",
        "message/rfc822",
        "text/plain",
        "text/plain",
    ]
    assert msg.parts[2].header("subject") == "one"


def test_duplicate_headers_kept_in_order() -> None:
    msg = parse(b"Received: a\nReceived: b\nX: 1\nreceived: c\n\n")
    assert msg.header_all("Received") == ["a", "b", "c"]
    assert msg.headers[2] == ("X", "1")


def test_utf8_and_latin1_header_values() -> None:
    msg = parse("Subject: caf\u00e9\n".encode() + b"X-Old: caf\xe9\n\n")
    assert msg.subject == "caf\u00e9"
    assert msg.header("x-old") == "caf\u00e9"


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        (
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nonly part, never closed\n",
            F.NO_CLOSING_BOUNDARY,
        ),
        (b"Content-Type: multipart/mixed\n\n--b\n\ntext\n--b--\n", F.MISSING_BOUNDARY),
        (b"Content-Type: multipart/mixed; boundary=zz\n\n--b\n\ntext\n", F.BOUNDARY_NOT_FOUND),
        (b"Content-Transfer-Encoding: base64\n\naGVsbG8*!!d29ybGQ=\n", F.BAD_BASE64),
        (b"Subject: no body\nFrom: x", F.TRUNCATED_HEADERS),
        (b"Subject: a\x00b\n\nbody\x00\n", F.NUL_BYTES),
        (b"Subject: a\nthis is not a header\nFrom: b\n\nbody\n", F.BAD_HEADER_LINE),
    ],
)
def test_malformations_are_flagged_and_still_parsed(raw: bytes, flag: F) -> None:
    msg = parse(raw)
    assert flag in msg.flags
    assert any(flag in p.flags for p in msg.parts)
    assert list(msg.leaves())
    check_offsets(msg)


def test_no_closing_boundary_keeps_last_part() -> None:
    msg = parse(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\n\nlast\n")
    assert [bytes(p.body_raw) for p in msg.leaves()] == [b"first", b"last\n"]


def test_unfound_boundary_makes_a_leaf() -> None:
    msg = parse(b"Content-Type: multipart/mixed; boundary=zz\n\nall of it\n")
    assert msg.root.is_leaf and bytes(msg.root.decoded()) == b"all of it\n"


def test_bad_header_line_starts_body() -> None:
    msg = parse(b"Subject: a\nnot a header\nmore\n")
    assert msg.subject == "a"
    assert bytes(msg.root.body_raw) == b"not a header\nmore\n"


def test_mbox_from_line_is_skipped() -> None:
    msg = parse(b"From alice@example.org Mon Jan 1 00:00:00 2024\nSubject: s\n\nb\n")
    assert msg.subject == "s" and msg.flags == F.NONE


def _nest(depth: int) -> bytes:
    raw = b"Content-Type: text/plain\n\nbottom\n"
    for i in range(depth):
        b = f"b{i}".encode()
        raw = (
            (b"Content-Type: multipart/mixed; boundary=" + b + b"\n\n--" + b + b"\n" + raw)
            + b"\n--"
            + b
            + b"--\n"
        )
    return raw


def test_depth_limit() -> None:
    raw = _nest(40)
    msg = parse(raw)
    assert F.DEPTH_LIMIT in msg.flags
    assert max(p.depth for p in msg.parts) == 32
    msg = parse(raw, ParseLimits(max_depth=3))
    assert F.DEPTH_LIMIT in msg.flags and max(p.depth for p in msg.parts) == 3
    assert F.DEPTH_LIMIT not in parse(_nest(5)).flags
    check_offsets(msg)


def test_part_limit() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 50 + b"--b--\n"
    assert len(parse(raw).parts) == 51
    msg = parse(raw, ParseLimits(max_parts=10))
    assert len(msg.parts) == 10 and F.PART_LIMIT in msg.flags


def test_header_limit() -> None:
    raw = b"".join(b"X-%d: %s\n" % (i, b"v" * 50) for i in range(100))
    raw += b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n"
    msg = parse(raw, ParseLimits(max_header_bytes=1000))
    assert F.HEADER_LIMIT in msg.flags
    assert len(msg.parts) == 1 and msg.root.is_leaf
    assert len(msg.headers) < 100
    assert bytes(msg.root.body_raw).startswith(b"--b")


def test_bad_input_types_and_limits() -> None:
    with pytest.raises(TypeError):
        parse("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse(bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse(b"x", ParseLimits(max_depth=-1))


def test_empty_input() -> None:
    msg = parse(b"")
    assert len(msg.parts) == 1 and msg.root.body_start == msg.root.body_end == 0


MIME_BITS = st.sampled_from(
    [
        b"\n",
        b"\r\n",
        b"\r",
        b"--b",
        b"--b--",
        b"--c",
        b"Content-Type: multipart/mixed; boundary=b",
        b'Content-Type: multipart/alternative; boundary="c"',
        b"Content-Type: message/rfc822",
        b"Content-Type: multipart/digest; boundary=b",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Disposition: attachment; filename*0*=utf-8''a%; filename*1=b",
        b"Subject: x",
        b" folded",
        b"\x00",
        b"=4",
        b"QUJD",
        b":",
        b"From ",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(MIME_BITS, st.binary(max_size=20)), max_size=60))
def test_parse_never_raises_and_offsets_are_sane(chunks: list[bytes]) -> None:
    raw = b"".join(chunks)
    for limits in (None, ParseLimits(max_depth=2, max_parts=5, max_header_bytes=30)):
        check_offsets(parse(raw, limits))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parse_arbitrary_bytes(raw: bytes) -> None:
    check_offsets(parse(raw))


def test_rfc2231_boundary_parameter() -> None:
    raw = (
        b"Content-Type: multipart/signed;\n\tboundary*=\"us-ascii''Qq1\"\n\n"
        b"--Qq1\n\npart 1\n--Qq1\n\npart 2\n--Qq1--\n"
    )
    msg = parse(raw)
    assert [bytes(p.body_raw) for p in msg.leaves()] == [b"part 1", b"part 2"]
    assert msg.root.params["boundary"] == "Qq1"


def test_mbox_from_line_inside_attached_message() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: message/rfc822\n\n"
        b"From someone@example.org Tue May 10 11:28:07 2005\n"
        b"Subject: inner\n\nbody\n--b--\n"
    )
    msg = parse(raw)
    inner = msg.parts[2]
    assert inner.header("subject") == "inner" and inner.flags == F.NONE


COMMON_TYPES = [
    ffi.string(lib.mw_content_type_name(i)).decode() for i in range(1, lib.MW_CONTENT_TYPE_CODES)
]
TOKEN = st.text("abcxyzXYZ-.+0123456789", min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sampled_from(COMMON_TYPES).map(lambda t: tuple(t.split("/"))),
        st.tuples(TOKEN, TOKEN),
        st.sampled_from(COMMON_TYPES).map(lambda t: (t.split("/")[0], t.split("/")[1] + "x")),
    ),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_content_type_from_the_common_type_table_is_the_written_one(
    pair: tuple[str, str], rnd: random.Random, digest: bool
) -> None:
    # The C parser names the common types by a code into its table; whatever the case and
    # the spacing, the part's content_type must be the type as written, lowercased.
    ty, sub = ("".join(c.upper() if rnd.random() < 0.5 else c for c in s) for s in pair)
    raw = (
        b"Content-Type: multipart/" + (b"digest" if digest else b"mixed") + b'; boundary="b"\n\n'
        b"--b\nContent-Type: " + f"{ty} / {sub}".encode() + b"; charset=x\n\nbody\n"
        b"--b\nContent-Type: " + f"{ty}/{sub}".encode() + b"\n\nbody\n"
        b"--b\n\nno content type\n--b--\n"
    )
    msg = parse(raw)
    want = f"{ty}/{sub}".lower()
    kids = [msg.parts[i] for i in msg.root.children]
    assert [p.content_type for p in [msg.root, *kids]] == [
        "multipart/digest" if digest else "multipart/mixed",
        want,
        want,
        "message/rfc822" if digest else "text/plain",
    ]
    code = kids[1]._record()[PART_FIELDS.index("type_code")]
    assert code == (COMMON_TYPES.index(want) + 1 if want in COMMON_TYPES else 0)

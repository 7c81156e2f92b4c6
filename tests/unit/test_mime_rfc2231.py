"""RFC 2231 boundary parameters: the native parser splits on them and the parameter decoding
of ``mailwarden_native._params`` gives the same boundary.

A multipart whose boundary came only as ``boundary*=utf-8''%41%42`` or as continuations
``boundary*0=A; boundary*1=B`` used to be taken for a leaf, so its attachments were never
decoded and the antivirus called an EICAR inside clean (issue 25).
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import MalformationFlag, parse
from mailwarden_native._params import parse_params

F = MalformationFlag


def message(params: str, boundary: str) -> bytes:
    return (
        f"Content-Type: multipart/mixed; {params}\n\n"
        f"preamble\n--{boundary}\nContent-Type: text/plain\n\none\n"
        f"--{boundary}\n\ntwo\n--{boundary}--\n"
    ).encode()


def leaves(raw: bytes) -> list[bytes]:
    return [p.decoded() for p in parse(raw).leaves()]


# (parameters as written, the boundary they give) -- RFC 2231 sections 3 and 4 and the forms
# the security review used.
CASES = [
    ("boundary*=utf-8''%41%42", "AB"),
    ("boundary*=us-ascii'en-us'%3D_part%2F1", "=_part/1"),
    ("boundary*0=A; boundary*1=B", "AB"),
    ('boundary*0="A"; boundary*1="B="', "AB="),
    ("boundary*1=B; boundary*0=A", "AB"),  # any order, joined by index
    ("boundary*0*=utf-8''%41; boundary*1*=%42; boundary*2=C", "ABC"),
    ("boundary*0=A;\n boundary*1=B;\n\tboundary*2=C", "ABC"),  # folded
    ("boundary*0=A; boundary*10=K; boundary*2=C", "ACK"),  # numeric order, not text order
    ("boundary*=\"utf-8''Qq1\"", "Qq1"),
    ("boundary*=%41%42", "AB"),  # without the charset'lang' prefix RFC 2231 asks for
    ("boundary*0=A; boundary*0=Z; boundary*1=B", "AB"),  # the first piece of an index wins
]


def test_rfc2231_boundaries_split_the_multipart() -> None:
    for params, boundary in CASES:
        raw = message(params, boundary)
        msg = parse(raw)
        assert msg.root.is_multipart, params
        assert leaves(raw) == [b"one", b"two"], params
        assert msg.root.params["boundary"] == boundary, params
        assert not msg.flags & (F.MISSING_BOUNDARY | F.BOUNDARY_NOT_FOUND), (params, msg.flags)


def test_rfc2231_boundary_of_a_nested_multipart_and_edge_cases() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=outer\n\n--outer\n"
        b"Content-Type: multipart/alternative; boundary*0=in; boundary*1*=%2Dner\n\n"
        b"--in-ner\n\nalt one\n--in-ner\n\nalt two\n--in-ner--\n--outer--\n"
    )
    assert leaves(raw) == [b"alt one", b"alt two"]
    # A plain boundary still wins over a later RFC 2231 one, as Python's email package reads it.
    assert leaves(message("boundary=X; boundary*=utf-8''%41%42", "X")) == [b"one", b"two"]
    # A joined boundary that never occurs leaves a flagged leaf, like a plain one.
    msg = parse(b"Content-Type: multipart/mixed; boundary*=utf-8''%41%42\n\n--XY\n\nb\n--XY--\n")
    assert not msg.root.is_multipart
    assert msg.flags & (F.MISSING_BOUNDARY | F.BOUNDARY_NOT_FOUND)
    # Joined pieces longer than any boundary (360 bytes) are not used.
    pieces = "; ".join(f"boundary*{i}={'x' * 60}" for i in range(6))
    assert not parse(message(pieces, "x" * 360)).root.is_multipart


# -- property: any boundary, any RFC 2231 spelling -----------------------------------------------

# RFC 2046 bchars without the space (a boundary may not end in one)
BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
TOKEN_SAFE = set(string.ascii_letters + string.digits + "+_-.")


@st.composite
def spelled(draw: st.DrawFn) -> tuple[str, str]:
    """A boundary and one RFC 2231 spelling of it: split into pieces, each percent-encoded
    (some characters) or written plainly (quoted when it needs quotes), in any order."""
    boundary = draw(st.text(BCHARS, min_size=1, max_size=70))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(boundary) - 1), max_size=5)))
        if len(boundary) > 1
        else []
    )
    pieces = [boundary[a:b] for a, b in zip([0, *cuts], [*cuts, len(boundary)], strict=True)]
    single = len(pieces) == 1 and draw(st.booleans())
    written = []
    for index, piece in enumerate(pieces):
        encode = draw(st.booleans())
        if encode:
            text = "".join(
                c if c in TOKEN_SAFE and draw(st.booleans()) else f"%{ord(c):02X}" for c in piece
            )
            if index == 0:
                text = draw(st.sampled_from(["utf-8''", "us-ascii'en'", "''"])) + text
            name = "boundary*" if single else f"boundary*{index}*"
        else:
            quoted = not set(piece) <= TOKEN_SAFE or draw(st.booleans())
            text = f'"{piece}"' if quoted else piece
            if single:  # "boundary*" alone is always encoded: spell it as one continuation
                name = "boundary*0"
            else:
                name = f"boundary*{index}"
        written.append(f"{name}={text}")
    order = draw(st.permutations(written))
    return boundary, "; ".join(order)


@settings(max_examples=300, deadline=None)
@given(spelled())
def test_every_rfc2231_spelling_gives_the_boundary(case: tuple[str, str]) -> None:
    boundary, params = case
    assert parse_params(f"multipart/mixed; {params}")[1]["boundary"] == boundary
    raw = message(params, boundary)
    assert leaves(raw) == [b"one", b"two"], params


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet="%%%0123456789abcdefABCDEFgz =_\t\r\n\u00e9\u6f22", max_size=40),
    st.sampled_from(["utf-8", "iso-8859-1", ""]),
)
def test_percent_escapes_decode_as_urllib_does(text: str, charset: str) -> None:
    # Every % that starts a valid escape is decoded, any other % (short, non-hex, at the
    # end) stays as written, '=' and blanks are plain characters: the C path
    # (quoted-printable) and the exact one must agree with urllib's reading.
    import urllib.parse

    from mailwarden_native._params import _decode_bytes

    value = f"attachment; filename*={charset}''{text}"
    # The value is stripped of blanks at its end, as every parameter value is.
    want = _decode_bytes(urllib.parse.unquote_to_bytes(text.rstrip()), charset or None)
    assert parse_params(value)[1]["filename"] == want

"""The C parameter spans behind Part.disposition / .filename / .charset give exactly what the
Python parameter parser gives on the same header, and the one-call table export works for
structures larger than its per-thread scratch table."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_native import Part, decode_header, parse
from mailwarden_native._params import parse_params

PIECES = [
    b"attachment",
    b"inline",
    b"text/plain",
    b"application/pdf",
    b";",
    b"; ",
    b";\r\n ",
    b";\n\t",
    b"=",
    b'"',
    b"\\",
    b" ",
    b"\t",
    b"\r\n ",
    b"filename",
    b"FileName",
    b"name",
    b"charset",
    b"CHARSET",
    b"filename*",
    b"name*0",
    b"charset*",
    b"*",
    b"utf-8''%E2%82%AC",
    b"a.pdf",
    b"report 1.pdf",
    b"UTF-8",
    b" iso-8859-1 ",
    b"caf\xc3\xa9",
    b"caf\xe9",
    b"\x0b",
    b"\x1c",
    b"\xa0",
    b"(comment)",
    b"x=y",
    b"'",
]
noise = st.lists(st.sampled_from(PIECES), max_size=14).map(b"".join)
# Well-formed-looking values, so the C spans (not the complex fallback) carry most examples.
MAINS = [b"attachment", b"inline", b"", b"text/plain", b"ATTACHMENT ", b" text/html", b'"q;x"']
NAMES = [b"filename", b"FileName", b"name", b"charset", b"CHARSET", b"size", b"x", b" name "]
VALUES = [
    b"a.pdf",
    b'"report 1.pdf"',
    b'"a;b.pdf"',
    b'""',
    b"",
    b"utf-8",
    b" ISO-8859-1 ",
    b'" utf-8 "',
    b'"x=y"',
    b'"unterminated',
    b"a b c",
    b'"a" junk',
    b"x=y",
    b"=?utf-8?B?cmVwb3J0LnBkZg==?=",
    b'"=?iso-8859-1?Q?caf=E9?=.txt"',
]
SEPS = [b";", b"; ", b";\r\n ", b";\n\t", b" ;", b";;", b"\r\n\t;"]
param = st.tuples(
    st.sampled_from(NAMES), st.sampled_from([b"=", b" = ", b"=\r\n "]), st.sampled_from(VALUES)
).map(b"".join)
structured = st.tuples(
    st.sampled_from(MAINS),
    st.lists(st.tuples(st.sampled_from(SEPS), param).map(b"".join), max_size=5).map(b"".join),
).map(b"".join)
values = st.one_of(structured, structured, noise)


def expected(part: Part) -> tuple[str | None, str | None, str | None]:
    """The definition: the Python parameter parser on the unfolded header values."""
    cd = part.header("content-disposition")
    disposition = filename = None
    if cd is not None:
        main, params = parse_params(cd)
        disposition = main or None
        filename = params.get("filename")
    ct = part.header("content-type")
    ct_params = parse_params(ct)[1] if ct is not None else {}
    if filename is None:
        filename = ct_params.get("name")
    if filename is not None and "=?" in filename:
        filename = decode_header(filename)
    cs = ct_params.get("charset")
    charset = (cs.strip().lower() or None) if cs is not None else None
    return disposition, filename, charset


@settings(max_examples=1500, deadline=None)
@given(values, values, st.booleans(), st.booleans())
def test_param_spans_match_the_python_parser(
    ct: bytes, cd: bytes, with_ct: bool, with_cd: bool
) -> None:
    raw = (
        (b"Content-Type: " + ct + b"\r\n" if with_ct else b"")
        + (b"Content-Disposition: " + cd + b"\r\n" if with_cd else b"")
        + b"Subject: x\r\n\r\nbody\r\n"
    )
    part = parse(raw).root
    assert (part.disposition, part.filename, part.charset) == expected(part), raw


def test_param_spans_on_common_forms() -> None:
    raw = (
        b'Content-Type: text/plain; charset="UTF-8"; name=a.txt\r\n'
        b'Content-Disposition: ATTACHMENT;\r\n\tfilename="report 1.pdf"; size=3\r\n\r\nx'
    )
    part = parse(raw).root
    assert (part.disposition, part.filename, part.charset) == (
        "attachment",
        "report 1.pdf",
        "utf-8",
    )
    assert (part.disposition, part.filename, part.charset) == expected(part)


def test_structure_larger_than_the_scratch_table() -> None:
    # 2,000 parts need about 60k table words, past the 16k-word per-thread table.
    n = 2000
    body = b"".join(b"--b\r\nX-N: %d\r\n\r\npart %d\r\n" % (i, i) for i in range(n))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body + b"--b--\r\n"
    msg = parse(raw)
    assert len(msg.parts) == n + 1 and msg.root.children == list(range(1, n + 1))
    assert msg.parts[-1].header("x-n") == str(n - 1)
    assert msg.parts[-1].decoded() == b"part %d" % (n - 1)
    small = parse(b"Subject: after\r\n\r\nx")  # the scratch table still serves small ones
    assert small.subject == "after"

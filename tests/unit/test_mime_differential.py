"""Differential test: mailwarden_native.parse against Python's email (compat32) on the corpus.

For every corpus message both parsers give a list of parts in document order, each as
(parent index, content type, filename, SHA-256 of the decoded body for leaves).  The lists
must be equal, except on the messages named in ``EXCEPTIONS`` below, and each exception is
*asserted*: its check verifies the specific cause written in docs/mime-conformance.md
("Differential test against Python's email") and rewrites only what that cause explains.  The
rest must then agree, so

- a new disagreement (a new message, or another field of a listed one) fails;
- a listed message that now agrees fails too (the exception is stale: update the docs).

Run as a script to print every disagreement: ``python tests/unit/test_mime_differential.py``.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailwarden_native import MalformationFlag, ParsedMessage, decode_header, parse
from tests.conftest import corpus_dir, need

F = MalformationFlag
SKIP_NAMES = {"LICENSE", "MIT-LICENSE", "COPYING"}
SKIP_SUFFIXES = {".json", ".md"}
ENCAPSULATING = {"message/rfc822", "message/global"}

Row = tuple[int, str, str | None, str | None]  # parent, content type, filename, body hash


def _hash(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass
class Case:
    """One message seen by both parsers; checks rewrite ``ours``/``theirs`` rows."""

    path: str
    raw: bytes
    msg: ParsedMessage
    em_parts: list[email.message.Message]
    ours: list[Row]
    theirs: list[Row]

    def our_body(self, i: int) -> bytes:
        return self.msg.parts[i].decoded()

    def their_body(self, i: int) -> bytes:
        payload = self.em_parts[i].get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""

    def differing(self, field: int) -> list[int]:
        return [
            i
            for i, (o, t) in enumerate(zip(self.ours, self.theirs, strict=False))
            if o[field] != t[field]
        ]


def our_rows(msg: ParsedMessage) -> list[Row]:
    return [
        (p.parent, p.content_type, p.filename, _hash(p.decoded()) if p.is_leaf else None)
        for p in msg.parts
    ]


def their_rows(raw: bytes) -> tuple[list[Row], list[email.message.Message]]:
    root = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = list(root.walk())
    index = {id(p): i for i, p in enumerate(parts)}
    parent = [-1] * len(parts)
    for i, p in enumerate(parts):
        if p.is_multipart():
            for child in p.get_payload():
                parent[index[id(child)]] = i
    rows: list[Row] = []
    for i, p in enumerate(parts):
        body = None
        if not p.is_multipart():
            payload = p.get_payload(decode=True)
            body = _hash(payload if isinstance(payload, bytes) else b"")
        rows.append((parent[i], p.get_content_type(), p.get_filename(), body))
    return rows, parts


def _drop(rows: list[Row], drop: set[int]) -> list[Row]:
    """Remove rows and renumber parents (a dropped row's children must be dropped too)."""
    new_index: dict[int, int] = {-1: -1}
    out: list[Row] = []
    for i, row in enumerate(rows):
        if i in drop:
            continue
        assert row[0] not in drop, "a kept part under a dropped one"
        new_index[i] = len(out)
        out.append((new_index[row[0]], *row[1:]))
    return out


def _descendants(rows: list[Row], top: int) -> set[int]:
    found = {top}
    for i in range(top + 1, len(rows)):
        if rows[i][0] in found:
            found.add(i)
    return found - {top}


# --- the named exceptions (docs/mime-conformance.md, "Differential test") -------------------


def _unparsed_message_bodies(c: Case, encoded: bool) -> None:
    """Where our part is a message/* leaf and email's is a container, drop email's subtree."""
    hits = 0
    i = 0
    while i < min(len(c.ours), len(c.theirs)):
        o, t = c.ours[i], c.theirs[i]
        part = c.msg.parts[i]
        if o[1] == t[1] and o[1].startswith("message/") and part.is_leaf and t[3] is None:
            is_encoded = o[1] in ENCAPSULATING
            if is_encoded == encoded:
                if encoded:
                    assert part.transfer_encoding in {"base64", "quoted-printable"}, c.path
                c.theirs = _drop(c.theirs, _descendants(c.theirs, i))
                c.ours[i] = (*o[:3], None)
                hits += 1
        i += 1
    assert hits, f"{c.path}: no message/* body that email parsed and we did not"


def message_subtype_not_encapsulated(c: Case) -> None:
    _unparsed_message_bodies(c, encoded=False)


def encoded_message_rfc822(c: Case) -> None:
    _unparsed_message_bodies(c, encoded=True)


def trailing_line_break_unclosed(c: Case) -> None:
    diff = c.differing(3)
    assert diff and c.msg.flags & F.NO_CLOSING_BOUNDARY, c.path
    for i in diff:
        ours, theirs = c.our_body(i), c.their_body(i)
        assert ours in (theirs + b"\n", theirs + b"\r\n"), (c.path, i)
        c.theirs[i] = c.ours[i]


def line_break_before_missing_delimiter(c: Case) -> None:
    diff = c.differing(3)
    assert diff, c.path
    for i in diff:
        assert c.msg.parts[i].flags & F.BOUNDARY_NOT_FOUND, (c.path, i)
        assert c.their_body(i) == c.our_body(i) + b"\n", (c.path, i)
        c.theirs[i] = c.ours[i]


def base64_recovery(c: Case) -> None:
    diff = c.differing(3)
    assert diff, c.path
    for i in diff:
        part = c.msg.parts[i]
        assert part.transfer_encoding == "base64" and part.flags & F.BAD_BASE64, (c.path, i)
        c.theirs[i] = (*c.theirs[i][:3], c.ours[i][3])


def close_delimiter_with_trailing_junk(c: Case) -> None:
    diff = c.differing(3)
    assert diff and c.msg.flags & F.NO_CLOSING_BOUNDARY, c.path
    for i in diff:
        assert c.our_body(i).startswith(c.their_body(i)), (c.path, i)
        assert c.msg.parts[i].flags & F.BAD_BASE64, (c.path, i)
        c.theirs[i] = c.ours[i]


def eight_bit_filename(c: Case) -> None:
    diff = c.differing(2)
    assert diff, c.path
    for i in diff:
        ours, theirs = c.ours[i][2], c.theirs[i][2]
        assert ours is not None and not ours.isascii() and ours.encode() in c.raw, (c.path, i)
        assert theirs is not None and ("\ufffd" in theirs or re.search("[\udc80-\udcff]", theirs))
        c.theirs[i] = (*c.theirs[i][:2], ours, c.theirs[i][3])


def rfc2047_filename(c: Case) -> None:
    diff = c.differing(2)
    assert diff, c.path
    for i in diff:
        ours, theirs = c.ours[i][2], c.theirs[i][2]
        assert theirs is not None and "=?" in theirs and ours == decode_header(theirs), (c.path, i)
        c.theirs[i] = (*c.theirs[i][:2], ours, c.theirs[i][3])


def content_type_trailing_junk(c: Case) -> None:
    diff = c.differing(1)
    assert diff, c.path
    for i in diff:
        ours, theirs = c.ours[i][1], c.theirs[i][1]
        assert theirs.startswith(ours) and len(theirs) > len(ours), (c.path, i)
        c.theirs[i] = (c.theirs[i][0], ours, *c.theirs[i][2:])


_OBS_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]+:")


def obs_field_blank_before_colon(c: Case) -> None:
    # email ends the header block at a "Name :" line; RFC 5322 4.5.1 obs-field allows it.
    first = c.their_body(0).split(b"\n", 1)[0]
    m = _OBS_FIELD.match(first)
    assert m and c.msg.root.header(m.group(1).decode()) is not None, c.path
    assert c.theirs[0][1] == "text/plain" and c.theirs[0][3] is not None, c.path
    c.theirs = list(c.ours)


def consecutive_delimiters(c: Case) -> None:
    empty = {
        i
        for i, p in enumerate(c.msg.parts)
        if i and p.is_leaf and not p.headers and p.decoded() == b""
    }
    assert empty, c.path
    c.ours = _drop(c.ours, empty)


def empty_multipart(c: Case) -> None:
    diff = c.differing(3)
    assert diff, c.path
    for i in diff:
        part = c.msg.parts[i]
        assert part.is_multipart and part.children == [] and c.their_body(i) == b"", (c.path, i)
        c.theirs[i] = c.ours[i]


def cte_trailing_blanks(c: Case) -> None:
    diff = c.differing(3)
    assert diff, c.path
    for i in diff:
        cte = str(c.em_parts[i].get("content-transfer-encoding", ""))
        assert cte != cte.rstrip(), (c.path, i)
        assert c.their_body(i) == bytes(c.msg.parts[i].body_raw), (c.path, i)  # undecoded
        c.theirs[i] = c.ours[i]


Check = Callable[[Case], None]
CPY = "mime/cpython-test_email/"
ENM = "mime/enmime/"
RUBY = "mime/ruby-mail/"
STW = "mime-expected/stalwart-mail-parser/"

# name -> (check, messages).  Names and reasons are in docs/mime-conformance.md.
EXCEPTIONS: dict[str, tuple[Check, set[str]]] = {
    "MESSAGE_SUBTYPE_NOT_ENCAPSULATED": (
        message_subtype_not_encapsulated,
        {
            CPY + "msg_16.txt",
            CPY + "msg_36.txt",
            CPY + "msg_43.txt",
            ENM + "dsn/delayed_dsn.raw",
            ENM + "dsn/dsn_with_multipart_alternative.raw",
            ENM + "dsn/multi_recipient_dsn.raw",
            ENM + "dsn/simple_dsn.raw",
            ENM + "dsn/simple_dsn_with_html.raw",
            RUBY + "mime_emails/raw_email_with_mimepart_without_content_type.eml",
            RUBY + "multipart_report_emails/multi_address_bounce1.eml",
            RUBY + "multipart_report_emails/multi_address_bounce2.eml",
            RUBY + "multipart_report_emails/multipart_report_multiple_status.eml",
            RUBY + "multipart_report_emails/report_422.eml",
            RUBY + "multipart_report_emails/report_530.eml",
            "mime/spamscope-mail-parser/mail_malformed_2",
            STW + "rfc/001.eml",
            STW + "thirdparty/009.eml",
        },
    ),
    "ENCODED_MESSAGE_RFC822": (encoded_message_rfc822, {STW + "rfc/008.eml"}),
    "TRAILING_LINE_BREAK_UNCLOSED": (
        trailing_line_break_unclosed,
        {
            ENM + "parts/badboundary.raw",
            ENM + "parts/multimixed-no-closing-boundary.raw",
            RUBY + "mime_emails/raw_email4.eml",
            STW + "malformed/001.eml",
            STW + "malformed/003.eml",
            STW + "malformed/006.eml",
            STW + "malformed/008.eml",
            STW + "malformed/009.eml",
            STW + "malformed/011.eml",
            STW + "malformed/012.eml",
            STW + "malformed/016.eml",
            STW + "thirdparty/005.eml",
        },
    ),
    "LINE_BREAK_BEFORE_MISSING_DELIMITER": (
        line_break_before_missing_delimiter,
        {CPY + "msg_15.txt"},
    ),
    "BASE64_RECOVERY": (
        base64_recovery,
        {
            ENM + "mail/mime-bad-content-transfer-encoding.raw",
            ENM + "parts/extra-base64-character.raw",
            STW + "thirdparty/002.eml",
        },
    ),
    "CLOSE_DELIMITER_WITH_TRAILING_JUNK": (
        close_delimiter_with_trailing_junk,
        {ENM + "mail/epilogue-sample.raw"},
    ),
    "EIGHT_BIT_FILENAME": (
        eight_bit_filename,
        {
            ENM + "mail/mime-bad-8bit-filename.raw",
            RUBY + "attachment_emails/attachment_nonascii_filename.eml",
        },
    ),
    "RFC2047_FILENAME": (
        rfc2047_filename,
        {
            RUBY + "attachment_emails/attachment_with_base64_encoded_name.eml",
            RUBY + "multi_charset/japanese_attachment.eml",
        },
    ),
    "CONTENT_TYPE_TRAILING_JUNK": (
        content_type_trailing_junk,
        {
            ENM + "mail/mime-bad-content-type.raw",
            ENM + "mail/mime-blank-media-name.raw",
            ENM + "parts/ctype-invalid-characters.raw",
            STW + "malformed/017.eml",
        },
    ),
    "OBS_FIELD_BLANK_BEFORE_COLON": (
        obs_field_blank_before_colon,
        {RUBY + "rfc2822/example13.eml", STW + "malformed/019.eml"},
    ),
    "CONSECUTIVE_DELIMITERS": (
        consecutive_delimiters,
        {CPY + "msg_37.txt", STW + "malformed/000.eml"},
    ),
    "EMPTY_MULTIPART": (empty_multipart, {CPY + "msg_42.txt"}),
    "CTE_TRAILING_BLANKS": (cte_trailing_blanks, {STW + "thirdparty/003.eml"}),
}


def corpus_files() -> list[Path]:
    base = corpus_dir()
    files: list[Path] = []
    for sub in ("mime", "mime-expected"):
        d = base / sub
        need(d.is_dir(), f"corpus directory {d} not found (set MAILWARDEN_CORPUS)")
        files += sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.name not in SKIP_NAMES and p.suffix not in SKIP_SUFFIXES
        )
    return files


def exceptions_for(rel: str) -> list[str]:
    return [name for name, (_, paths) in EXCEPTIONS.items() if rel in paths]


def compare(path: Path) -> str | None:
    """None when the message agrees (after its listed exceptions), else what is wrong."""
    rel = path.relative_to(corpus_dir()).as_posix()
    raw = path.read_bytes()
    msg = parse(raw)
    theirs, em_parts = their_rows(raw)
    case = Case(rel, raw, msg, em_parts, our_rows(msg), theirs)
    names = exceptions_for(rel)
    if case.ours == case.theirs:
        return f"{rel}: agrees with email but is listed under {names}" if names else None
    if not names:
        return f"{rel}: new disagreement\n  ours  {case.ours}\n  email {case.theirs}"
    for name in names:
        try:
            EXCEPTIONS[name][0](case)
        except AssertionError as exc:
            return f"{rel}: listed under {name}, but that is not the cause: {exc}"
    if case.ours != case.theirs:
        return f"{rel}: disagrees beyond {names}\n  ours  {case.ours}\n  email {case.theirs}"
    return None


def test_differential_against_email() -> None:
    files = corpus_files()
    listed = set().union(*(paths for _, paths in EXCEPTIONS.values()))
    rels = {p.relative_to(corpus_dir()).as_posix() for p in files}
    assert listed <= rels, f"exceptions name missing messages: {sorted(listed - rels)}"
    problems = [msg for msg in map(compare, files) if msg is not None]
    print(
        f"\n{len(files)} messages: {len(files) - len(listed)} agree with email, "
        f"{len(listed)} differ for a documented reason, {len(problems)} problems"
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_exception_is_documented(name: str) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "mime-conformance.md").read_text()
    assert f"`{name}`" in doc


if __name__ == "__main__":
    for f in corpus_files():
        result = compare(f)
        if result or "-v" in sys.argv:
            print(result or f"{f}: ok")

"""The one rewrite of a message's header: the subject tag and the added header lines.

Every way out (the Maildir, the relay queue, the quarantine, the content filter's
re-injection, the milter's header changes) takes its header values from here, through
:meth:`mailwarden.decide.Decision.with_headers` and the outbox (:mod:`mailwarden.act`), so a
value a detector made up (a virus name, a plugin's header) is made safe once and the subject
is tagged once. A leaf module: the decide and act stages both use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["header_text", "header_value", "line_ending", "prepend_headers", "tag_subject"]

_SUBJECT = re.compile(rb"^subject:[ \t]?", re.IGNORECASE | re.MULTILINE)


def header_text(value: str) -> str:
    """``value`` on one line: a CR or LF in it would end the header and start another."""
    return value.replace("\r", " ").replace("\n", " ")


def header_value(value: str) -> bytes:
    """:func:`header_text` as the bytes written into a message."""
    return header_text(value).encode("utf-8", "replace")


def line_ending(raw: bytes) -> bytes:
    """The message's own line ending (CR LF unless its start has only bare LF)."""
    return b"\r\n" if b"\r\n" in raw[:4096] else b"\n"


def tag_subject(raw: bytes, tag: str) -> bytes:
    """``raw`` with ``tag`` before its subject (a Subject header is added when there is none)."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    head = raw[: end if end >= 0 else len(raw)]
    found = _SUBJECT.search(head)
    if found is not None:
        return raw[: found.end()] + header_value(tag) + b" " + raw[found.end() :]
    return b"Subject: " + header_value(tag) + line_ending(raw) + raw


def prepend_headers(raw: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """``raw`` with ``headers`` before its own, in its own line ending."""
    eol = line_ending(raw)
    added = b"".join(
        header_text(name).encode("ascii", "replace") + b": " + header_value(value) + eol
        for name, value in headers
    )
    return added + raw if added else raw

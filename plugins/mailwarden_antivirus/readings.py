"""The other readings of a message the MIME parser flagged as ambiguous.

The parser keeps one reading (the first ``Content-Type``, the first ``boundary``, comments
nested as RFC 5322 nests them, nothing outside the boundaries) and flags what other readers may
read differently: a mail client that takes the last ``Content-Type``, strips a comment from a
header name, stops a comment at the first ``)``, or opens a part written in the preamble. An
attacker picks the reading the gateway does not make, so, as ClamAV does, the antivirus scans
each: every reading here is a rewritten copy of the raw message, parsed again and walked like
the original.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

from mailwarden_sdk import ParsedMessage, Part

__all__ = ["alternative_readings"]

_CT_FIELD = re.compile(rb"(?mi)^content-type[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n)?")
_BOUNDARY = re.compile(rb'(?i)boundary[ \t]*=[ \t]*(?:"[^"]*"|[^;\s]*)[ \t]*;?')
_FLAT_COMMENT = re.compile(rb"\([^)]*\)")
_JUNK_NAME = re.compile(rb"(?m)^([!-9;-~]*?)\([^:\r\n]*\)([!-9;-~]*)[ \t]*:")
_PART_HEADER = re.compile(rb"(?mi)^content-(?:type|transfer-encoding|disposition)[ \t]*:")

Edit = tuple[int, int, bytes]
#: the MalformationFlag names that call for another reading
EVASION_FLAGS = (
    "HEADER_NAME_JUNK",
    "DUPLICATE_CONTENT_TYPE",
    "DUPLICATE_BOUNDARY",
    "NESTED_COMMENT",
    "PART_OUTSIDE_BOUNDARIES",
)


def _apply(raw: bytes, edits: list[Edit]) -> bytes:
    out = raw
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _flagged(message: ParsedMessage, name: str) -> list[Part]:
    flag = type(message.flags)[name]
    return [part for part in message.parts if part.flags & flag]


def _ct_fields(raw: bytes, part: Part) -> list[tuple[int, int]]:
    start, end = part.header_start, part.header_end
    return [(m.start() + start, m.end() + start) for m in _CT_FIELD.finditer(raw[start:end])]


@functools.cache
def _evasions(kinds: Any) -> int:
    return sum(int(kinds[name]) for name in EVASION_FLAGS)


def alternative_readings(message: ParsedMessage) -> Iterator[tuple[str, bytes]]:
    """``(name, raw bytes)`` of each other reading of ``message`` its flags call for."""
    flags = message.flags
    kinds = type(flags)
    # every message comes here: one integer test (enum flag operations cost microseconds)
    if not int(flags) & _evasions(kinds):
        return
    raw = bytes(message.raw)
    if flags & kinds["HEADER_NAME_JUNK"]:
        # "Content-Type(x): ..." read as "Content-Type: ..."
        yield "header names without comments", _JUNK_NAME.sub(rb"\1\2:", raw)
    if flags & kinds["DUPLICATE_CONTENT_TYPE"]:
        # the last Content-Type of each part wins instead of the first
        edits = [
            (start, end, b"")
            for part in _flagged(message, "DUPLICATE_CONTENT_TYPE")
            for start, end in _ct_fields(raw, part)[:-1]
        ]
        yield "last Content-Type", _apply(raw, edits)
    if flags & kinds["DUPLICATE_BOUNDARY"]:
        # the last boundary parameter wins instead of the first
        edits = []
        for part in _flagged(message, "DUPLICATE_BOUNDARY"):
            for start, end in _ct_fields(raw, part)[:1]:
                found = list(_BOUNDARY.finditer(raw, start, end))
                edits += [(m.start(), m.end(), b"") for m in found[:-1]]
        yield "last boundary", _apply(raw, edits)
    if flags & kinds["NESTED_COMMENT"]:
        # a comment ends at its first ')' (readers that do not nest comments)
        edits = []
        for part in _flagged(message, "NESTED_COMMENT"):
            for start, end in _ct_fields(raw, part)[:1]:
                edits.append((start, end, _FLAT_COMMENT.sub(b"", raw[start:end])))
        yield "comments not nested", _apply(raw, edits)
    if flags & kinds["PART_OUTSIDE_BOUNDARIES"]:
        # what looks like a part in a preamble or epilogue, read as an entity of its own
        for part in _flagged(message, "PART_OUTSIDE_BOUNDARIES"):
            children = [message.parts[i] for i in part.children]
            regions = [
                (part.body_start, children[0].header_start if children else part.body_end),
                (children[-1].body_end if children else part.body_end, part.body_end),
            ]
            for where, (start, end) in zip(("preamble", "epilogue"), regions, strict=True):
                head = _PART_HEADER.search(raw, start, end)
                if head is not None:
                    yield f"part {part.index} {where}", raw[head.start() : end]

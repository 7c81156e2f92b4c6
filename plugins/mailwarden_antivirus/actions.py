"""What the antivirus plugin does to a message once the rule decided: removal of parts.

Removal works on the received bytes: each removed part's headers and body are replaced by a
short text/plain notice and everything else stays byte for byte as it came (signatures over
other parts, their encodings and line ends are untouched).
"""

from __future__ import annotations

from collections.abc import Iterable

from mailwarden_sdk import ParsedMessage

__all__ = ["remove_parts"]


def remove_parts(message: ParsedMessage, indexes: Iterable[int], notice: str) -> bytes | None:
    """``message`` with each part in ``indexes`` replaced by a text/plain part saying ``notice``.

    ``None`` when a part cannot be cut out on its own: the message's root part (nothing would
    be left to deliver) or an index that is not a part.
    """
    raw = message.raw
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    spans: list[tuple[int, int, str]] = []
    parts = message.parts
    for index in sorted(set(indexes)):
        if not 0 <= index < len(parts) or parts[index].parent < 0:
            return None
        part = parts[index]
        name = part.filename or f"part {index}"
        spans.append((part.header_start, part.body_end, name))
    # Nested parts (a part inside a removed attached message) go with their ancestor.
    kept: list[tuple[int, int, str]] = []
    for start, end, name in sorted(spans):
        if kept and start < kept[-1][1]:
            continue
        kept.append((start, end, name))
    out = bytearray()
    at = 0
    for start, end, name in kept:
        out += raw[at:start]
        out += _notice_part(notice.replace("{name}", name), eol)
        at = end
    out += raw[at:]
    return bytes(out)


def _notice_part(text: str, eol: bytes) -> bytes:
    body = text.encode("utf-8").replace(b"\r\n", b"\n").replace(b"\n", eol)
    return (
        b"Content-Type: text/plain; charset=utf-8"
        + eol
        + b"Content-Transfer-Encoding: 8bit"
        + eol
        + b"Content-Disposition: inline"
        + eol
        + b"X-Mailwarden-Removed: yes"
        + eol
        + eol
        + body
    )

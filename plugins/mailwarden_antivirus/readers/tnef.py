"""TNEF (``winmail.dat``) through ``tnefparse``: every attachment and the RTF body."""

from __future__ import annotations

from ..errors import Corrupt, Unsupported
from . import Budget, Members


def read_tnef(budget: Budget, data: bytes, kind: str) -> Members:
    """The attachments (and the compressed RTF body) of a TNEF stream."""
    try:
        import tnefparse
    except ImportError:
        raise Unsupported("tnef: tnefparse is not installed") from None
    try:
        tnef = tnefparse.TNEF(data)
    except Exception as exc:  # tnefparse raises ValueError, struct.error, its own errors
        raise Corrupt(f"tnef: {exc}") from None
    for index, attachment in enumerate(tnef.attachments):
        budget._member()
        content = bytes(attachment.data or b"")
        budget._grow(len(content))
        name = attachment.long_filename() or attachment.name or f"attachment {index}"
        yield str(name), content
    body = getattr(tnef, "rtfbody", None) or getattr(tnef, "htmlbody", None)
    if body:
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
        budget._member()
        budget._grow(len(raw))
        yield "body", raw
    bad = [obj for obj in getattr(tnef, "objects", []) if not getattr(obj, "good_checksum", True)]
    if bad:
        # tnefparse reads on past a damaged attribute: what it found was scanned above, but
        # the rest of the stream was not
        raise Corrupt(f"tnef: {len(bad)} attribute(s) with a wrong checksum")

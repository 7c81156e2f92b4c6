"""RTF: the objects in ``\\objdata`` groups, hex-decoded, and the file an OLE1 package holds."""

from __future__ import annotations

import binascii
import re

from ..errors import Corrupt
from . import Budget, Members

_OBJDATA = re.compile(rb"\\objdata\b")
_BRACE = re.compile(rb"[{}]")
_CONTROL = re.compile(rb"\\(?:[A-Za-z]+-?[0-9]*|.)")
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]+")


def _hex_group(data: bytes, start: int) -> bytes:
    """The hex digits of the group that starts before ``start``, up to its closing brace;
    whitespace, line breaks and nested control words (an evasion) are skipped."""
    depth = 1
    end = len(data)
    for brace in _BRACE.finditer(data, start):
        depth += 1 if brace.group() == b"{" else -1
        if depth == 0:
            end = brace.start()
            break
    group = _CONTROL.sub(b"", data[start:end])
    digits = _NOT_HEX.sub(b"", group)
    if len(digits) % 2:
        digits = digits[:-1]
    return binascii.unhexlify(digits)


def read_rtf(budget: Budget, data: bytes, kind: str) -> Members:
    """Each embedded object's bytes and, for an OLE1 object, its native data."""
    for index, match in enumerate(_OBJDATA.finditer(data)):
        budget._member()
        try:
            obj = _hex_group(data, match.end())
        except binascii.Error as exc:
            raise Corrupt(f"rtf: objdata {index}: {exc}") from None
        budget._grow(len(obj))
        yield f"objdata {index}", obj
        native = _ole1_native(obj)
        if native:
            budget._member()
            budget._grow(len(native))
            yield f"objdata {index}/native", native


def _ole1_native(obj: bytes) -> bytes:
    """The native data of an OLE1 embedded object (class name, topic, item, then the data)."""
    try:
        from oletools.oleobj import OleObject
    except ImportError:
        return b""
    try:
        parsed = OleObject()
        parsed.parse(obj)
    except Exception:
        # not OLE1 (or damaged): the raw object was yielded and is scanned as it is
        return b""
    return bytes(parsed.data or b"")

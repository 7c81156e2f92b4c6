"""RTF: the objects in ``\\objdata`` groups, hex-decoded, and the file an OLE1 package holds."""

from __future__ import annotations

import binascii
import re

from ..archives import _Corrupt
from . import Budget, Members

_OBJDATA = re.compile(rb"\\objdata\b")
_HEX = re.compile(rb"[0-9A-Fa-f]")


def _hex_group(data: bytes, start: int) -> bytes:
    """The hex digits of the group that starts before ``start``, up to its closing brace;
    whitespace, line breaks and nested control words (an evasion) are skipped."""
    depth = 1
    digits = bytearray()
    i = start
    n = len(data)
    while i < n and depth:
        c = data[i]
        if c == 0x7B:  # {
            depth += 1
        elif c == 0x7D:  # }
            depth -= 1
        elif c == 0x5C:  # backslash: skip the control word
            i += 1
            while i < n and data[i : i + 1].isalpha():
                i += 1
            while i < n and (data[i : i + 1].isdigit() or data[i] == 0x2D):
                i += 1
            continue
        elif _HEX.match(data, i):
            digits.append(c)
        i += 1
    if len(digits) % 2:
        digits = digits[:-1]
    return binascii.unhexlify(bytes(digits))


def read_rtf(budget: Budget, data: bytes, kind: str) -> Members:
    """Each embedded object's bytes and, for an OLE1 object, its native data."""
    for index, match in enumerate(_OBJDATA.finditer(data)):
        budget._member()
        try:
            obj = _hex_group(data, match.end())
        except binascii.Error as exc:
            raise _Corrupt(f"rtf: objdata {index}: {exc}") from None
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

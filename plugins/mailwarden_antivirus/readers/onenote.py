"""OneNote: the files embedded in FileDataStoreObject blocks (found by their GUID, as ClamAV
and most analysers do, since the revision store format is large)."""

from __future__ import annotations

import struct

from ..errors import Corrupt
from . import Budget, Members

# {BDE316E7-2665-4511-A4C4-8D4D0B7A9EAC}: the FileDataStoreObject header
_GUID = bytes.fromhex("e716e3bd65261145a4c48d4d0b7a9eac")
_HEADER = len(_GUID) + 8 + 4 + 8  # guid, cbLength, unused, reserved


def read_onenote(budget: Budget, data: bytes, kind: str) -> Members:
    """Each embedded file of a OneNote section."""
    at = data.find(_GUID)
    index = 0
    while at >= 0:
        budget._member()
        if at + _HEADER > len(data):
            raise Corrupt("onenote: a FileDataStoreObject header is cut off")
        (length,) = struct.unpack_from("<Q", data, at + len(_GUID))
        start = at + _HEADER
        if start + length > len(data):
            raise Corrupt(f"onenote: embedded file {index} runs past the end")
        budget._grow(length)
        yield f"embedded {index}", data[start : start + length]
        index += 1
        at = data.find(_GUID, start + length)

"""Readers for the containers, documents and encodings beyond zip/gzip/tar/7z/rar.

:func:`sniff` refines the native :func:`detect_type` with the formats it does not name (cpio,
arj, CHM, BinHex, SZDD, TNEF, SIS, OneNote, xar, ar, packed PE, installers, uuencode, yEnc,
mbox); :data:`READERS` maps a kind to the reader that opens it. A reader is a generator of
``(name, bytes)`` members that accounts every member and byte through the :class:`Budget` (the
unpacker's limits) and raises the unpacker's ``Corrupt``/``Encrypted``/``Unsupported``/
``LimitHit`` with a message that starts with the format's name (``pe: packed with UPX, not
unpacked``), so nothing recognised and unread is ever called clean.

Each family lives in its own module and imports its library when first used: a missing library
becomes a ``not_scanned`` reason naming it, never an import error at startup.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import IO, Protocol

__all__ = ["READERS", "Budget", "Members", "Reader", "sniff"]

Members = Iterator[tuple[str, bytes]]


class Budget(Protocol):
    """What a reader needs from the unpacker: the message's limits, checked as it goes."""

    def _member(self) -> None: ...
    def _grow(self, size: int) -> None: ...
    def _ratio(self, out: int, packed: int) -> None: ...
    def _check_clock(self) -> None: ...
    def _room(self) -> int: ...
    def _drain(self, stream: IO[bytes], packed: int) -> bytes: ...
    def _seconds_left(self) -> float: ...


Reader = Callable[[Budget, bytes, str], Members]

_ONENOTE = bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3")
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} \S", re.MULTILINE)
_BINHEX = b"(This file must be converted"


#: first bytes -> kind, for the formats detect_type does not name
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"070707", "cpio"),
    (b"070701", "cpio"),
    (b"070702", "cpio"),
    (b"\xc7\x71", "cpio"),
    (b"\x71\xc7", "cpio"),
    (b"\x60\xea", "arj"),
    (b"ITSF", "chm"),
    (b"SZDD\x88\xf0\x27\x33", "szdd"),
    (b"KWAJ\x88\xf0\x27\xd1", "kwaj"),
    (b"\x78\x9f\x3e\x22", "tnef"),
    (_ONENOTE, "onenote"),
    (b"xar!", "xar"),
    (b"!<arch>\n", "ar"),
    (b"\x7a\x1a\x20\x10", "sis"),
)
_PREFIXES = tuple(magic for magic, _ in _MAGIC)


def sniff(data: bytes | memoryview, kind: str) -> str:
    """``kind`` (from :func:`detect_type`), or a finer one for the formats it does not name."""
    if kind == "pe":
        from .pe import pe_kind

        return pe_kind(data)
    if kind != "unknown" and kind not in ("script", "html"):
        return kind
    # runs for every text part of every message: startswith and find, no slice copies
    head = bytes(data[:4096])
    if head.startswith(_PREFIXES):
        return next(name for magic, name in _MAGIC if head.startswith(magic))
    if head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"  # a skippable frame first (ClamAV's skip_prefix sample)
    if len(head) >= 16 and head.startswith(b"\x19\x04\x00\x10", 8):
        return "sis"
    if kind == "html":
        return kind
    if head.find(_BINHEX, 0, 1024) >= 0:
        return "binhex"
    if head.startswith(b"From ") and b"\n" in head:
        return "mbox"
    # one search for what both start with ("=ybegin ", "begin 644 "): most text has neither
    if b"begin" in head and (b"=ybegin " in head or _UU_BEGIN.search(head)):
        return "uuencode"
    return kind


def _lazy(module: str, function: str) -> Reader:
    """The reader ``function`` of ``module``, imported (with its library) when first used."""

    found: list[Reader] = []

    def read(budget: Budget, data: bytes, kind: str) -> Members:
        if not found:  # importlib's lookup costs more than a small HTML part's reading
            found.append(getattr(importlib.import_module(f".{module}", __name__), function))
        return found[0](budget, data, kind)

    return read


def _unsupported(reason: str) -> Reader:
    def read(budget: Budget, data: bytes, kind: str) -> Members:
        from ..errors import Unsupported

        raise Unsupported(reason)

    return read


READERS: dict[str, Reader] = {
    **dict.fromkeys(
        ("cpio", "ar", "cab", "lzh", "iso", "xar"), _lazy("libarchive_formats", "read_libarchive")
    ),
    "zstd": _lazy("libarchive_formats", "read_compressed"),
    **dict.fromkeys(("arj", "chm", "nsis"), _lazy("sevenzip_tool", "read_with_7z")),
    **dict.fromkeys(
        ("ole2", "doc", "xls", "ppt", "msi", "ole2-encrypted"), _lazy("ole", "read_ole")
    ),
    "pdf": _lazy("pdf", "read_pdf"),
    "tnef": _lazy("tnef", "read_tnef"),
    "rtf": _lazy("rtf", "read_rtf"),
    "onenote": _lazy("onenote", "read_onenote"),
    **dict.fromkeys(("pe-upx", "pe-packed"), _lazy("pe", "read_packed")),
    **dict.fromkeys(("binhex", "szdd", "uuencode", "html"), _lazy("encodings", "read_encoding")),
    "sis": _unsupported("sis: Symbian installer, no reader"),
    "kwaj": _unsupported("kwaj: MS-DOS KWAJ compression, no reader"),
    "alz": _lazy("sevenzip_tool", "read_with_unar"),
    "installshield": _unsupported("installshield: InstallShield installer, not unpacked"),
}

"""cpio, ar, cab, LHA/LZH, ISO 9660, xar, rar (without unrar) and zstd through libarchive.

``libarchive-c`` loads Debian's ``libarchive13`` when first imported; without the system library
the import fails and the object gets ``not_scanned`` with that reason.
"""

from __future__ import annotations

from typing import Any

from ..archives import _Corrupt, _Encrypted, _Unsupported
from . import Budget, Members

#: formats 7z reads too, for when libarchive gives up
_FALLBACK = {"lzh": "lhasa", **dict.fromkeys(("cab", "iso", "cpio", "ar", "xar", "rar"), "7z")}
# an archive larger than this that lists no file is hardly an empty archive (an ISO image
# whose directory records libarchive does not follow, junk after an end marker): it is
# reported, not called clean
_EMPTY_ARCHIVE = 64


def _library() -> Any:
    try:
        import libarchive
        import libarchive.exception
    except (ImportError, OSError) as exc:
        # libarchive-c raises OSError (ctypes) when libarchive.so.13 is not installed
        raise _Unsupported(f"libarchive: not available ({exc}); install libarchive13") from None
    return libarchive


def _entries(
    budget: Budget, data: bytes, fmt: str, seen: dict[str, int], **options: str
) -> Members:
    libarchive = _library()
    error = libarchive.exception.ArchiveError
    try:
        with libarchive.memory_reader(data, **options) as archive:
            for entry in archive:
                # ar members have no file type (0): anything but a directory, link or device
                # is data to scan
                if entry.isdir or entry.issym or entry.islnk or entry.isdev or entry.isfifo:
                    continue
                budget._member()
                name = entry.pathname or "member"
                if getattr(entry, "is_encrypted", False):
                    raise _Encrypted(f"{fmt}: {name} is encrypted")
                chunks: list[bytes] = []
                out = 0
                for block in entry.get_blocks():
                    budget._check_clock()
                    out += len(block)
                    budget._grow(len(block))
                    budget._ratio(out, len(data))
                    chunks.append(bytes(block))
                member = b"".join(chunks)
                seen[name] = len(member)
                yield name, member
    except error as exc:
        message = str(exc.msg if getattr(exc, "msg", None) else exc)
        if "passphrase" in message.lower() or "encrypt" in message.lower():
            raise _Encrypted(f"{fmt}: {message}") from None
        if "not supported" in message.lower() or "unsupported" in message.lower():
            raise _Unsupported(f"{fmt}: {message}") from None
        raise _Corrupt(f"{fmt}: {message}") from None


def read_libarchive(budget: Budget, data: bytes, fmt: str = "archive") -> Members:
    """Every regular file of an archive in any format libarchive reads; where libarchive
    stops early (LHA methods or headers it does not know, for one) ``lha`` or 7z read the
    members it did not read whole."""
    seen: dict[str, int] = {}
    try:
        yield from _entries(budget, data, fmt, seen)
    except (_Corrupt, _Unsupported) as exc:
        if fmt not in _FALLBACK:
            raise
        from .sevenzip_tool import read_with_7z

        try:
            for name, member in read_with_7z(budget, data, fmt, count=False, tool=_FALLBACK[fmt]):
                if seen.get(name) != len(member):
                    budget._member()
                    seen[name] = len(member)
                    yield name, member
        except (_Corrupt, _Unsupported):
            raise exc from None
    if not seen and len(data) > _EMPTY_ARCHIVE:
        raise _Unsupported(f"{fmt}: no file in it could be read ({len(data)} bytes)")


def read_compressed(budget: Budget, data: bytes, kind: str = "zstd") -> Members:
    """A single compressed stream (zstd, lz4, lzip...): its decompressed bytes."""
    # skippable frames (magic 0x184D2A50-5F, then a 32-bit size) are not read by libarchive
    at = 0
    while (
        len(data) >= at + 8 and data[at + 1 : at + 4] == b"\x2a\x4d\x18" and data[at] & 0xF0 == 0x50
    ):
        at += 8 + int.from_bytes(data[at + 4 : at + 8], "little")
    seen: dict[str, int] = {}
    yield from _entries(budget, data[at:], "zstd", seen, format_name="raw", filter_name="all")
    if not seen:
        raise _Corrupt("zstd: no frame could be decompressed")

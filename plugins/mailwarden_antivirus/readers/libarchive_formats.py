"""cpio, ar, cab, LHA/LZH, ISO 9660, xar, rar (without unrar), zstd and zip by its local
headers through libarchive.

``libarchive-c`` loads Debian's ``libarchive13`` when first imported; without the system library
the import fails and the object gets ``not_scanned`` with that reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import Corrupt, Encrypted, Unsupported
from . import Budget, Members

#: programs that read these formats too, tried in turn where libarchive gives up (an LHA method
#: or header it does not know, for one)
_FALLBACK: dict[str, tuple[str, ...]] = {
    "lzh": ("lhasa", "unar"),
    **dict.fromkeys(("cab", "iso", "cpio", "ar", "xar", "rar"), ("7z",)),
}
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
        raise Unsupported(f"libarchive: not available ({exc}); install libarchive13") from None
    return libarchive


@contextmanager
def _reader(libarchive: Any, data: bytes, options: str, **formats: str) -> Iterator[Any]:
    """libarchive-c's ``memory_reader`` with reader ``options`` (``iso9660:!joliet``), which
    its signature has no parameter for."""
    if not options:
        with libarchive.memory_reader(data, **formats) as archive:
            yield archive
        return
    import ctypes

    from libarchive import ffi
    from libarchive.read import ArchiveRead, new_archive_read

    set_options = ffi.ffi(
        "read_set_options", [ffi.c_archive_p, ctypes.c_char_p], ctypes.c_int, ffi.check_int
    )
    with new_archive_read(**formats) as pointer:
        set_options(pointer, options.encode())
        buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        ffi.read_open_memory(pointer, buffer, len(data))
        yield ArchiveRead(pointer, "utf-8")


def _entries(
    budget: Budget,
    data: bytes,
    fmt: str,
    seen: dict[str, int],
    options: str = "",
    digests: set[bytes] | None = None,
    **formats: str,
) -> Members:
    """The regular files libarchive reads, recorded in ``seen``; with ``digests``, a file whose
    SHA-256 is there already (read through another directory tree of the same image) is left
    out and the others' are added."""
    libarchive = _library()
    error = libarchive.exception.ArchiveError
    try:
        with _reader(libarchive, data, options, **formats) as archive:
            for entry in archive:
                # ar members have no file type (0): anything but a directory, link or device
                # is data to scan
                if entry.isdir or entry.issym or entry.islnk or entry.isdev or entry.isfifo:
                    continue
                budget._member()
                name = entry.pathname or "member"
                if getattr(entry, "is_encrypted", False):
                    raise Encrypted(f"{fmt}: {name} is encrypted")
                chunks: list[bytes] = []
                out = 0
                for block in entry.get_blocks():
                    budget._check_clock()
                    out += len(block)
                    budget._grow(len(block))
                    budget._ratio(out, len(data))
                    chunks.append(bytes(block))
                member = b"".join(chunks)
                if digests is not None:
                    digest = hashlib.sha256(member).digest()
                    if digest in digests:
                        continue
                    digests.add(digest)
                seen[name] = len(member)
                yield name, member
    except error as exc:
        message = str(exc.msg if getattr(exc, "msg", None) else exc)
        if "passphrase" in message.lower() or "encrypt" in message.lower():
            raise Encrypted(f"{fmt}: {message}") from None
        if "not supported" in message.lower() or "unsupported" in message.lower():
            raise Unsupported(f"{fmt}: {message}") from None
        raise Corrupt(f"{fmt}: {message}") from None


def read_libarchive(budget: Budget, data: bytes, fmt: str = "archive") -> Members:
    """Every regular file of an archive in any format libarchive reads; where libarchive
    stops early, or reads no file, the programs of :data:`_FALLBACK` read the members it did
    not read whole (the first one that reads any file without an error ends the search)."""
    seen: dict[str, int] = {}
    failure: Corrupt | Unsupported | None = None
    try:
        # ClamAV reads an ISO image's primary directory tree, libarchive the Joliet one when
        # there is one: a file listed only in the primary tree must not go unread
        digests: set[bytes] | None = set() if fmt == "iso" else None
        yield from _entries(budget, data, fmt, seen, digests=digests)
        if digests is not None:
            options = "iso9660:!joliet"
            yield from _entries(budget, data, fmt, seen, options, digests, format_name="iso9660")
    except (Corrupt, Unsupported) as exc:
        failure = exc
    if failure is not None or (not seen and len(data) > _EMPTY_ARCHIVE):
        from .sevenzip_tool import read_with_7z

        for tool in _FALLBACK.get(fmt, ()):
            read = 0
            try:
                for name, member in read_with_7z(budget, data, fmt, count=False, tool=tool):
                    read += 1
                    if seen.get(name) != len(member):
                        budget._member()
                        seen[name] = len(member)
                        yield name, member
            except (Corrupt, Unsupported):
                continue
            if read:
                failure = None
                break
    if failure is not None:
        raise failure
    if not seen and len(data) > _EMPTY_ARCHIVE:
        raise Unsupported(f"{fmt}: no file in it could be read ({len(data)} bytes)")


def read_zip_local_headers(budget: Budget, data: bytes, kind: str = "zip") -> Members:
    """The members of a zip with no readable central directory (a split archive's first
    volume, a cut download) by their local headers, as ClamAV reads them."""
    seen: dict[str, int] = {}
    yield from _entries(budget, data, "zip", seen, format_name="zip_streamable")


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
        raise Corrupt("zstd: no frame could be decompressed")

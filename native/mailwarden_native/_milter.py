"""The milter's packet loop in the C core: header packets taken in one call, quick ACKs
set on a descriptor without a socket object."""

from __future__ import annotations

from ._core import ffi, lib

__all__ = ["milter_headers", "tcp_quickack"]

_headers = lib.mw_milter_headers
_quickack = lib.mw_milter_quickack
_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_from_buffer = ffi.from_buffer
_buffer = ffi.buffer


def milter_headers(buffer: bytes | bytearray, offset: int, limit: int) -> tuple[int, int, str]:
    """The milter header packets (``L``) one after the other from ``buffer[offset]``:
    ``(end, count, text)``, ``end`` the offset after the last one taken, ``count`` how many
    were taken and ``text`` their data (``name NUL value NUL`` each) decoded as UTF-8 with
    ``surrogateescape``, as the milter codec decodes each. Stops before an incomplete
    packet, a length of 0 or above ``limit``, another command or a header packet that is
    not exactly two NUL-terminated strings: those are the codec's to handle."""
    if not 0 <= offset <= len(buffer):
        raise ValueError("offset outside the buffer")
    out = _alloc("uint8_t[]", len(buffer) - offset or 1)
    ends = _alloc("size_t[2]")
    data = _from_buffer("uint8_t[]", buffer)
    written = _headers(data, len(buffer), offset, limit, out, ends, ends + 1)
    if not written:
        return offset, 0, ""
    return ends[0], ends[1], str(_buffer(out, written), "utf-8", "surrogateescape")


def tcp_quickack(fd: int) -> int:
    """Set ``TCP_QUICKACK`` on the socket ``fd``: 0, or the errno of the refusal. Unlike
    ``socket.socket(fileno=fd).setsockopt`` no socket object (and no ``getsockname`` to
    make one) per call."""
    return int(_quickack(fd))

"""The milter's packet loop in the C core: header packets taken in one call, quick ACKs
set on a descriptor without a socket object."""

from __future__ import annotations

from ._core import ffi, lib

__all__ = ["milter_headers", "tcp_quickack"]

_headers = lib.mw_milter_headers
_quickack = lib.mw_milter_quickack
_from_buffer = ffi.from_buffer


def milter_headers(buffer: bytearray, offset: int, limit: int) -> tuple[int, list[str]]:
    """The milter header packets (``L``) one after the other from ``buffer[offset]``:
    ``(end, strings)``, ``end`` the offset after the last one taken and ``strings`` their
    names and values, alternating, decoded as UTF-8 with ``surrogateescape`` as the milter
    codec decodes each. Stops before an incomplete packet, a length of 0 or above
    ``limit``, another command or a header packet that is not exactly two NUL-terminated
    strings: those are the codec's to handle. The packets taken are consumed: the C core
    packs their data in their place, so ``buffer[offset:end]`` is overwritten."""
    if not 0 <= offset <= len(buffer):
        raise ValueError("offset outside the buffer")
    written = _headers(_from_buffer("uint8_t[]", buffer), len(buffer), offset, limit)
    if not written:
        return offset, []
    strings = str(buffer[offset : offset + written], "utf-8", "surrogateescape")[:-1].split("\0")
    # Each packet: 4 bytes of length and 1 of command before its two strings.
    return offset + written + 5 * (len(strings) // 2), strings


def tcp_quickack(fd: int) -> int:
    """Set ``TCP_QUICKACK`` on the socket ``fd``: 0, or the errno of the refusal. Unlike
    ``socket.socket(fileno=fd).setsockopt`` no socket object (and no ``getsockname`` to
    make one) per call."""
    return int(_quickack(fd))

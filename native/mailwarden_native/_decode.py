"""Transfer decoders backed by the C core."""

from __future__ import annotations

from typing import Any

from ._core import ffi, lib

Buffer = bytes | bytearray | memoryview

# Output buffers are overwritten entirely up to the produced length, so
# zero-filling them first would be wasted work.
_alloc = ffi.new_allocator(should_clear_after_alloc=False)


def _source(data: Buffer) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}")
    return ffi.from_buffer("uint8_t[]", data)


def decode_base64(data: Buffer) -> bytes:
    """Decode base64 tolerantly: whitespace and foreign bytes are skipped,
    missing padding is accepted, data after padding is still decoded."""
    return decode_base64_ex(data)[0]


def decode_base64_ex(data: Buffer) -> tuple[bytes, bool]:
    """Like :func:`decode_base64`, also telling whether the input was clean
    (``False`` when junk, misplaced padding or a dangling sextet was seen)."""
    src = _source(data)
    n = len(src)
    if n == 0:
        return b"", True
    out = _alloc("uint8_t[]", int(lib.mw_base64_max_len(n)))
    junk = ffi.new("int *")
    produced = int(lib.mw_base64_decode(src, n, out, junk))
    return bytes(ffi.buffer(out, produced)), not junk[0]


def decode_quoted_printable(data: Buffer) -> bytes:
    """Decode quoted-printable: ``=XX`` escapes (either hex case), soft line
    breaks (CRLF, LF or CR, trailing blanks allowed); invalid escapes are
    kept literally. Line breaks and other bytes pass through unchanged."""
    src = _source(data)
    n = len(src)
    if n == 0:
        return b""
    out = _alloc("uint8_t[]", int(lib.mw_qp_max_len(n)))
    produced = int(lib.mw_qp_decode(src, n, out))
    return bytes(ffi.buffer(out, produced))

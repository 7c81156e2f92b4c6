"""Transfer decoders backed by the C core."""

from __future__ import annotations

import threading
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


# The per-part path of Part.decoded() (which calls mw_decode_span itself, as a
# Python call per encoded part was a sixth of its cost on small mail): output
# goes to a per-thread scratch buffer that stays mapped between calls and is
# then copied once into the result (ffi.unpack of ``chars``): a fresh output
# buffer per part cost a page fault per 4 KiB written, which measured as much
# as the decoding itself on the corpus.  Thread-local because the C call runs
# without the GIL; bodies above _SCRATCH_MAX get their own buffer so no thread
# keeps more than that.  A caller needs room for end - start + 3 bytes: base64
# gives at most (n >> 2) * 3 + 3 (mw_base64_max_len; test_native_decode_roundtrip
# checks it), quoted-printable n.
_SCRATCH_MAX = 4 << 20
scratch_local = threading.local()


class _Scratch:
    """A thread's output buffer and a char view of it (ffi.unpack of a char
    pointer makes the bytes in one call)."""

    __slots__ = ("buf", "chars", "size")

    def __init__(self, size: int) -> None:
        self.buf = _alloc("uint8_t[]", size)
        self.chars = ffi.cast("char *", self.buf)
        self.size = size


def scratch(n: int) -> _Scratch:
    """The thread's scratch buffer (``scratch_local.s``) with room for n bytes."""
    s: _Scratch | None = getattr(scratch_local, "s", None)
    if s is not None and s.size >= n:
        return s
    if n > _SCRATCH_MAX:
        return _Scratch(n)
    s = scratch_local.s = _Scratch(max(n, 64 << 10))
    return s

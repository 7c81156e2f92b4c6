"""Literal multi-pattern matching backed by the C Aho-Corasick DFA."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from ._core import ffi, lib
from ._errors import check

Buffer = bytes | bytearray | memoryview

_alloc = ffi.new_allocator(should_clear_after_alloc=False)
_MATCH_SIZE = int(ffi.sizeof("mw_match"))


class Matcher:
    """Find every occurrence of a set of byte strings in a buffer.

    Pattern ids are indexes into ``patterns``.  Matches are reported as
    ``(pattern_id, start_offset)``, overlapping ones included.  The compiled
    database is read-only, so one Matcher may scan from several threads at
    once (the GIL is released during scans); do not ``close()`` it while a
    scan is running.
    """

    __slots__ = ("_db", "_n")

    def __init__(self, patterns: Sequence[bytes]) -> None:
        pats = [bytes(p) for p in patterns]
        for i, p in enumerate(pats):
            if not p:
                raise ValueError(f"pattern {i} is empty")
        bufs = [ffi.from_buffer("uint8_t[]", p) for p in pats]
        ptrs = ffi.new("const uint8_t *[]", bufs) if bufs else ffi.NULL
        lens = ffi.new("size_t[]", [len(p) for p in pats]) if pats else ffi.NULL
        out = ffi.new("mw_matcher **")
        # a set whose transition table would pass 1 GiB: NativeTooLargeError (a ValueError)
        check(lib.mw_matcher_new(ptrs, lens, len(pats), out), "mw_matcher_new")
        self._db: Any = ffi.gc(out[0], lib.mw_matcher_free)
        self._n = len(pats)

    def __len__(self) -> int:
        return self._n

    def _handle(self) -> Any:
        if self._db is None:
            raise ValueError("Matcher is closed")
        return self._db

    @staticmethod
    def _data(data: Buffer) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"expected a bytes-like object, got {type(data).__name__}")
        return ffi.from_buffer("uint8_t[]", data)

    def scan(self, data: Buffer) -> list[tuple[int, int]]:
        """All matches as (pattern_id, start_offset), sorted by offset then id."""
        db = self._handle()
        src = self._data(data)
        n = len(src)
        cap = 64
        while True:
            out = _alloc("mw_match[]", cap)
            found = int(lib.mw_matcher_scan(db, src, n, out, cap))
            if found <= cap:
                break
            cap = found
        if found == 0:
            return []
        # mw_match is {uint64 start; uint32 id; uint32 zero}: read as pairs of
        # uint64 (start, id) in one cast instead of touching cdata per match.
        flat = memoryview(ffi.buffer(out, found * _MATCH_SIZE)).cast("Q").tolist()
        return list(zip(flat[1::2], flat[0::2], strict=True))

    def first(self, data: Buffer) -> tuple[int, int] | None:
        """The first match in scan order (earliest end; longest, then lowest id,
        among those), without looking further; None when nothing matches."""
        db = self._handle()
        src = self._data(data)
        m = ffi.new("mw_match *")
        if not lib.mw_matcher_first(db, src, len(src), m):
            return None
        return int(m.pattern_id), int(m.start)

    def close(self) -> None:
        """Free the compiled database now rather than at garbage collection."""
        if self._db is not None:
            ffi.release(self._db)
            self._db = None

    def __enter__(self) -> Matcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

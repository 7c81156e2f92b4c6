"""Signature engine: compile ClamAV body signatures into a flat database, map it, scan.

The database is one position-independent blob. :meth:`SignatureDB.load` maps a database file
read-only, so every worker process shares one copy of it in the page cache and opening it
costs a validation pass, not a compile. Scans run in C with the GIL released; a
:class:`SigScanner` takes an object in chunks of any size and finds the same matches as one
call over the whole object.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ._core import ffi, lib
from ._errors import SignatureError, check

__all__ = [
    "OFF_ABS",
    "OFF_ANY",
    "OFF_EOF",
    "SigHit",
    "SigScanner",
    "SignatureCompiler",
    "SignatureDB",
    "SignatureError",
]

Buffer = bytes | bytearray | memoryview

OFF_ANY = int(lib.MW_SIG_OFF_ANY)
OFF_ABS = int(lib.MW_SIG_OFF_ABS)
OFF_EOF = int(lib.MW_SIG_OFF_EOF)
MAX_TARGET = int(lib.MW_SIG_MAX_TARGET)
#: Default bounds of one scan: distinct signatures found, and partial matches remembered (each
#: place a signature's next part may still chain from; an evenly spaced run of repeats counts
#: once). A scan that reaches one raises NativeLimitError (its hits would be incomplete).
MAX_HITS = int(lib.MW_SIG_MAX_HITS)
MAX_PARTIALS = int(lib.MW_SIG_MAX_PARTIALS)
_U32_MAX = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class SigHit:
    """A signature found in an object: where it first matched and how often it matched."""

    sig_id: int
    offset: int
    count: int


def _limit(value: int | None, name: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or not 1 <= value <= _U32_MAX:
        raise ValueError(f"{name} must be an int in [1, {_U32_MAX}], got {value!r}")
    return value


class SignatureCompiler:
    """Collects body signatures and builds a database blob.

    Ids are given in order to the signatures that compiled, starting at 0.
    """

    def __init__(self) -> None:
        out = ffi.new("mw_sigc **")
        check(lib.mw_sigc_new(out), "mw_sigc_new")
        self._c: Any = ffi.gc(out[0], lib.mw_sigc_free)
        self._id = ffi.new("uint32_t *")

    def __len__(self) -> int:
        return int(lib.mw_sigc_count(self._c))

    def add(
        self,
        pattern: str | bytes,
        *,
        target: int = 0,
        kind: int = OFF_ANY,
        offset: int = 0,
        shift: int = 0,
        line: str = "",
    ) -> int:
        """Add one signature in ClamAV body syntax; returns its id.

        ``kind``/``offset``/``shift``: where the first byte may be. ``OFF_ANY``: anywhere;
        ``OFF_ABS``: in ``[offset, offset + shift]``; ``OFF_EOF``: in
        ``[size - offset, size - offset + shift]``. A refused signature raises
        SignatureError (NativeSyntaxError when it is not signature syntax), whose message
        names ``line`` (e.g. ``"daily.ndb:12"``) when given, and the pattern.
        """
        if isinstance(pattern, str):
            text = pattern.encode("ascii", "replace")
            shown = pattern
        else:
            text = bytes(pattern)
            shown = text.decode("ascii", "replace")
        limit = int(lib.MW_ERR_SIG_LIMIT)
        if not 0 <= target <= MAX_TARGET:
            raise SignatureError(limit, f"target {target} out of range", pattern=shown, line=line)
        if offset < 0 or shift < 0:
            raise SignatureError(limit, "negative offset", pattern=shown, line=line)
        rc = lib.mw_sigc_add(self._c, text, len(text), target, kind, offset, shift, self._id)
        check(rc, "mw_sigc_add", pattern=shown, line=line)
        return int(self._id[0])

    def build(self) -> bytes:
        """The database blob (write it to a file, or open it with SignatureDB.from_bytes)."""
        blob = ffi.new("uint8_t **")
        size = ffi.new("size_t *")
        check(lib.mw_sigc_build(self._c, blob, size), "mw_sigc_build")
        try:
            return bytes(ffi.buffer(blob[0], size[0]))
        finally:
            lib.mw_sig_blob_free(blob[0])

    def close(self) -> None:
        if self._c is not None:
            ffi.release(self._c)
            self._c = None


def _target_mask(targets: Iterable[int]) -> int:
    mask = 1
    for t in targets:
        if 0 <= t <= MAX_TARGET:
            mask |= 1 << t
    return mask


class SignatureDB:
    """An opened signature database (from bytes, or memory-mapped from a file)."""

    def __init__(
        self,
        ptr: Any,
        size: int,
        keep: Any = None,
        *,
        max_hits: int | None = None,
        max_partials: int | None = None,
    ) -> None:
        # ``keep`` holds what backs ``ptr`` (an mmap or a cdata array) for the db's life.
        self._keep = keep
        self._buf = ptr
        self._limits = (_limit(max_hits, "max_hits"), _limit(max_partials, "max_partials"))
        out = ffi.new("mw_sigdb **")
        check(lib.mw_sigdb_open(ptr, size, out), "mw_sigdb_open")
        self._db: Any = ffi.gc(out[0], lib.mw_sigdb_free)
        self._local = threading.local()
        info = ffi.new("mw_sigdb_info *")
        lib.mw_sigdb_info_get(self._db, info)
        self.info: dict[str, int] = {
            name: int(getattr(info, name))
            for name in (
                "bytes",
                "n_sigs",
                "n_parts",
                "n_anchors",
                "n_tiny",
                "n_eof",
                "key_len",
                "filter_bits",
                "max_part",
                "stride",
            )
        }

    @classmethod
    def from_bytes(
        cls, blob: bytes, *, max_hits: int | None = None, max_partials: int | None = None
    ) -> SignatureDB:
        """Open a blob (copied). ``max_hits``/``max_partials`` bound every scan of this
        database (default MAX_HITS/MAX_PARTIALS); a scan that reaches one raises
        NativeLimitError. A blob that is not a valid database raises NativeFormatError."""
        # The C side reads 8-byte fields in place: copy into memory cffi allocates aligned.
        arr = ffi.new("uint64_t[]", (len(blob) + 7) // 8 or 1)
        ffi.memmove(arr, blob, len(blob))
        return cls(
            ffi.cast("uint8_t *", arr),
            len(blob),
            keep=arr,
            max_hits=max_hits,
            max_partials=max_partials,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        max_hits: int | None = None,
        max_partials: int | None = None,
    ) -> SignatureDB:
        """Map a database file read-only; the pages are shared by every process mapping it.
        Limits as for :meth:`from_bytes`."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise ValueError(f"{path}: empty signature database")
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(
            ffi.from_buffer("uint8_t[]", mapped),
            size,
            keep=mapped,
            max_hits=max_hits,
            max_partials=max_partials,
        )

    @staticmethod
    def write(blob: bytes, path: str | os.PathLike[str]) -> None:
        """Write a blob so that readers never see a half-written file (rename is atomic)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def __len__(self) -> int:
        return self.info["n_sigs"]

    def _handle(self) -> Any:
        if self._db is None:
            raise ValueError("SignatureDB is closed")
        return self._db

    def scanner(self, targets: Iterable[int] = ()) -> SigScanner:
        """A new streaming scan of one object (one per thread; reset() to reuse it)."""
        return SigScanner(self, _target_mask(targets))

    def scan(self, data: Buffer, targets: Iterable[int] = ()) -> list[SigHit]:
        """Hits in ``data`` as one whole object, for signatures of target 0 and ``targets``.

        Raises NativeLimitError (or NativeMemoryError) when not every hit could be recorded:
        a partial list is never returned."""
        sc: SigScanner | None = getattr(self._local, "scanner", None)
        if sc is None:
            sc = self._local.scanner = SigScanner(self, 1)
        return sc.scan_buffer(data, _target_mask(targets))

    def close(self) -> None:
        if self._db is not None:
            self._local = threading.local()
            ffi.release(self._db)
            self._db = None
            self._buf = None
            if isinstance(self._keep, mmap.mmap):
                try:
                    self._keep.close()
                except BufferError:
                    pass  # a live scanner still exports it; GC closes it later
            self._keep = None

    def __enter__(self) -> SignatureDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SigScanner:
    """One object scanned in chunks: ``feed()`` any number of times, then ``finish()``."""

    def __init__(self, db: SignatureDB, mask: int) -> None:
        self._db = db  # keeps the database (and its mapping) alive
        out = ffi.new("mw_sigscan **")
        check(lib.mw_sigscan_new(db._handle(), out), "mw_sigscan_new")
        self._s: Any = ffi.gc(out[0], lib.mw_sigscan_free)
        check(lib.mw_sigscan_set_limits(self._s, *db._limits), "mw_sigscan_set_limits")
        lib.mw_sigscan_reset(self._s, mask)

    def reset(self, targets: Iterable[int] = ()) -> None:
        lib.mw_sigscan_reset(self._s, _target_mask(targets))

    @staticmethod
    def _data(data: Buffer) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"expected a bytes-like object, got {type(data).__name__}")
        return ffi.from_buffer("uint8_t[]", data)

    def feed(self, data: Buffer) -> None:
        """Scan the next chunk; raises NativeLimitError once the object's hits are
        incomplete (and on every later feed/finish until reset())."""
        src = self._data(data)
        check(lib.mw_sigscan_feed(self._s, src, len(src)), "mw_sigscan_feed")

    def finish(self) -> list[SigHit]:
        """End the object; its hits, or NativeLimitError when they are incomplete."""
        check(lib.mw_sigscan_finish(self._s), "mw_sigscan_finish")
        return self.hits()

    def hits(self) -> list[SigHit]:
        n = int(lib.mw_sigscan_hits(self._s, ffi.NULL, 0))
        if n == 0:
            return []
        out = ffi.new("mw_sighit[]", n)
        n = min(n, int(lib.mw_sigscan_hits(self._s, out, n)))
        return [SigHit(int(h.sig_id), int(h.first_offset), int(h.count)) for h in out[0:n]]

    def scan_buffer(self, data: Buffer, mask: int) -> list[SigHit]:
        src = self._data(data)
        check(lib.mw_sigscan_buffer(self._s, mask, src, len(src)), "mw_sigscan_buffer")
        return self.hits()

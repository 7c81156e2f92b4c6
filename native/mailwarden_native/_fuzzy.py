"""Bottom-k MinHash sketches of word shingles, hashed in the C core."""

from __future__ import annotations

from collections.abc import Sequence

from ._core import ffi, lib

__all__ = ["shingle_sketch"]

_sketch = lib.mw_shingle_sketch
_MAX_SHINGLE = int(lib.MW_SKETCH_MAX_SHINGLE)
_MAX_K = int(lib.MW_SKETCH_MAX_K)
_alloc = ffi.new_allocator(should_clear_after_alloc=False)


def shingle_sketch(words: Sequence[str], shingle: int = 4, k: int = 24) -> list[int]:
    """The ``k`` smallest distinct digests, ascending, of the word shingles of ``words``.

    A shingle is ``shingle`` consecutive words joined by one space; its digest is
    ``int.from_bytes(hashlib.blake2b(shingle.encode(), digest_size=8).digest(), "big")``.
    Fewer than ``k`` digests come back when the words have fewer distinct shingles. Words
    must hold no space (words a tokenizer cut at non-word characters never do).
    """
    if not 1 <= shingle <= _MAX_SHINGLE or not 1 <= k <= _MAX_K:
        raise ValueError(f"shingle must be 1..{_MAX_SHINGLE} and k 1..{_MAX_K}")
    # One buffer for the whole word list: the C side finds the shingles in it, so no
    # per-shingle string is made.
    data = " ".join(words).encode()
    out = _alloc("uint64_t[]", k)
    n = _sketch(data, len(data), shingle, k, out)
    return ffi.unpack(out, n)  # type: ignore[no-any-return]

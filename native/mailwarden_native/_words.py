"""Words of ASCII text, cut in the C core as a tokenizer's regex cuts them."""

from __future__ import annotations

from ._core import ffi, lib

__all__ = ["ascii_words"]

_words = lib.mw_ascii_words
_alloc = ffi.new_allocator(should_clear_after_alloc=False)


def ascii_words(text: str, min_len: int, max_len: int, amounts: bool = False) -> list[str]:
    """The words ``re.findall(r"[a-z0-9]{min_len,max_len}|\\$[0-9]+", text.lower())`` finds,
    in text order (the ``\\$[0-9]+`` alternative only with ``amounts``): runs of ASCII letters
    and digits, lowercased, cut into pieces of ``max_len`` from their start, pieces shorter
    than ``min_len`` dropped. ``text`` must be ASCII (``str.isascii()``; else
    ``UnicodeEncodeError``, a ``ValueError``): Unicode text needs the regex.
    """
    if not 1 <= min_len <= max_len <= 0xFFFF_FFFF:
        raise ValueError("min_len must be 1..max_len, max_len at most 2**32 - 1")
    data = text.encode("ascii")
    # A word and its separator take at most twice the bytes they were cut from.
    out = _alloc("uint8_t[]", 2 * len(data) + 1)
    n = _words(data, len(data), min_len, max_len, 1 if amounts else 0, out)
    return ffi.buffer(out, n)[:].decode("ascii").split()

"""Words of text, cut in the C core as a tokenizer's regex cuts them; paragraph lines."""

from __future__ import annotations

import array
import re
import sys
import threading
from typing import Any

from ._core import ffi, lib

__all__ = ["ascii_words", "paragraph_lines", "unicode_words"]

_words = lib.mw_ascii_words
_unicode = lib.mw_unicode_words
_paragraphs = lib.mw_paragraph_lines
_tables: tuple[Any, int, Any, int] | None = None
_tables_lock = threading.Lock()
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


def _ranges(pattern: str, every: str) -> tuple[Any, int]:
    spans = [n for m in re.finditer(pattern, every) for n in m.span()]
    return ffi.new("uint32_t[]", spans), len(spans) // 2


def _classes() -> tuple[Any, int, Any, int]:
    # Which code points this Python's re counts as [^\W_] and \d, asked of re itself over
    # every code point (0.1 s, once per process): the C side then cuts exactly its words,
    # whatever Unicode version the interpreter has.
    global _tables
    with _tables_lock:
        if _tables is None:
            every = array.array("I", range(sys.maxunicode + 1)).tobytes()
            text = every.decode(
                "utf-32-le" if sys.byteorder == "little" else "utf-32-be", "surrogatepass"
            )
            _tables = (*_ranges(r"[^\W_]+", text), *_ranges(r"\d+", text))
        return _tables


def unicode_words(text: str, min_len: int, max_len: int, amounts: bool = False) -> list[str]:
    """The words ``re.findall(r"[^\\W_]{min_len,max_len}|\\$\\d+", text)`` finds, in text
    order (the ``\\$\\d+`` alternative only with ``amounts``), cut in the C core. No case
    folding: pass ``text.lower()`` for lowercase words. The first call in a process builds
    the character classes (about 0.1 s).
    """
    if not 1 <= min_len <= max_len <= 0xFFFF_FFFF:
        raise ValueError("min_len must be 1..max_len, max_len at most 2**32 - 1")
    word, nword, digit, ndigit = _classes()
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    data = text.encode(codec, "surrogatepass")
    count = len(text)
    out = _alloc("uint32_t[]", 2 * count + 1)
    n = _unicode(
        ffi.from_buffer("uint32_t[]", data),
        count,
        word,
        nword,
        digit,
        ndigit,
        min_len,
        max_len,
        1 if amounts else 0,
        out,
    )
    if not n:
        return []
    return ffi.buffer(out, 4 * n)[:].decode(codec, "surrogatepass").split(" ")


# The whitespace mw_paragraph_lines knows (space_len in words.c), and whether this Python's
# str.split() and re's \s have the same in the Basic Multilingual Plane (where Unicode has
# every space it has ever had; 3 ms, once per process): a Unicode version that adds or
# drops one there makes the function take the regex path instead.
_C_SPACES = frozenset(
    (*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B))
) | {0x2028, 0x2029, 0x202F, 0x205F, 0x3000}
_BLANK_LINE = re.compile(r"\n\s*\n")
_spaces_agree: bool | None = None


def _c_spaces_agree() -> bool:
    global _spaces_agree
    if _spaces_agree is None:
        codec = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"
        bmp = array.array("H", range(0x10000)).tobytes().decode(codec, "surrogatepass")
        regex = {ord(c) for c in re.findall(r"\s", bmp)}
        split = len(bmp) - len("".join(bmp.split()))
        _spaces_agree = regex == _C_SPACES and split == len(_C_SPACES)
    return _spaces_agree


def paragraph_lines(text: str) -> str:
    """The paragraphs of ``text`` one a line, each with its words joined by one space:
    ``"\\n".join(" ".join(p.split()) for p in re.split(r"\\n\\s*\\n", text) if p.split())``,
    in one pass in the C core (the first call in a process checks the whitespace characters
    against this Python's, about 3 ms)."""
    if not _c_spaces_agree():
        return "\n".join(line for p in _BLANK_LINE.split(text) if (line := " ".join(p.split())))
    data = text.encode("utf-8", "surrogatepass")
    out = _alloc("uint8_t[]", len(data) + 1)
    n = _paragraphs(data, len(data), out)
    return ffi.buffer(out, n)[:].decode("utf-8", "surrogatepass")

"""One hyperscan database per rule target: one pass over a text answers every regex rule.

Rules are Python ``re`` patterns over ``str`` (see :mod:`.rules`); hyperscan scans bytes. A
text is scanned as one byte per character: ASCII as itself, and every other character as the
byte of its class in the pattern set's :class:`Alphabet` (0x80-0xff): the characters no
pattern tells apart share a byte (a letter, a digit, a space, anything else, as ``re`` itself
classes them), and those the patterns name (``\\u200b``, ``é`` and its case partners, the
ends of ``[\\x80-\\xff]``...) get bytes of their own. Each pattern is rewritten from Python's
own parse tree into a byte pattern whose every character position takes the bytes of the
characters Python's would take (asked of Python itself, one representative per class). So
``\\w``, ``\\s``, ``.``, negated classes, non-ASCII literals and counted repeats are exact on
any text. Where only whether a text holds a match matters, an optional item at either end can
go and a counted repeat there can be one copy; lookarounds and a ``\\b`` between two
characters either of which may be a letter outside ASCII are dropped or kept as hyperscan's
(ASCII) ``\\b``. So the rewrite matches at least wherever the Python pattern does (a superset):
a rule hyperscan does not report cannot hit. Where nothing was loosened, hyperscan's answer is
final on a text holding none of the rewrite's ``ambiguous`` bytes (classes a pattern could not
tell apart: a ``\\b`` beside a non-ASCII letter, more named characters than bytes); every
other reported rule is confirmed by its own ``re`` pattern. Results are those of ``re`` either
way. Patterns the rewrite or hyperscan cannot take (back-references, ones that can match the
empty string) stay on the caller's ``re`` path.

hyperscan is imported lazily: without it (a platform with no wheel) every rule goes the
``re`` path and nothing else changes.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import importlib
import itertools
import logging
import os
import re
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mailwarden_sdk import code_point_bytes
from mailwarden_sdk.files import atomic_write

from . import shapes

__all__ = [
    "CACHE_MAX_BYTES",
    "FRAME_END",
    "FRAME_RESERVE",
    "FRAME_START",
    "HAVE_HYPERSCAN",
    "Alphabet",
    "PatternSet",
    "Untranslatable",
    "default_cache_dir",
    "frame_tag",
    "framed_rewrites",
    "high_bytes",
    "rewrites",
    "text_bytes",
    "to_bytes_pattern",
    "trim_cache",
]

log = logging.getLogger(__name__)

# Python's own regex parser: the rewrite starts from the tree re itself compiles.
C: Any = importlib.import_module("re._constants")
P: Any = importlib.import_module("re._parser")
_COMPILER: Any = importlib.import_module("re._compiler")
# re's own case tables: what IGNORECASE equates.
_SRE: Any = importlib.import_module("_sre")
_EXTRA_CASES: dict[int, tuple[int, ...]] = importlib.import_module("re._casefix")._EXTRA_CASES

_hs: Any
try:
    _hs = importlib.import_module("hyperscan")
except ImportError:  # pragma: no cover - the wheel is a dependency; kept for odd platforms
    _hs = None

HAVE_HYPERSCAN = _hs is not None

# Non-ASCII characters become bytes from here up: 128 classes at most (see Alphabet).
_HIGH = 0x80
_CLASSES = 0x100 - _HIGH
_LIMIT = 0x110000
# re's classes of a non-ASCII character: \w but not \d, \d, \s, none of them.
_LETTER, _DIGIT, _SPACE, _OTHER = 0, 1, 2, 3
_WORD = frozenset(ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_CATEGORY_SOURCE = {
    C.CATEGORY_DIGIT: r"\d",
    C.CATEGORY_NOT_DIGIT: r"\D",
    C.CATEGORY_SPACE: r"\s",
    C.CATEGORY_NOT_SPACE: r"\S",
    C.CATEGORY_WORD: r"\w",
    C.CATEGORY_NOT_WORD: r"\W",
}
_FLAG_MASK = re.IGNORECASE | re.DOTALL | re.ASCII
_MAX_BOUND = 8
# A counted repeat of one character class is cheap for hyperscan at any count (its repeat
# engines): kept exact up to this (SpamAssassin's __LONGLINE is [^\r\n]{998}).
_MAX_CHAR_BOUND = 1000
# In the "widened" rewrite every counted repeat (not X?) is X* or X+: the copies hyperscan unrolls
# are what makes the stock set's giant rules "too large"; one copy and a loop match at
# least as much, and still far less than hyperscan's own prefilter mode.
_MAX_EXPRESSION = 16000
# A counted repeat at either end of a pattern is kept exact up to this many copies, this
# long rewritten in all.
_MAX_END_COPIES = 12
_SMALL_COPIES = 2000
# A copy of a repeated pattern this long (rewritten) is tried only where it can start.
_BIG_COPY = 256
# Part of the cache key: a new layout or compile policy must not read old entries.
_CACHE_FORMAT = 6

Intervals = tuple[tuple[int, int], ...]


class Untranslatable(ValueError):
    """A pattern with no byte rewrite here (back-references, conditionals, flags)."""


@dataclass(frozen=True)
class _Char:
    """One character position: the ASCII bytes it takes, the class bytes it takes, and the
    class bytes where it answers for some of the class's characters only."""

    ascii: frozenset[int]
    high: frozenset[int]
    loose: frozenset[int] = frozenset()


def _escape_char(cp: int) -> str:
    return f"\\U{cp:08x}" if cp > 0xFFFF else f"\\u{cp:04x}"


@lru_cache(maxsize=1)
def _categories() -> bytes:
    """re's class (_LETTER...) of every code point: one byte each, built once (0.2 s)."""
    everything = array.array("I", range(_LIMIT)).tobytes().decode("utf-32-le", "surrogatepass")
    out = bytearray([_OTHER]) * _LIMIT
    for category, source in ((_LETTER, r"[^\W\d]+"), (_DIGIT, r"\d+"), (_SPACE, r"\s+")):
        for found in re.finditer(source, everything):
            start, end = found.span()
            out[start:end] = bytes((category,)) * (end - start)
    return bytes(out)


@lru_cache(maxsize=1)
def _case_related() -> str:
    """Every non-ASCII character re's IGNORECASE may equate with another one: the only ones
    where a case-insensitive item can answer otherwise than its case-sensitive form."""
    cased = set(itertools.compress(range(_LIMIT), map(_SRE.unicode_iscased, range(_LIMIT))))
    related = cased | {_SRE.unicode_tolower(c) for c in cased}
    for lower, others in _EXTRA_CASES.items():
        related.add(lower)
        related.update(others)
    return "".join(chr(c) for c in sorted(related) if c >= _HIGH)


@lru_cache(maxsize=4096)
def _parse(source: str, flags: int) -> Any:
    """Python's parse tree of a pattern: read by the alphabet, then by the rewrite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # as when the rule was compiled
        return P.parse(source, flags)


@lru_cache(maxsize=16384)
def _compiled(source: str, flags: int) -> re.Pattern[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "[[" is a class to Python as to Perl
        return re.compile(source, flags)


def _intervals(points: Iterable[int]) -> Intervals:
    out: list[tuple[int, int]] = []
    for cp in sorted(points):
        if out and out[-1][1] == cp:
            out[-1] = (out[-1][0], cp + 1)
        else:
            out.append((cp, cp + 1))
    return tuple(out)


def _item(op: Any, av: Any) -> tuple[str, Intervals]:
    """A one-character item as a pattern of its own, and the non-ASCII code points its
    literals and ranges name (what an alphabet must tell apart from the rest)."""
    if op is C.LITERAL or op is C.NOT_LITERAL:
        named = ((av, av + 1),) if av >= _HIGH else ()
        return ("[" if op is C.LITERAL else "[^") + _escape_char(av) + "]", named
    if op is C.ANY:
        return ".", ()
    if op is C.CATEGORY:
        return _CATEGORY_SOURCE[av], ()
    # IN: a character class
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    for item_op, item_av in av:
        if item_op is C.NEGATE:
            parts.insert(0, "^")
        elif item_op is C.LITERAL:
            parts.append(_escape_char(item_av))
            if item_av >= _HIGH:
                spans.append((item_av, item_av + 1))
        elif item_op is C.RANGE:
            low, high = item_av
            parts.append(_escape_char(low) + "-" + _escape_char(high))
            if high >= _HIGH:
                spans.append((max(low, _HIGH), high + 1))
        elif item_op is C.CATEGORY:
            if item_av not in _CATEGORY_SOURCE:
                raise Untranslatable(f"category {item_av}")
            parts.append(_CATEGORY_SOURCE[item_av])
        else:
            raise Untranslatable(f"class item {item_op}")
    points: set[int] = set()
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if end - start <= 4096:
            points.update(range(start, end))
        else:
            merged.append((start, end))
    return "[" + "".join(parts) + "]", tuple(sorted(set(_intervals(points)) | set(merged)))


@lru_cache(maxsize=16384)
def _folds(source: str, flags: int) -> Intervals:
    """The non-ASCII characters where ``source`` answers otherwise with IGNORECASE than
    without (Kelvin sign for k, É for é): asked of re over every character it may fold."""
    if not flags & re.IGNORECASE or source in (".", r"\w", r"\W", r"\s", r"\S", r"\d", r"\D"):
        return ()
    related = _case_related()
    # Each match is one character: the texts line up and differ where the answers do.
    folded = _compiled(source, flags).sub("\0", related)
    plain = _compiled(source, flags & ~re.IGNORECASE).sub("\0", related)
    if folded == plain:
        return ()
    return _intervals(ord(c) for c, a, b in zip(related, folded, plain, strict=True) if a != b)


@lru_cache(maxsize=16384)
def _ascii_members(source: str, flags: int) -> frozenset[int]:
    compiled = _compiled(source, flags)
    return frozenset(b for b in range(_HIGH) if compiled.fullmatch(chr(b)))


@lru_cache(maxsize=65536)
def _high_members(source: str, flags: int, representatives: str) -> frozenset[int]:
    compiled = _compiled(source, flags)
    return frozenset(_HIGH + i for i, c in enumerate(representatives) if compiled.fullmatch(c))


def _collect(items: Iterable[tuple[Any, Any]], flags: int, out: list[Intervals]) -> None:
    """The code-point sets the single-character items of a parse tree name (see _item)."""
    for op, av in items:
        if op in _SINGLE:
            try:
                source, named = _item(op, av)
            except Untranslatable:
                continue
            out.append(named)
            out.append(_folds(source, flags & _FLAG_MASK))
        elif op is C.BRANCH:
            for alternative in av[1]:
                _collect(alternative, flags, out)
        elif op is C.SUBPATTERN:
            _collect(av[3], (flags | av[1]) & ~av[2], out)
        elif op in _REPEATS:
            _collect(av[2], flags, out)
        elif op is C.ATOMIC_GROUP:
            _collect(av, flags, out)


class Alphabet:
    """How the characters of a text become the bytes a pattern set's rewrites scan: ASCII as
    itself, any other character as the byte of its class (0x80 up). Two characters share a
    class when re's ``\\w``/``\\d``/``\\s`` class them alike and every set of non-ASCII code
    points the patterns name (literals, ranges, what IGNORECASE adds) holds both or neither.
    Past 128 classes, the sets named by the fewest items are left out: those items then take
    every class byte, as loose (their patterns are confirmed where such a byte occurs)."""

    def __init__(self, named: Sequence[Intervals] = (), reserve: int = 0) -> None:
        """``reserve``: how many of the top bytes (0xff down) no class may take."""
        uses = Counter(n for n in named if n)
        kept = sorted(uses, key=lambda n: (-uses[n], n))
        while True:
            bounds, classes, keys = _partition(kept)
            if len(keys) <= _CLASSES - reserve:
                break
            kept.pop()
        self.dropped = frozenset(uses) - frozenset(kept)
        self.representatives = "".join(chr(cp) for cp, _category in keys)
        self.bytes = frozenset(range(_HIGH, _HIGH + len(keys)))
        self.word_bytes = frozenset(
            _HIGH + i for i, (_cp, category) in enumerate(keys) if category in (_LETTER, _DIGIT)
        )
        self._table = _tables(bounds, classes)

    @classmethod
    def for_patterns(cls, patterns: Iterable[re.Pattern[str]], reserve: int = 0) -> Alphabet:
        """The alphabet that tells apart every character ``patterns`` tell apart (in at most
        128 - ``reserve`` classes)."""
        named: list[Intervals] = []
        for pattern in patterns:
            try:
                tree = _parse(pattern.pattern, pattern.flags)
            except re.error:
                continue
            _collect(tree.data, tree.state.flags, named)
        return cls(named, reserve)

    def char(self, op: Any, av: Any, flags: int) -> _Char:
        """The bytes one single-character item takes."""
        source, named = _item(op, av)
        flags &= _FLAG_MASK
        ascii_members = _ascii_members(source, flags)
        if named in self.dropped or _folds(source, flags) in self.dropped:
            return _Char(ascii_members, self.bytes, self.bytes)
        return _Char(ascii_members, _high_members(source, flags, self.representatives))

    def encode(self, text: str) -> bytes:
        """``text`` as the rewrites scan it: one byte per character."""
        if text.isascii():
            return text.encode("ascii")
        # One pass in the C core over the code points (a big-integer AND/OR per 256-character
        # page in Python: 12-13 us for a generated 2 KB body, now 2-3).
        return code_point_bytes(text, self._table)


def _partition(
    named: Sequence[Intervals],
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], list[tuple[int, int]]]:
    """Elementary intervals between the ends of the named sets, each interval's class byte per
    re category (0: none there), and the classes (a representative, the category)."""
    categories = _categories()
    ends = {_HIGH, _LIMIT}
    for spans in named:
        for start, end in spans:
            ends.update((start, end))
    bounds = tuple(sorted(ends))
    position = {b: i for i, b in enumerate(bounds)}
    vectors = [0] * (len(bounds) - 1)
    for bit, spans in enumerate(named):
        for start, end in spans:
            for i in range(position[start], position[end]):
                vectors[i] |= 1 << bit
    seen: dict[tuple[int, int], int] = {}
    keys: list[tuple[int, int]] = []
    classes: list[tuple[int, ...]] = []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        row = [0, 0, 0, 0]
        for category in (_LETTER, _DIGIT, _SPACE, _OTHER):
            at = categories.find(bytes((category,)), start, end)
            if at < 0:
                continue
            key = (category, vectors[i])
            if key not in seen:
                seen[key] = len(keys)
                keys.append((at, category))
            row[category] = _HIGH + seen[key]
        classes.append(tuple(row))
    return bounds, tuple(classes), keys


@lru_cache(maxsize=32)
def _tables(bounds: tuple[int, ...], classes: tuple[tuple[int, ...], ...]) -> bytes:
    """The byte of every code point (1.1 MB, shared by alphabets alike)."""
    categories = _categories()
    table = bytearray(range(_HIGH)) + bytearray(_LIMIT - _HIGH)
    for (start, end), row in zip(itertools.pairwise(bounds), classes, strict=True):
        table[start:end] = categories[start:end].translate(bytes(row) + bytes(252))
    return bytes(table)


@lru_cache(maxsize=4096)
def _byte_class(members: frozenset[int]) -> str:
    if len(members) == 1:
        return _byte(next(iter(members)))
    out: list[str] = []
    ordered = sorted(members)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(_byte(ordered[i]) if i == j else f"{_byte(ordered[i])}-{_byte(ordered[j])}")
        i = j + 1
    return "[" + "".join(out) + "]"


def _byte(b: int) -> str:
    ch = chr(b)
    return ch if b < _HIGH and ch.isalnum() else f"\\x{b:02x}"


_SINGLE = (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN, C.CATEGORY)
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT)


class _Emitter:
    def __init__(
        self, alphabet: Alphabet, multiline: bool, widen: bool = False, reverse: bool = False
    ) -> None:
        self.alphabet = alphabet
        self.multiline = multiline
        self.widen = widen
        # The pattern read backwards (for reversed text): where its matches start.
        self.reverse = reverse
        # Framed (see framed_rewrites): hyperscan's ^ $ \A \z would be the block's, not the
        # segment's, so none is emitted; a back-reference is its group's pattern once more.
        self.framed = False
        self.groups: dict[int, tuple[Any, int]] = {}
        self.copying = 0
        # Set by an anchor that places itself in the frame (see sequence).
        self.placed = False
        # False once anything was dropped or widened in a way any text could notice.
        self.exact_on_ascii = True
        # Class bytes whose presence in a text makes the answer uncertain.
        self.ambiguous: set[int] = set()

    def sequence(
        self,
        items: Sequence[tuple[Any, Any]],
        flags: int,
        lead: bool = False,
        tail: bool = False,
    ) -> str:
        """``lead``/``tail``: the sequence starts/ends the whole expression (where hyperscan
        takes ^ and $; elsewhere it refuses them)."""
        start, end = 0, len(items)
        # Whether a text contains a match is all that is asked: an optional item that
        # begins or ends the expression can go (what matched with it matches without it).
        while lead and start < end and _optional(items[start]):
            start += 1
        while tail and end > start and _optional(items[end - 1]):
            end -= 1
        if (start, end) != (0, len(items)):
            self.exact_on_ascii = False
        out: list[str] = []
        for index in range(start, end):
            op, av = items[index]
            at_lead, at_tail = lead and index == start, tail and index == end - 1
            self.placed = False
            if op is C.AT:
                piece = self.anchor(av, items, index, flags, at_lead, at_tail)
            else:
                piece = self.item(op, av, flags, at_lead, at_tail)
            if self.framed and at_lead and not self.placed and not _frames_itself(op, av):
                piece = _IN_FRAME + "*" + piece  # unanchored: anywhere after the tag
            out.append(piece)
        if self.framed and lead and start == end:
            out.append(_IN_FRAME + "*")
        return "".join(reversed(out) if self.reverse else out)

    def item(self, op: Any, av: Any, flags: int, lead: bool = False, tail: bool = False) -> str:
        if op in _SINGLE:
            char = self.alphabet.char(op, av, flags)
            members = char.ascii | char.high
            self.ambiguous |= char.loose
            if not members:
                raise Untranslatable("a class that matches nothing")
            return _byte_class(members)
        if op is C.BRANCH:
            alts = (self.sequence(alt, flags, lead, tail) for alt in av[1])
            return "(?:" + "|".join(alts) + ")"
        if op is C.SUBPATTERN:
            _group, add, remove, sub = av
            if (add | remove) & re.MULTILINE:
                # A local ^/$ mode: its anchors are dropped below (superset), not rewritten.
                self.exact_on_ascii = False
            return "(?:" + self.sequence(sub, (flags | add) & ~remove, lead, tail) + ")"
        if op in _REPEATS:
            low, high, sub = av
            one_char = len(sub) == 1 and sub[0][0] in _SINGLE
            body = self.sequence(sub, flags)
            limit = _MAX_CHAR_BOUND if one_char and not self.widen else _MAX_BOUND
            if (lead or tail) and (high, low) != (1, 1):
                # At either end of the expression, X{m,n} is in a text exactly where X{m}
                # is; and X{m} (m >= 1) only where its copy next to the rest is: one copy
                # finds at least the same texts, and is cheaper unless X is one character
                # or small (SpamAssassin's __LONGWORDS_C, (?:[a-z]{5,}[\s.]+){10}, kept
                # exact is final; one copy is reported on most texts and confirmed by re).
                small = len(body) * low <= _SMALL_COPIES and low <= _MAX_END_COPIES
                if not self.widen and 1 <= low and ((one_char and low <= _MAX_CHAR_BOUND) or small):
                    high = low
                    limit = max(limit, low)
                elif self.framed and not self.widen and 1 <= low <= _MAX_BOUND:
                    # The header database is small: m copies, exact (one is a looser try).
                    high = low
                else:
                    low = high = 1
                    self.exact_on_ascii = False
            if op is C.POSSESSIVE_REPEAT:
                self.exact_on_ascii = False  # greedy matches wherever possessive does
            if low > limit or (high != C.MAXREPEAT and high > limit):
                # Long counted repeats cost hyperscan seconds to compile (and memory); a
                # shorter minimum and no maximum match at least as much.
                low, high = min(low, limit), C.MAXREPEAT
                self.exact_on_ascii = False
            if self.widen and (low > 1 or (high != C.MAXREPEAT and high > 1)):
                low, high = min(low, 1), C.MAXREPEAT
                self.exact_on_ascii = False
            bound = f"{{{low},}}" if high == C.MAXREPEAT else f"{{{low},{high}}}"
            return f"(?:{body}){bound}"
        if op is C.ATOMIC_GROUP:
            self.exact_on_ascii = False
            return "(?:" + self.sequence(av, flags) + ")"
        if op is C.GROUPREF and self.framed and av in self.groups:
            # The text \N matches is one its group's pattern matched (case-folded if \N
            # folds): that pattern again is a superset, minus assertions that held there.
            self.exact_on_ascii = False
            sub, group_flags = self.groups[av]
            self.copying += 1
            try:
                return "(?:" + self.sequence(sub, group_flags | (flags & re.IGNORECASE)) + ")"
            finally:
                self.copying -= 1
        if op in (C.ASSERT, C.ASSERT_NOT):
            # Lookarounds only ever remove matches: without them, a superset.
            self.exact_on_ascii = False
            return ""
        raise Untranslatable(f"{op}")

    def anchor(
        self,
        at: Any,
        items: Sequence[tuple[Any, Any]],
        index: int,
        flags: int,
        lead: bool,
        tail: bool,
    ) -> str:
        same_mode = bool(flags & re.MULTILINE) == self.multiline and not self.framed
        if self.copying:
            self.exact_on_ascii = False
            return ""
        if self.framed and (lead or tail):
            frame = _frame_anchor(at, bool(flags & re.MULTILINE), lead, tail)
            if frame is not None:
                return frame
        if at is C.AT_BEGINNING_STRING and lead and not self.framed:
            return r"\A"
        if at is C.AT_END_STRING and tail and not self.framed:
            return r"\z"
        if at is C.AT_BEGINNING and same_mode and lead:
            return "^"
        if at is C.AT_END and same_mode and tail:
            return "$"
        if at in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY) and flags & re.ASCII:
            # re's ASCII \b is hyperscan's: every class byte is a non-word byte to both.
            return r"\b" if at is C.AT_BOUNDARY else r"\B"
        if at is C.AT_BOUNDARY and (lead or tail):
            # At either end, a \b beside a character that is always a letter (or never) is
            # the character beyond it being the other kind (or the text's end): consumed.
            side = self.kind(items, index + 1 if lead else index - 1, flags, lead)
            word = _WORD | self.alphabet.word_bytes
            if side == "word" and lead and self.framed:
                # Right after the tag (the text's start: the tag's own byte may be a
                # letter's class byte) or after a non-letter in the frame.
                self.placed = True
                other = _byte_class(frozenset(range(FRAME_START)) - word)
                return f"(?:{_IN_FRAME}*{other})?"
            if side == "word":
                other = _byte_class(frozenset(range(256)) - word)
                return f"(?:\\A|{other})" if lead else f"(?:{other}|\\z)"
            if side == "other":
                return _byte_class(word)
        if at is C.AT_BOUNDARY and (
            self.kind(items, index - 1, flags, False, True) == "word"
            or self.kind(items, index + 1, flags, True, True) == "word"
        ):
            # Beside a character that can only be an ASCII word character, a byte \b holds
            # wherever Python's Unicode \b does (a non-ASCII letter is a non-word byte to
            # hyperscan): exact on a text with no non-ASCII letter.
            self.ambiguous |= self.alphabet.word_bytes
            return r"\b"
        if at is C.AT_BOUNDARY or at is C.AT_NON_BOUNDARY:
            # Dropped: on ASCII text \b and \B would be exact, but one database serves both.
            self.exact_on_ascii = False
            return ""
        self.exact_on_ascii = False
        return ""

    def kind(
        self,
        items: Sequence[tuple[Any, Any]],
        index: int,
        flags: int,
        first: bool,
        ascii_only: bool = False,
    ) -> str:
        """ "word" when the character the item at ``index`` starts (or, before a \\b, ends)
        its matches with is always a word character (an ASCII one, with ``ascii_only``),
        "other" when never, "" when either or no such item."""
        if not 0 <= index < len(items):
            return ""
        op, av = items[index]
        # The character on the \b's side: a repeat's copy's, a group's own first (last)
        # item's, every alternative's alike; an optional item's and the one beyond it alike.
        if op in (C.MAX_REPEAT, C.MIN_REPEAT) and av[2]:
            sub = list(av[2])
            inner = self.kind(sub, 0 if first else len(sub) - 1, flags, first, ascii_only)
            if av[0] >= 1:
                return inner
            beyond = self.kind(items, index + 1 if first else index - 1, flags, first, ascii_only)
            return inner if inner == beyond else ""
        if op is C.SUBPATTERN:
            sub = list(av[3])
            local = (flags | av[1]) & ~av[2]
            return self.kind(sub, 0 if first else len(sub) - 1, local, first, ascii_only)
        if op is C.BRANCH:
            kinds = {
                self.kind(list(alt), 0 if first else len(alt) - 1, flags, first, ascii_only)
                for alt in av[1]
            }
            return kinds.pop() if len(kinds) == 1 else ""
        if op not in _SINGLE:
            return ""
        char = self.alphabet.char(op, av, flags)
        if char.loose:
            return ""
        if char.ascii <= _WORD and (not char.high or not ascii_only):
            if char.high <= self.alphabet.word_bytes:
                return "word"
        if not ascii_only and not char.ascii & _WORD and not char.high & self.alphabet.word_bytes:
            return "other"
        return ""


def _frames_itself(op: Any, av: Any) -> bool:
    """Whether a framed expression's first item places itself in the frame: a start anchor,
    or a group or alternation, whose own first items do."""
    if op is C.AT:
        return av in (C.AT_BEGINNING, C.AT_BEGINNING_STRING)
    return op in (C.BRANCH, C.SUBPATTERN)


def _frame_anchor(at: Any, multiline: bool, lead: bool, tail: bool) -> str | None:
    """^ \\A $ \\Z beginning or ending a framed expression, as the frame's ends."""
    end = f"\\x{FRAME_END:02x}"
    if lead and at is C.AT_BEGINNING_STRING:
        return ""  # right after the tag
    if lead and at is C.AT_BEGINNING:
        return f"(?:{_IN_FRAME}*\\n)?" if multiline else ""
    if tail and at is C.AT_END_STRING:
        return end
    if tail and at is C.AT_END:
        # Python's $: before any "\\n" (multiline), else at the end or before a last "\\n".
        return f"[\\n{end}]" if multiline else f"\\n?{end}"
    return None


def _optional(item: tuple[Any, Any]) -> bool:
    op, av = item
    return (op in _REPEATS and av[0] == 0) or op in (C.ASSERT, C.ASSERT_NOT)


@dataclass(frozen=True)
class Rewrite:
    """A pattern as hyperscan takes it."""

    expression: bytes
    flags: int
    # Nothing was loosened: hyperscan's answer is re's on a text with no ``ambiguous`` byte
    # (an ASCII text has none).
    exact_on_ascii: bool
    # X{m,n} as a whole pattern can be scanned as X (when hyperscan refuses m copies); then
    # ``starts`` is X read backwards, for the reversed text: a superset of the offsets where
    # X's matches start, the only ones where a match of the whole pattern can start.
    starts: bytes = b""
    ambiguous: frozenset[int] = frozenset()
    # Set on X as the rewrite of X{m} (m here): X's every match end is reported.
    copies: int = 0


def to_bytes_pattern(pattern: re.Pattern[str], alphabet: Alphabet | None = None) -> Rewrite:
    """A hyperscan byte pattern matching a superset of ``pattern`` over the texts
    ``alphabet`` encodes (by default the pattern's own: :meth:`Alphabet.for_patterns`).

    Raises :class:`Untranslatable` for what has no rewrite.
    """
    return rewrites(pattern, alphabet)[0]


def rewrites(pattern: re.Pattern[str], alphabet: Alphabet | None = None) -> list[Rewrite]:
    """The rewrites of ``pattern``, the tightest first: what to try when hyperscan refuses
    the one before (too large). Every one matches a superset of ``pattern`` over the texts
    ``alphabet`` encodes (by default the pattern's own).

    Raises :class:`Untranslatable` for what has no rewrite.
    """
    if alphabet is None:
        alphabet = Alphabet.for_patterns([pattern])
    tree = _parse(pattern.pattern, pattern.flags)
    if tree.getwidth()[0] == 0:
        # hyperscan refuses these; they match almost any text, so re answers them at once.
        raise Untranslatable("can match the empty string")
    flags = tree.state.flags
    if flags & re.LOCALE:
        raise Untranslatable("LOCALE flag")
    multiline = bool(flags & re.MULTILINE)
    items = list(tree.data)
    while len(items) == 1 and items[0][0] is C.SUBPATTERN and items[0][1][1:3] == (0, 0):
        items = list(items[0][1][3])
    repeat = None
    if len(items) == 1 and items[0][0] in (C.MAX_REPEAT, C.MIN_REPEAT) and items[0][1][0] > 1:
        repeat = items[0][1]
    hs_flags = 0
    if _hs is not None:
        hs_flags = _hs.HS_FLAG_MULTILINE if multiline else 0
    out: list[Rewrite] = []
    for widen in (False, True):
        emitter = _Emitter(alphabet, multiline, widen)
        if repeat is None:
            text = _emit(emitter, items, flags, True)
            single = hs_flags | (_hs.HS_FLAG_SINGLEMATCH if _hs is not None else 0)
            ambiguous = frozenset(emitter.ambiguous)
            out.append(
                Rewrite(text.encode("ascii"), single, emitter.exact_on_ascii, b"", ambiguous)
            )
            continue
        low, _high, sub = repeat
        # A text holds X{m,n} exactly where it holds X{m}: its first m copies.
        copies = min(low, _MAX_BOUND)
        body = _emit(emitter, sub, flags, False)
        exact = emitter.exact_on_ascii and copies == low
        single = hs_flags | (_hs.HS_FLAG_SINGLEMATCH if _hs is not None else 0)
        reverse = _Emitter(alphabet, multiline, widen, reverse=True)
        backwards = _emit(reverse, sub, flags, False).encode()
        # Tried at each start, a small X costs more than re's own search (__HIGHBITS).
        big = backwards if len(body) > _BIG_COPY else b""
        expression = f"(?:{body}){{{copies}}}".encode("ascii")
        ambiguous = frozenset(emitter.ambiguous)
        out.append(Rewrite(expression, single, exact, big, ambiguous))
        # Every end of a copy reported (no SINGLEMATCH): a text without low - 1 offsets
        # where one copy can end and another start holds no match (see confirmed).
        out.append(Rewrite(body.encode("ascii"), hs_flags, False, backwards, frozenset(), low))
    return out


def _emit(emitter: _Emitter, items: Sequence[tuple[Any, Any]], flags: int, whole: bool) -> str:
    try:
        text = emitter.sequence(items, flags, lead=whole, tail=whole)
    except (KeyError, TypeError, IndexError) as exc:
        raise Untranslatable(str(exc)) from exc
    if len(text) > _MAX_EXPRESSION:
        # The stock set's few giant alternations take hyperscan tens of seconds each and
        # are then refused as too large anyway.
        raise Untranslatable(f"{len(text)} bytes rewritten")
    return text


# Framed scanning: several texts in one block, each as FRAME_START, a two-byte tag naming
# the text, the text's bytes, FRAME_END. No rewritten class takes these bytes (text_bytes
# never makes them), so no match crosses a frame, and a framed pattern starts at its own tag.
FRAME_START = 0xFE
FRAME_END = 0xFF
# The alphabet of a framed set leaves the frame bytes free: two classes fewer.
FRAME_RESERVE = 2
_TAG_BASE = 0xC0
_TAG_SPAN = FRAME_START - _TAG_BASE
# What can lie inside a frame (a text's bytes, its tag): anything but the frame bytes.
_IN_FRAME = r"[\x00-\xfd]"


def frame_tag(number: int) -> bytes:
    """The two tag bytes of the ``number``-th framed text (fewer than 62 x 62)."""
    high, low = divmod(number, _TAG_SPAN)
    if high >= _TAG_SPAN:
        raise ValueError(f"too many framed texts: {number}")
    return bytes((_TAG_BASE + high, _TAG_BASE + low))


def framed_rewrites(pattern: re.Pattern[str], tag: bytes, alphabet: Alphabet) -> list[Rewrite]:
    """Rewrites of ``pattern`` that find a match only inside the frame tagged ``tag`` of a
    block of frames (see FRAME_START), the tightest first; ^ \\A $ \\z that begin or end the
    pattern are the frame's start and end. Unlike :func:`rewrites`, a pattern that matches
    the empty string is taken (the frame is not empty), and a back-reference is taken as its
    group's pattern (never exact). ``alphabet`` (``reserve=FRAME_RESERVE``) must leave
    the frame bytes to the frames.

    Raises :class:`Untranslatable` for what has no rewrite.
    """
    if alphabet.bytes & {FRAME_START, FRAME_END}:
        raise ValueError("the alphabet takes the frame bytes: build it with a reserve of 2")
    tree = _parse(pattern.pattern, pattern.flags)
    flags = tree.state.flags
    if flags & re.LOCALE:
        raise Untranslatable("LOCALE flag")
    multiline = bool(flags & re.MULTILINE)
    groups: dict[int, tuple[Any, int]] = {}
    _collect_groups(tree.data, flags, groups)
    prefix = "".join(f"\\x{b:02x}" for b in (FRAME_START, *tag))
    single = _hs.HS_FLAG_SINGLEMATCH if _hs is not None else 0
    out: list[Rewrite] = []
    for widen in (False, True):
        emitter = _Emitter(alphabet, multiline, widen)
        emitter.framed, emitter.groups = True, groups
        try:
            body = emitter.sequence(tree.data, flags, lead=True, tail=True)
        except (KeyError, TypeError, IndexError) as exc:
            raise Untranslatable(str(exc)) from exc
        if len(body) > _MAX_EXPRESSION:
            raise Untranslatable(f"{len(body)} bytes rewritten")
        exact, ambiguous = emitter.exact_on_ascii, frozenset(emitter.ambiguous)
        out.append(Rewrite((prefix + body).encode("ascii"), single, exact, b"", ambiguous))
    return out


def _collect_groups(items: Any, flags: int, out: dict[int, tuple[Any, int]]) -> None:
    """Every capturing group's items and the flags in force inside it."""
    for op, av in items:
        if op is C.SUBPATTERN:
            group, add, remove, sub = av
            inner = (flags | add) & ~remove
            if group is not None:
                out[group] = (sub, inner)
            _collect_groups(sub, inner, out)
        elif op is C.BRANCH:
            for alt in av[1]:
                _collect_groups(alt, flags, out)
        elif op in _REPEATS:
            _collect_groups(av[2], flags, out)
        elif op is C.ATOMIC_GROUP:
            _collect_groups(av, flags, out)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            _collect_groups(av[1], flags, out)
        elif op is C.GROUPREF_EXISTS:
            _collect_groups(av[1], flags, out)
            if av[2] is not None:
                _collect_groups(av[2], flags, out)


def default_cache_dir() -> Path | None:
    """Where compiled databases are kept: content-addressed, so one cache serves every home.
    None where the user has no home directory (then every start compiles)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "mailwarden" / "hyperscan"


#: The compiled databases kept on disk, all rule sets together (one full SpamAssassin stock
#: set with the shipped rules is about 15 MB); past it the least recently used go first.
CACHE_MAX_BYTES = 256 * 1024 * 1024


def trim_cache(cache: Path, max_bytes: int = CACHE_MAX_BYTES) -> None:
    """Remove the least recently used databases of ``cache`` until it holds at most
    ``max_bytes`` (every edit of a rule file makes a new entry: without this the folder only
    grows)."""
    entries = []
    total = 0
    for db in cache.glob("*.hsdb"):
        try:
            stat = db.stat()
        except FileNotFoundError:
            continue
        side = db.with_suffix(".rejected")
        size = stat.st_size + (side.stat().st_size if side.exists() else 0)
        entries.append((stat.st_mtime, db, side, size))
        total += size
    for _, db, side, size in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        db.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        total -= size


class PatternSet:
    """Patterns compiled into one hyperscan database; :meth:`confirmed` gives those in a text.

    ``rejected`` holds the indices of the patterns left to ``re`` (untranslatable, refused by
    hyperscan, or all of them without hyperscan). Compiled databases are cached on disk by
    the hash of their expressions (compiling a stock rule set takes minutes; loading, ms).
    """

    def __init__(
        self,
        patterns: Sequence[re.Pattern[str]],
        cache: Path | None = None,
        compile_now: bool = True,
        rewriter: Callable[[int, re.Pattern[str], Alphabet], list[Rewrite]] | None = None,
        reserve: int = 0,
    ) -> None:
        """``rewriter(index, pattern, alphabet)`` gives a pattern's rewrites (default
        :func:`rewrites`); ``reserve``: top bytes the set's :class:`Alphabet` leaves free
        (:data:`FRAME_RESERVE` for :func:`framed_rewrites`)."""
        self.size = len(patterns)
        # Set when ``compile_now`` is false and the cache did not hold the database.
        self.pending = False
        self.patterns = list(patterns)
        self.rejected: set[int] = set()
        self.exact: list[bool] = [False] * len(patterns)
        # Per pattern, the class bytes whose presence in a text calls for re's confirmation.
        self.ambiguous: list[frozenset[int]] = [frozenset()] * len(patterns)
        # How texts become bytes for these patterns (None without hyperscan: nothing scans).
        self.alphabet: Alphabet | None = None
        self._db: Any = None
        # Scratch space is per scanning thread (rules run in worker threads at once).
        self._scratch = threading.local()
        self._loosened: set[int] = set()  # compiled in hyperscan's prefilter mode
        # X{m} scanned as X reporting every end: index -> m, and the fewest characters a
        # copy of X takes (in re).
        self._copies: dict[int, int] = {}
        self._widths: dict[int, int] = {}
        # Counted whole-pattern repeats (X{m} scanned as X): where X may start, found by
        # scanning the reversed text, so re tries a match only there (not at every offset).
        self._starts_db: Any = None
        self._starts: set[int] = set()
        # Patterns that can only match at a line start, by the literal the line starts with
        # ("" for any line): re tries them only there instead of at every offset of the text
        # (SpamAssassin's __FROM_NAME_IN_MSG over the whole raw message, or __RAND_HEADER's
        # /^(?!...)/im over all the headers: re's search tests a multiline ^ at every offset).
        self._line_starts: dict[int, str] = {}
        self._shaped: list[tuple[int, shapes.Shape]] = []
        for index, pattern in enumerate(patterns):
            literal = _line_literal(pattern)
            if literal is not None:
                self._line_starts[index] = literal
        # What re runs to confirm a report: each pattern, or the same regex in a form its
        # engine answers faster (see _faster_form).
        self._re = [_faster_form(pattern) or pattern for pattern in patterns]
        if _hs is None:
            self.rejected = set(range(len(patterns)))
            return
        # Patterns an exact test answers more cheaply than hyperscan (see .shapes); never
        # framed ones, whose text is the frame's and not the caller's.
        if rewriter is None:
            for index, pattern in enumerate(patterns):
                test = shapes.recognise(pattern)
                if test is not None:
                    self._shaped.append((index, test))
        shaped = {index for index, _test in self._shaped}
        self.alphabet = alphabet = Alphabet.for_patterns(patterns, reserve)
        candidates: dict[int, list[Rewrite]] = {}
        for index, pattern in enumerate(patterns):
            if index in shaped:
                continue
            try:
                if rewriter is not None:
                    candidates[index] = rewriter(index, pattern, alphabet)
                else:
                    candidates[index] = rewrites(pattern, alphabet)
            except (Untranslatable, re.error) as exc:
                log.debug("regex left to re: %r (%s)", pattern.pattern[:60], exc)
                self.rejected.add(index)
        if not candidates:
            return
        # Every candidate is in the key: the choice among them is part of the entry.
        forms = [(i, [(r.expression, r.flags) for r in c]) for i, c in candidates.items()]
        key = hashlib.sha256(
            repr((_CACHE_FORMAT, _hs.__version__, forms)).encode("utf-8", "replace")
        ).hexdigest()
        chosen = self._load(cache, key, candidates)
        loaded = chosen is not None
        if chosen is None and not compile_now:
            self.pending = True
            return
        if chosen is None:
            chosen = {i: (c[0], False) for i, c in candidates.items()}
            self._db = _compile(chosen)
            if self._db is None:
                chosen = _accepted(candidates)
                self._db = _compile(chosen) if chosen else None
        if self._db is None:
            self.rejected |= set(candidates)
            return
        self.rejected |= set(candidates) - set(chosen)
        for index, (rewrite, loose) in chosen.items():
            self.exact[index] = rewrite.exact_on_ascii and not loose
            self.ambiguous[index] = rewrite.ambiguous
            if rewrite.copies and not loose:
                self._copies[index] = rewrite.copies
                self._widths[index] = _copy_width(self.patterns[index])
            if loose:
                self._loosened.add(index)
        if not loaded:
            self._store(cache, key, candidates, chosen)
        backwards = {i: r.starts for i, (r, _loose) in chosen.items() if r.starts}
        if backwards:
            self._starts_db, self._starts = _starts_database(backwards, cache, compile_now)
            self.pending = self._starts_db is None and not compile_now

    def _load(
        self, cache: Path | None, key: str, candidates: dict[int, list[Rewrite]]
    ) -> dict[int, tuple[Rewrite, bool]] | None:
        if cache is None:
            return None
        path = cache / f"{key}.hsdb"
        try:
            blob = path.read_bytes()
            side = (cache / f"{key}.rejected").read_text()
            db = _hs.loadb(blob, _hs.HS_MODE_BLOCK)
            refused, _, choices = side.partition("\n")
            chosen = {i: (c[0], False) for i, c in candidates.items()}
            for n in refused.split():
                del chosen[int(n)]
            for entry in choices.split():
                index, which, loose = (int(n) for n in entry.split(":"))
                chosen[index] = (candidates[index][which], bool(loose))
            # The modification time is the entry's last use: what trimming keeps longest.
            os.utime(path)
        except (OSError, _hs.error, ValueError, KeyError, IndexError):
            return None
        self._db = db
        return chosen

    def _store(
        self,
        cache: Path | None,
        key: str,
        candidates: dict[int, list[Rewrite]],
        chosen: dict[int, tuple[Rewrite, bool]],
    ) -> None:
        if cache is None:
            return
        listed = " ".join(str(i) for i in sorted(set(candidates) - set(chosen)))
        listed += "\n" + " ".join(
            f"{i}:{candidates[i].index(rewrite)}:{int(loose)}"
            for i, (rewrite, loose) in sorted(chosen.items(), key=lambda item: item[0])
            if loose or rewrite is not candidates[i][0]
        )
        try:
            cache.mkdir(parents=True, exist_ok=True)
            # Written aside and renamed: a worker starting meanwhile reads all or nothing.
            for name, data in (
                (f"{key}.rejected", listed.encode()),
                (f"{key}.hsdb", _hs.dumpb(self._db)),
            ):
                # A cache: atomic for readers, not worth an fsync.
                atomic_write(cache / name, data, durable=False)
            trim_cache(cache)
        except OSError as exc:
            log.debug("hyperscan cache not written: %s", exc)

    @property
    def shaped(self) -> frozenset[int]:
        """Indices of the patterns an exact test of :mod:`.shapes` answers in
        :meth:`confirmed` instead of the database (:meth:`scan` does not report them)."""
        return frozenset(index for index, _test in self._shaped)

    @property
    def active(self) -> bool:
        """Whether a database was built (some pattern is answered by hyperscan)."""
        return self._db is not None

    def encode(self, text: str) -> bytes:
        """``text`` as these patterns' rewrites scan it (see :class:`Alphabet`)."""
        return self.alphabet.encode(text) if self.alphabet is not None else text_bytes(text)

    def scan(self, data: bytes) -> set[int]:
        """Indices of the patterns hyperscan reports in ``data`` (from :meth:`encode`; a
        superset of the hits)."""
        return self._scan(data)

    def _scan(self, data: bytes, ends: dict[int, set[int]] | None = None) -> set[int]:
        """The patterns reported; with ``ends``, also where each copy of an X{m} scanned as
        X ends (every end is reported for those)."""
        found: set[int] = set()
        if self._db is None or not data:
            return found
        scratch = getattr(self._scratch, "space", None)
        if scratch is None:
            scratch = self._scratch.space = _hs.Scratch(self._db)
        copies = self._copies

        def on_match(pid: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
            found.add(pid)
            if ends is not None and pid in copies:
                ends.setdefault(pid, set()).add(end)

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        return found

    def confirmed(self, text: str) -> list[int]:
        """Indices of the patterns (not the rejected ones) whose ``re`` search finds ``text``.

        hyperscan's report is final where nothing of its pattern was loosened and the text
        holds none of the pattern's ambiguous bytes; every other reported pattern is
        confirmed by its ``re`` pattern.
        """
        if not text:
            return []
        out = [index for index, test in self._shaped if test(text)]
        if self._db is None:
            return out
        data = self.encode(text)
        ends: dict[int, set[int]] = {}
        found = self._scan(data, ends)
        if not found:
            return out
        present: frozenset[int] | None = frozenset() if text.isascii() else None
        starts: dict[int, list[int]] | None = None
        for index in found:
            if self.exact[index]:
                ambiguous = self.ambiguous[index]
                if ambiguous and present is None:
                    present = high_bytes(data)
                if not ambiguous or ambiguous.isdisjoint(present or ()):
                    out.append(index)
                    continue
            pattern = self._re[index]
            if index in self._starts:
                if starts is None:
                    starts = self._scan_starts(data[::-1])
                # Every match of the whole pattern starts where a copy of X does; and
                # X{m} needs m - 1 offsets where a copy ends and the next one starts.
                at_starts = sorted(starts.get(index, ()))
                if index in self._copies:
                    latest = _chain_start(
                        at_starts, ends.get(index, ()), self._copies[index], self._widths[index]
                    )
                    at_starts = [at for at in at_starts if at <= latest]
                hit = any(pattern.match(text, at) for at in at_starts)
            elif index in self._line_starts:
                hit = _match_at_lines(pattern, text, self._line_starts[index])
            else:
                hit = pattern.search(text) is not None
            if hit:
                out.append(index)
        return out

    def final(self, index: int, present: frozenset[int]) -> bool:
        """Whether hyperscan's report of pattern ``index`` is re's answer on a text whose
        encoding holds the class bytes ``present`` (see :func:`high_bytes`)."""
        return self.exact[index] and self.ambiguous[index].isdisjoint(present)

    def holds(self, index: int, text: str) -> bool:
        """Whether pattern ``index``'s ``re`` search finds ``text`` (a reported pattern's
        confirmation, for a caller that scanned several texts at once; no reversed starts)."""
        pattern = self._re[index]
        if index in self._line_starts:
            return _match_at_lines(pattern, text, self._line_starts[index])
        return pattern.search(text) is not None

    def _scan_starts(self, backwards: bytes) -> dict[int, list[int]]:
        size = len(backwards)
        starts: dict[int, list[int]] = {}
        scratch = getattr(self._scratch, "starts", None)
        if scratch is None:
            scratch = self._scratch.starts = _hs.Scratch(self._starts_db)

        def on_match(pid: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
            starts.setdefault(pid, []).append(size - end)  # an end backwards, a start forwards

        self._starts_db.scan(backwards, match_event_handler=on_match, scratch=scratch)
        return starts


def _copy_width(pattern: re.Pattern[str]) -> int:
    """The fewest characters one copy of X takes in re, for a pattern that is X{m,...}."""
    items = list(_parse(pattern.pattern, pattern.flags).data)
    while len(items) == 1 and items[0][0] is C.SUBPATTERN and items[0][1][1:3] == (0, 0):
        items = list(items[0][1][3])
    return int(items[0][1][2].getwidth()[0])


def _chain_start(starts: Sequence[int], ends: Iterable[int], copies: int, width: int) -> int:
    """The last offset where X{``copies``} can start: a match is a chain of copies of X, each
    at least ``width`` long, each copy but the last ending where the next starts (an offset
    in both ``starts`` and ``ends``, supersets of where re's copies start and end), the last
    at one of ``ends``. Built backwards from the last end, each link the latest join that
    fits; -1 when no chain fits (then X{m} is nowhere)."""
    ended = set(ends)
    if not ended:
        return -1
    if width < 1:
        return max(starts, default=-1)  # empty copies may share an offset: no bound here
    joins = sorted(ended.intersection(starts))
    limit = max(ended) - width
    for _link in range(copies - 1):
        at = bisect.bisect_right(joins, limit) - 1
        if at < 0:
            return -1
        limit = joins[at] - width
        del joins[at:]
    return limit


def _line_literal(pattern: re.Pattern[str]) -> str | None:
    """For a multiline pattern starting with ``^`` (no top-level alternation), the literal
    every match starts its line with ("" when there is none, or with case folding); None for
    any other pattern."""
    if not pattern.flags & re.MULTILINE:
        return None  # a ^ at the text's start only: re's search tries that offset alone
    tree = shapes.parsed(pattern)
    items = list(tree.data) if tree is not None else []
    if not items or items[0] != (C.AT, C.AT_BEGINNING):
        return None
    if pattern.flags & re.IGNORECASE:
        return ""
    literal = []
    for op, arg in items[1:]:
        if op is not C.LITERAL:
            break
        literal.append(chr(arg))
    return "".join(literal)


def _faster_form(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """``pattern`` with each ``.{a,b}^`` (a >= 1; ``.`` and ``^`` under global DOTALL and
    MULTILINE, outside lookbehinds) compiled as ``.{a-1,b-1}\\n``, or None when it has none.

    The two match at the same places: the ``^`` after at least one character of any kind
    holds exactly where the last of them is a newline. re runs them differently: before
    ``^`` its repeat backtracks one character at a time, each a full attempt of what
    follows; before a literal it skips to that character (SpamAssassin's full rule
    __FROM_NAME_IN_MSG, ``(?=.{1,2048}^\\1\\r?$)``: 30.6 -> 22.2 us a generated message).
    """
    wanted = re.DOTALL | re.MULTILINE
    if pattern.flags & wanted != wanted:
        return None
    tree = shapes.parsed(pattern)
    if tree is None or not _newline_repeats(tree.data):
        return None
    try:
        faster: re.Pattern[str] = _COMPILER.compile(tree, tree.state.flags)
    except (re.error, TypeError, ValueError):
        return None
    return faster


def _newline_repeats(items: Any) -> bool:
    """Rewrites in place each ``.{a,b}`` (a >= 1) followed by ``^`` in ``items`` as
    ``.{a-1,b-1}`` followed by a newline; False when there is none, or when a group sets
    flags of its own (then DOTALL or MULTILINE may not hold there)."""
    changed = False
    at = 0
    while at < len(items):
        op, av = items[at]
        if op is C.SUBPATTERN:
            if av[1] or av[2]:
                return False
            changed |= _newline_repeats(av[3].data)
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT):
            low, high, body = av
            if (
                low >= 1
                and list(body.data) == [(C.ANY, None)]
                and at + 1 < len(items)
                and items[at + 1] == (C.AT, C.AT_BEGINNING)
            ):
                down = high if high == C.MAXREPEAT else high - 1
                items[at] = (op, (low - 1, down, body))
                items[at + 1] = (C.LITERAL, ord("\n"))
                changed = True
            else:
                changed |= _newline_repeats(body.data)
        elif op is C.BRANCH:
            for branch in av[1]:
                changed |= _newline_repeats(branch.data)
        elif op is C.ASSERT or op is C.ASSERT_NOT:
            if av[0] < 0:
                return False  # a lookbehind: left as it is
            changed |= _newline_repeats(av[1].data)
        at += 1
    return changed


@lru_cache(maxsize=1024)
def _cached_line_literal(pattern: re.Pattern[str]) -> str | None:
    return _line_literal(pattern)


def found_in(pattern: re.Pattern[str], text: str) -> bool:
    """``pattern.search(text) is not None``; a multiline ``^`` pattern is tried only at the
    line starts (re's search tests a multiline ^ at every offset: the stock rawbody rule
    SCC_SPECIAL_GUID 10.5 -> 4.8 us a generated message)."""
    literal = _cached_line_literal(pattern)
    if literal is None:
        return pattern.search(text) is not None
    return _match_at_lines(pattern, text, literal)


def _match_at_lines(pattern: re.Pattern[str], text: str, literal: str) -> bool:
    # With MULTILINE, ^ holds at 0 and after each "\n": the only places a match can start.
    if text.startswith(literal) and pattern.match(text, 0):
        return True
    needle = "\n" + literal
    at = text.find(needle)
    while at >= 0:
        if pattern.match(text, at + 1):
            return True
        at = text.find(needle, at + 1)
    return False


def _starts_database(
    backwards: dict[int, bytes], cache: Path | None, compile_now: bool
) -> tuple[Any, set[int]]:
    """The database of reversed patterns (every match reported, not just one) and the
    indices it holds; cached as the main databases are."""
    assert _hs is not None
    key = hashlib.sha256(
        repr((_CACHE_FORMAT, _hs.__version__, "starts", sorted(backwards.items()))).encode()
    ).hexdigest()
    if cache is not None:
        try:
            db = _hs.loadb((cache / f"{key}.hsdb").read_bytes(), _hs.HS_MODE_BLOCK)
            refused = {int(n) for n in (cache / f"{key}.rejected").read_text().split()}
            os.utime(cache / f"{key}.hsdb")
            return db, set(backwards) - refused
        except (OSError, _hs.error, ValueError):
            pass
    if not compile_now:
        return None, set()
    plain = {i: (Rewrite(e, 0, False), False) for i, e in backwards.items()}
    db = _compile(plain)
    if db is None:
        # One refused as too large is taken in prefilter mode: more starts, never fewer.
        for i, (rewrite, _loose) in list(plain.items()):
            if _compile({i: (rewrite, False)}) is not None:
                continue
            if _compile({i: (rewrite, True)}) is not None:
                plain[i] = (rewrite, True)
            else:
                del plain[i]
        db = _compile(plain) if plain else None
    if db is None:
        return None, set()
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            refused_text = " ".join(str(i) for i in sorted(set(backwards) - set(plain)))
            atomic_write(cache / f"{key}.rejected", refused_text.encode(), durable=False)
            atomic_write(cache / f"{key}.hsdb", _hs.dumpb(db), durable=False)
        except OSError as exc:
            log.debug("hyperscan cache not written: %s", exc)
    return db, set(plain)


def _compile(chosen: dict[int, tuple[Rewrite, bool]]) -> Any:
    assert _hs is not None
    ids = list(chosen)
    expressions = [chosen[i][0].expression for i in ids]
    flags = [chosen[i][0].flags | (_hs.HS_FLAG_PREFILTER if chosen[i][1] else 0) for i in ids]
    db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    try:
        db.compile(expressions=expressions, ids=ids, elements=len(ids), flags=flags)
    except _hs.error:
        return None
    return db


def _accepted(candidates: dict[int, list[Rewrite]]) -> dict[int, tuple[Rewrite, bool]]:
    """Per pattern, the first rewrite hyperscan takes (it names no culprit when a set fails):
    the tightest first, then each in its prefilter mode, which may match more (never less):
    a superset is all a rewrite promises anyway. Refused in every form: left out."""
    assert _hs is not None
    out: dict[int, tuple[Rewrite, bool]] = {}
    for index, rewrites_of in candidates.items():
        attempts = [(r, False) for r in rewrites_of] + [(r, True) for r in rewrites_of]
        for rewrite, loose in attempts:
            if _compile({index: (rewrite, loose)}) is not None:
                out[index] = (rewrite, loose)
                break
    return out


def high_bytes(data: bytes) -> frozenset[int]:
    """The distinct bytes of ``data`` from 0x80 up: one pass per distinct byte (a text has
    a few classes), at C speed."""
    rest = data.translate(None, _ASCII_BYTES)
    found = set()
    while rest:
        found.add(rest[0])
        rest = rest.replace(rest[:1], b"")
    return frozenset(found)


_ASCII_BYTES = bytes(range(_HIGH))


@lru_cache(maxsize=1)
def _plain() -> Alphabet:
    return Alphabet()


def text_bytes(text: str, alphabet: Alphabet | None = None) -> bytes:
    """``text`` as the rewrites made with ``alphabet`` scan it: one byte per character, ASCII
    as is (by default the alphabet that names no character: a non-ASCII character is the
    byte of its re class, letter, digit, space or other)."""
    return (alphabet or _plain()).encode(text)

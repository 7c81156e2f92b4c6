"""Regex rules whose meaning an exact, cheaper test than an automaton gives.

Recognised from Python's own parse tree of the pattern (never from a rule's name), so a
third party's rule of the same shape is answered the same way. A pattern no recogniser
takes stays with :class:`~.fastmatch.PatternSet`'s hyperscan database as before.

The one shape so far is "a run of N characters outside a few excluded ones", at a line start
(``^`` in multiline mode) or anywhere: SpamAssassin's ``__LONGLINE``, ``/^[^\\r\\n]{998}/m``,
over the whole raw message. hyperscan's repeat engine runs over every byte of a 40 KB message
(a third of the full database's time); here a window of N characters is read backwards with
``str.rfind`` (memrchr): the last excluded character in it ends every run starting before it,
so the walk jumps past it (about N characters a step over ordinary lines), and where a window
holds none, ``re`` itself answers at the one offset a match can start there.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["MIN_RUN", "Shape", "recognise"]

C: Any = importlib.import_module("re._constants")
P: Any = importlib.import_module("re._parser")

#: Shorter runs are cheap for hyperscan, and their chunks too short to skip much.
MIN_RUN = 64
# More excluded characters make a find per chunk each: past this, hyperscan is cheaper.
_MAX_EXCLUDED = 3

Shape = Callable[[str], bool]


def parsed(pattern: re.Pattern[str]) -> Any:
    """A fresh parse tree of ``pattern`` (the caller may change it), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return P.parse(pattern.pattern, pattern.flags)
    except re.error:
        return None


def recognise(pattern: re.Pattern[str]) -> Shape | None:
    """An exact test equal to ``pattern.search(text) is not None`` on every ``str``, or None
    when the pattern has no recognised shape."""
    tree = parsed(pattern)
    if tree is None:
        return None
    flags = tree.state.flags
    items = list(tree.data)
    anchored = False
    if items and items[0] == (C.AT, C.AT_BEGINNING) and flags & re.MULTILINE:
        anchored = True
        items = items[1:]
    if len(items) != 1 or items[0][0] not in (C.MAX_REPEAT, C.MIN_REPEAT):
        return None
    low, _high, sub = items[0][1]
    if low < MIN_RUN or len(sub) != 1:
        return None
    excluded = _excluded(sub[0], flags)
    if excluded is None or (anchored and "\n" not in excluded):
        # Unanchored, or a line start every match's run begins at (no newline inside one).
        return None
    return _LongRun(pattern, low, excluded, anchored)


def _excluded(item: tuple[Any, Any], flags: int) -> str | None:
    """The characters a one-character item does not take, when they are a few ASCII
    non-letters (no case folding can add to them) and it takes every other character."""
    op, av = item
    if op is C.ANY:
        chars = "" if flags & re.DOTALL else "\n"
    elif op is C.NOT_LITERAL:
        chars = chr(av)
    elif op is C.IN and av and av[0] == (C.NEGATE, None):
        if any(item_op is not C.LITERAL for item_op, _ in av[1:]):
            return None
        chars = "".join(chr(item_av) for _, item_av in av[1:])
    else:
        return None
    if not chars or len(set(chars)) > _MAX_EXCLUDED:
        return None
    if any(not c.isascii() or c.isalpha() for c in chars):
        return None
    # Newline first: the usual reason a chunk is skipped, so usually the only find.
    return "".join(sorted(set(chars), key=lambda c: (c != "\n", c)))


class _LongRun:
    """``pattern`` is (``^``, multiline)? X{N,...} with X any character but ``excluded``."""

    def __init__(self, pattern: re.Pattern[str], run: int, excluded: str, anchored: bool):
        self.pattern = pattern
        self.run = run
        self.excluded = excluded
        self.anchored = anchored

    def __call__(self, text: str) -> bool:
        # Every run starting before ``at`` is known to be short (unanchored: every start;
        # anchored: every line start; ``at`` is one). The last excluded character of the
        # window [at, at + N) ends every run starting up to it: the next start is past it.
        run, match = self.run, self.pattern.match
        last = len(text) - run
        at = 0
        if self.anchored:
            while at <= last:
                newline = text.rfind("\n", at, at + run)
                if newline >= 0:
                    at = newline + 1
                    continue
                # No newline: the line at ``at`` is long unless another excluded character
                # ends its run; no line starts inside the window.
                if match(text, at) is not None:
                    return True
                at = text.find("\n", at + run) + 1
                if at == 0:
                    return False
            return False
        excluded = self.excluded
        while at <= last:
            end = at + run
            blocked = max(text.rfind(char, at, end) for char in excluded)
            if blocked < 0:
                return match(text, at) is not None
            at = blocked + 1
        return False

"""Where a plugin's CPU-bound work runs: on the event loop when it is small, else in a thread.

An ``async`` hook that has CPU work to do (regexes over the text, a signature scan, a parse)
has two choices. A worker thread keeps the event loop free while the work runs, but the
hand-off has a price of its own: a queue put, a thread wake-up, the GIL changing hands twice
and a wake-up of the loop when the result is ready. Through Postfix with 1 KiB messages that
price was larger than the work: running the detectors' work inline took the milter from 2.2 to
1.6 ms of CPU per message (benchmarks/smtp/). For a large input the work dominates and a
thread keeps other connections moving, so :func:`run_cpu_bound` decides by input size, and
by the structure of the message being scanned: work grows with header fields and MIME parts
as much as with bytes, and a 64 KB message of 7,250 header fields kept the event loop busy
for 21.7 s while the work ran inline (issue 25). The gateway marks the message its detectors
work on (:func:`scanning`); one with more than :data:`INLINE_MAX_FIELDS` header fields and
parts has all its work done in threads, whatever its size in bytes. And the inline work is
measured: once a message's work held the loop for :data:`INLINE_MAX_SECONDS` in all, the
rest of that message's work goes to threads, so input that is slow in a way no count
foresees still holds the loop only that long.

Only for work that never blocks on I/O (no sockets, no waiting on locks held elsewhere):
inline, that would stall every connection of the worker. Blocking work goes to
:func:`asyncio.to_thread` whatever its size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from typing import ParamSpec, TypeVar

from mailwarden_native import ParsedMessage

__all__ = [
    "INLINE_MAX_BYTES",
    "INLINE_MAX_FIELDS",
    "INLINE_MAX_SECONDS",
    "run_cpu_bound",
    "scanning",
]

#: Inputs up to this size are worked on inline. 64 KiB of text keeps the stock rules under a
#: few milliseconds, short enough that other connections barely notice the pause.
INLINE_MAX_BYTES = 64 * 1024

#: Messages with more top-level header fields plus MIME parts than this have their work done
#: in threads whatever their size. Real mail has tens of fields and a few parts.
INLINE_MAX_FIELDS = 500

#: Inline work on one message stops after this many seconds in all (the rest goes to threads).
INLINE_MAX_SECONDS = 0.05


class _Inline:
    """The inline allowance of the message being scanned, shared by its detectors' tasks."""

    __slots__ = ("left",)

    def __init__(self, left: float) -> None:
        self.left = left


# Outside a scan (no message marked): no allowance kept, inline by size alone.
_inline: ContextVar[_Inline | None] = ContextVar("mailwarden_inline", default=None)

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_cpu_bound(
    size: int, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``fn(*args, **kwargs)``, CPU-bound work on an input of ``size`` bytes.

    Called on the event loop when ``size`` is at most :data:`INLINE_MAX_BYTES` and the message
    being scanned (see :func:`scanning`) has at most :data:`INLINE_MAX_FIELDS` header fields
    and parts and has not used up :data:`INLINE_MAX_SECONDS` of inline work, otherwise in a
    worker thread (:func:`asyncio.to_thread`). ``fn`` must not block on I/O. Exceptions
    propagate either way.
    """
    if size <= INLINE_MAX_BYTES:
        allowance = _inline.get()
        if allowance is None:
            return fn(*args, **kwargs)
        if allowance.left > 0:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                allowance.left -= time.perf_counter() - began
    return await asyncio.to_thread(fn, *args, **kwargs)


class _Scanning:
    """What :func:`scanning` returns: a context manager of its own instead of a generator
    one (``contextmanager`` makes a generator and a wrapper per call: 2 us per message)."""

    __slots__ = ("_allowance", "_token")

    def __init__(self, allowance: _Inline) -> None:
        self._allowance = allowance
        self._token: Token[_Inline | None] | None = None

    def __enter__(self) -> None:
        self._token = _inline.set(self._allowance)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _inline.reset(self._token)
            self._token = None


def scanning(message: ParsedMessage) -> AbstractContextManager[None]:
    """Within this block (and the tasks started in it), :func:`run_cpu_bound` works on
    ``message``: more than :data:`INLINE_MAX_FIELDS` top-level header fields and MIME parts
    send all work to threads, and so does inline work past :data:`INLINE_MAX_SECONDS` in all.
    The gateway wraps its detectors' calls in it; a plugin needs it only to run its own work
    outside a scan."""
    heavy = len(message.parts) + len(message.root.headers) > INLINE_MAX_FIELDS
    return _Scanning(_Inline(0.0 if heavy else INLINE_MAX_SECONDS))

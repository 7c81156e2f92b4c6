"""Where a plugin's CPU-bound work runs: on the event loop when it is small, else in a thread.

An ``async`` hook that has CPU work to do (regexes over the text, a signature scan, a parse)
has two choices. A worker thread keeps the event loop free while the work runs, but the
hand-off has a price of its own: a queue put, a thread wake-up, the GIL changing hands twice
and a wake-up of the loop when the result is ready. Through Postfix with 1 KiB messages that
price was larger than the work: running the detectors' work inline took the milter from 2.2 to
1.6 ms of CPU per message (benchmarks/smtp/). For a large input the work dominates and a
thread keeps other connections moving, so :func:`run_cpu_bound` decides by input size.

Only for work that never blocks on I/O (no sockets, no waiting on locks held elsewhere):
inline, that would stall every connection of the worker. Blocking work goes to
:func:`asyncio.to_thread` whatever its size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["INLINE_MAX_BYTES", "run_cpu_bound"]

#: Inputs up to this size are worked on inline. 64 KiB of text keeps the stock rules under a
#: few milliseconds, short enough that other connections barely notice the pause.
INLINE_MAX_BYTES = 64 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_cpu_bound(
    size: int, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run ``fn(*args, **kwargs)``, CPU-bound work on an input of ``size`` bytes.

    Called on the event loop when ``size`` is at most :data:`INLINE_MAX_BYTES`, otherwise in a
    worker thread (:func:`asyncio.to_thread`). ``fn`` must not block on I/O. Exceptions
    propagate either way.
    """
    if size <= INLINE_MAX_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)

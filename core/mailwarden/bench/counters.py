"""What ``mailwarden bench --compare DIR`` counts: instructions where the CPU counts them, else
CPU time; never wall time, which on a shared machine moves with the neighbours' load.

This module imports nothing but the standard library: the compare driver loads it by path into
the interpreter of the other checkout, whose own ``mailwarden.bench`` may not have it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import time

__all__ = ["CPU_TIME", "INSTRUCTIONS", "Counter", "open_counter"]

INSTRUCTIONS = "instructions"
CPU_TIME = "CPU time"

# perf_event_open(2) through ctypes. The PyPI wrappers do not fit: py-perf-event and Cirron
# measure one callable on the calling thread, while a stage here starts on the event loop,
# awaits and hands work to threads; only a free-running counter that the threads inherit,
# read at any point, measures that. Numbers from linux/perf_event.h.
_SYSCALL = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331}
_PERF_TYPE_HARDWARE = 0
_PERF_COUNT_HW_INSTRUCTIONS = 1
_PERF_FORMAT_TIMES = 1 | 2  # TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING
_INHERIT = 1 << 1
_EXCLUDE_KERNEL = 1 << 5
_EXCLUDE_HV = 1 << 6
_PERF_FLAG_FD_CLOEXEC = 1 << 3


class _Attr(ctypes.Structure):
    # PERF_ATTR_SIZE_VER0 (64 bytes): every kernel since 2.6.31 takes it.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
    ]


class Counter:
    """A running count of the work of this process (every thread), read with :meth:`read`.

    ``measure`` is :data:`INSTRUCTIONS` (user-space instructions retired, from the CPU's
    counter) or :data:`CPU_TIME` (nanoseconds of the process CPU clock); ``why`` says why
    instructions are not counted when they are not.
    """

    def __init__(self, measure: str, fd: int | None = None, why: str = "") -> None:
        self.measure, self.why, self._fd = measure, why, fd

    def read(self) -> int:
        """The count so far: instructions, or CPU nanoseconds."""
        if self._fd is None:
            # The process clock, not this thread's: stages hand work to threads.
            return time.process_time_ns()
        value: int
        enabled: int
        running: int
        value, enabled, running = struct.unpack("QQQ", os.read(self._fd, 24))
        # Scaled when the PMU was shared out between more events than it has counters.
        return value if running >= enabled or not running else value * enabled // running

    def close(self) -> None:
        """Release the hardware counter."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _instructions() -> Counter:
    number = _SYSCALL.get(platform.machine())
    if os.name != "posix" or platform.system() != "Linux" or number is None:
        raise OSError(f"no perf_event_open on {platform.system()} {platform.machine()}")
    attr = _Attr(
        type=_PERF_TYPE_HARDWARE,
        size=ctypes.sizeof(_Attr),
        config=_PERF_COUNT_HW_INSTRUCTIONS,
        read_format=_PERF_FORMAT_TIMES,
        # User space only (perf_event_paranoid 2 allows that for one's own process); inherited
        # by the threads started after this, whose counts a read of this counter includes.
        flags=_INHERIT | _EXCLUDE_KERNEL | _EXCLUDE_HV,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        ctypes.c_long(number),
        ctypes.byref(attr),
        ctypes.c_int(0),  # this process
        ctypes.c_int(-1),  # on any CPU
        ctypes.c_int(-1),  # no group
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"perf_event_open: {os.strerror(errno)}")
    counter = Counter(INSTRUCTIONS, fd)
    first = counter.read()
    sum(range(10_000))
    if counter.read() == first:
        # Some hypervisors accept the event and never count it.
        counter.close()
        raise OSError("the instruction counter does not move")
    return counter


def open_counter(measure: str = INSTRUCTIONS) -> Counter:
    """A counter of ``measure``: instructions when this machine counts them, else CPU time.

    Open it before the process starts threads: only threads started later are counted.
    """
    if measure == INSTRUCTIONS:
        try:
            return _instructions()
        except OSError as exc:
            return Counter(CPU_TIME, why=f"instructions not counted here ({exc.strerror or exc})")
    return Counter(CPU_TIME)

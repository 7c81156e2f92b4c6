"""Worker processes: one gateway per core, all accepting on the same ports (SO_REUSEPORT).

The parent forks the workers before any event loop or thread exists, restarts a worker that
dies, and on SIGTERM/SIGINT passes the signal on and waits for all of them; SIGHUP is passed on
so every worker reloads its rules. A worker that changed the config file itself (the web's
config editor, a cluster push) asks for the same through :func:`request_reload`, a pipe the
supervisor made and reads: control stays with the supervisor, no worker signals its parent.
Each worker is a complete gateway (its own plugins, listeners and delivery queue); they share
the spool, where ``flock`` on each message keeps two workers from delivering the same one.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["request_reload", "run_workers", "worker_count"]

log = logging.getLogger(__name__)

# A worker dying sooner than this after its start is restarted only after this long, so a
# worker that cannot start (port taken, broken config) does not spin the CPU.
_RESTART_DELAY = 1.0

# In a worker: the write end of the supervisor's control pipe (None in any other process).
_control: int | None = None


def worker_count(configured: int) -> int:
    """``[smtp] workers`` resolved: 0 means one per core."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def request_reload() -> bool:
    """Have the supervisor tell every worker to reload its config, as SIGHUP to ``serve``
    does; False (nothing done) when this process is not a supervised worker."""
    if _control is None:
        return False
    try:
        os.write(_control, b"r")
    except BlockingIOError:
        pass  # a full pipe holds unread requests: the reload they ask for is still to come
    except OSError:
        return False  # the supervisor is gone
    return True


def run_workers(
    count: int,
    worker: Callable[[], int],
    announce: Callable[[str], None] = print,
    *,
    exited: Callable[[int], None] | None = None,
) -> int:
    """Run ``worker`` in ``count`` child processes until signalled; the exit status.

    ``exited`` is called with the PID of each worker that ended, once it is reaped and before
    any replacement starts (which may get the same PID).
    """
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: dict[int, float] = {}

    def on_hangup(signum: int, _frame: object) -> None:
        # Every worker reloads its own rules.
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    # Both ends stay open here, so the read end never sees end-of-file while workers come and
    # go; neither end blocks (a worker must never wait on its supervisor).
    requests, control = os.pipe()
    os.set_blocking(requests, False)
    os.set_blocking(control, False)

    def reload_requested() -> bool:
        asked = False
        while True:
            try:
                chunk = os.read(requests, 4096)
            except BlockingIOError:
                return asked
            if not chunk:
                return asked
            asked = True

    def reaped(pid: int) -> None:
        if exited is None:
            return
        try:
            exited(pid)
        except Exception:  # the supervisor must go on whatever its bookkeeping does
            log.exception("after worker %d ended", pid)

    def spawn() -> None:
        global _control
        # Unwritten output would otherwise be written again by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals wait until each process has its own handlers: a SIGTERM that reached the
        # child while it still had the parent's handler was lost, and the stop then waited
        # 60 s for that worker before killing it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, previous)
        pid = os.fork()
        if pid == 0:
            for s, handler in previous.items():
                signal.signal(s, handler)
            # Until the worker's event loop takes SIGHUP over, a reload must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(requests)
            _control = control
            code = 1
            try:
                code = worker()
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(code)
        children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        announce(f"  worker   pid {pid}")

    try:
        for _ in range(count):
            spawn()
        while not stopping:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                # The wait for the next request is the poll interval for ended workers.
                select.select([requests], [], [], 0.1)
                if reload_requested():
                    on_hangup(signal.SIGHUP, None)
                continue
            started = children.pop(pid, None)
            if started is None:
                continue
            reaped(pid)
            if stopping:
                continue
            log.warning("worker %d ended (status %d); starting another", pid, status)
            if time.monotonic() - started < _RESTART_DELAY:
                time.sleep(_RESTART_DELAY)
            spawn()
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 60
        while children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.05)
            elif children.pop(pid, None) is not None:
                reaped(pid)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            reaped(pid)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(requests)
        os.close(control)
    return 0

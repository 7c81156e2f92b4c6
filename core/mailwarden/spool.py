"""The durable spool: every message the gateway owns is here, fsynced, before the 250.

One message is ``ID.msg`` in ``queue/``: a JSON line with the envelope and the message's length,
the raw bytes exactly as received, then, once decided, the state (the decision's headers and
the delivery state) as written first, in the page cache only; every later state, and any
that must be durable, is ``ID.state`` beside it, which takes precedence (a state that is lost
only costs a scan).
``ID.msg`` is written in ``tmp/``, fsynced, renamed into ``queue/`` and the directory fsynced, so
after a crash a message is either fully spooled or absent. Its presence means "not yet
delivered to the recipients the state does not list as done"; its removal from ``queue/``
(unlinked, or renamed into ``free/``; the directory fsynced) is the durable record that the
message left the spool. After a delivery that record's sync is
not waited for (the next batch's directory sync covers it): the ``D`` flag below, durable
already, keeps a crash before it from delivering the message twice.

The first byte of ``ID.msg`` is ``Q`` (queued) or ``D`` (in doubt): ``D`` is written, and
fdatasynced, after the message body went to the next hop and before the final dot. A message
found with ``D`` after a crash may or may not have been accepted, so it is quarantined for an
admin rather than delivered a second time: exactly once, or in the quarantine.

A delivered message's file is not unlinked but renamed into ``free/``, emptied, and kept open
(up to :data:`FREE_MAX` files): the next message is written into it once the queue directory's
sync that recorded the removal has run, then fsynced and renamed into ``queue/`` as a new file
would be. Creating a file allocates an inode, which on this VM's ext4 (no journal) scans the
inode table for recently deleted ones: a quarter of the event loop's CPU in ``perf``, and the
last close of an unlinked file frees it again. Waiting for the removal's sync keeps a power
loss from finding the old name in ``queue/`` with the new message in it. A file in ``free/`` is
emptied by the syncer with its next batch (truncating waits for the file system, which the
event loop must not) and ``free/`` is cleared at start like ``tmp/``.

Whoever works on a message holds ``flock`` on its ``.msg`` file. Worker processes sharing the
spool therefore never deliver the same message twice, and a killed process's locks vanish with
it, so a restarted one picks its messages up.

An entry that cannot be read (its header line does not decode, it is not a file, the disk
returns an I/O error) would otherwise stay queued forever and be tried on every walk. It is
moved to ``damaged/`` with an ``ID.reason`` file beside it, and logged once. Nothing there is
deleted silently: past ``damaged_max_bytes`` the oldest entries go, each with a logged warning.
``mailwarden data-inventory`` lists the folder.

From the event loop the syncs of a small message (its fsync and rename, the in-doubt flag's
fdatasync, the removals' directory syncs, the emptying of kept files) go to
:class:`_NativeSyncer`: a few C threads that never take the GIL, each taking every job waiting
when it wakes (while no other thread is idle) and syncing the queue directory once for all of
them; the loop learns of finished jobs on an eventfd it watches. Under load a message shares
its syncs with the others of its batch, and the threads still sync in parallel, which
the file system commits together (one thread syncing every file in turn was half as fast on
this VM). A Python thread taking the GIL back after each batch cost the loop more than the
batch (the handover waits while the loop runs Python: a scan's detectors made it wait the
longer). The rest (a large message, one spooled with its state) goes to :class:`_Syncer`'s
Python threads, batched alike. The durability is the same as in the synchronous methods: the
caller resumes only after its sync returned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import queue
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

import mailwarden_native as native
from mailwarden_sdk import Envelope

from .durable import fsync_dir as _fsync_dir
from .durable import private_dir
from .errors import DeliveryError

__all__ = ["BOOT_ID", "DAMAGED_MAX_BYTES", "Spool", "SpoolEntry", "SpoolState"]

log = logging.getLogger(__name__)

_counter = itertools.count()
# The spooling process's id, in spool ids and state temp names: workers may share a spool,
# so a forked worker takes its own.
_PID = os.getpid()


def _new_pid() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_new_pid)
_QUEUED, _IN_DOUBT = b"Q", b"D"
#: Message files up to this size are read on the caller's thread (see SpoolEntry.raw_if_small).
INLINE_READ_MAX = 256 * 1024
#: Emptied files of delivered messages a spool keeps open for the next ones (see the docstring).
FREE_MAX = 64
#: What ``damaged/`` may hold before its oldest entries are removed (each one logged).
DAMAGED_MAX_BYTES = 1 << 30
# Errors that say the entry itself cannot be read; others (no descriptors left, no memory)
# are the process's and must not move a good message aside.
_UNREADABLE = (errno.EISDIR, errno.EIO, errno.ENOTDIR, errno.ELOOP, errno.EBADMSG)


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        # Elsewhere: the boot's wall time to the minute (wrong only if the clock jumps while
        # this is read, which costs one early retry).
        return f"boot@{round((time.time() - time.monotonic()) / 60)}"


#: This boot of the machine: ``time.monotonic()`` values compare only within one boot.
BOOT_ID = _read_boot_id()


class SpoolState(msgspec.Struct, kw_only=True):
    """What is known about a spooled message beyond its bytes.

    Retry times and the age that decides expiry are measured on the monotonic clock, which a
    change of the wall clock does not move: ``age`` seconds were spent queued up to the
    monotonic instant ``age_mark`` of boot ``boot`` (``age_wall``: the wall time then, used
    only across a reboot), and the next attempt is due at the monotonic ``retry_mono``.
    ``next_attempt`` is the same instant on the wall clock, for people reading the state.
    """

    decided: bool = False
    add_headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    attempts: int = 0
    next_attempt: float = 0.0
    age: float = 0.0
    age_mark: float = 0.0
    age_wall: float = 0.0
    boot: str = ""
    retry_mono: float = 0.0
    # Recipients that are done: accepted by the next hop, or refused and reported in a DSN.
    delivered: list[str] = msgspec.field(default_factory=list)
    last_error: str = ""
    # Generated by us (a DSN): never scanned again and never bounced.
    generated: bool = False


class _Meta(msgspec.Struct, kw_only=True):
    envelope: Envelope
    spooled_at: float
    # The monotonic clock at spooling, and its boot: the start of the message's age.
    spooled_mono: float = 0.0
    boot: str = ""
    # The message's length in bytes: what follows it is the state written with the file
    # (see Spool.save_state). -1 (files of older versions): the message runs to the end.
    size: int = -1


class _GroupSync:
    """The fsync of one directory, shared by the threads that need one at the same time.

    A caller needs a sync that starts after its own rename or unlink; while one runs, the
    callers that arrive wait for the next and one of them runs it for all (a group commit), so
    ten sessions spooling at once cost a few directory syncs instead of ten in a row.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._started = self._done = 0
        self._running = False
        # The folder kept open: an open and a close per sync are two more system calls in a
        # syncer thread, each handing the GIL to the event loop and back.
        self._fd = -1
        self._stale = False

    def reopen(self) -> None:
        """Open the folder again at the next sync (it was made anew)."""
        self._stale = True

    def _sync(self) -> None:
        # One sync runs at a time (``_running``), so the descriptor has one user here.
        if self._stale or self._fd < 0:
            self._stale = False
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(self._fd)

    def __call__(self) -> None:
        with self._cond:
            needed = self._started + 1
            while self._done < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                try:
                    self._sync()
                    synced = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                # A failed sync raised above: its waiters run a new one themselves.
                if synced:
                    self._done = max(self._done, generation)


# Seconds a removal waits for a batch's directory sync to cover it before it asks for one.
_REMOVAL_SYNC_DELAY = 0.05
# Seconds a syncer thread waits for work before it ends.
_SYNCER_IDLE_EXIT = 10.0


class _Kept:
    """An emptied file of a delivered message kept for the next one (see the docstring)."""

    __slots__ = ("fd", "path", "ready", "removal")

    def __init__(self, fd: int, path: str, removal: int) -> None:
        self.fd, self.path, self.removal = fd, path, removal
        # Set on the event loop once the file is empty: True, or False when emptying failed
        # (then it is not used again).
        self.ready: bool | None = None


def _raise_errno(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))


class _Syncer:
    """Threads that run the spool's blocking Python file work for event loops, in batches
    (a large message, one spooled with its state; the small ones' work goes to
    :class:`_NativeSyncer`).

    A thread wakes on the first job and, while every other thread is busy, takes the jobs
    waiting then too; it runs them, syncs the queue directory once when any of them asked for
    it, runs what had to wait for that sync, and resolves the batch's futures with one call
    into each loop. Up to ``threads`` threads work at once, so syncs overlap until all are
    busy, and from then on each wake-up serves a batch.
    """

    def __init__(self, sync_dir: Callable[[], None], threads: int = 4) -> None:
        self._sync_dir = sync_dir
        self._max = threads
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any], bool]
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def run(self, job: Callable[[], Any], *, sync_dir: bool) -> asyncio.Future[Any]:
        """Run ``job`` in a syncer thread; with ``sync_dir`` the queue directory is synced
        after it (and before the callable it returns, if any, runs)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, job, sync_dir))
        with self._lock:
            if self._idle == 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name="spool-sync", daemon=True).start()
        return future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            with self._lock:
                self._idle += 1
            try:
                first = jobs.get(timeout=_SYNCER_IDLE_EXIT)
            except queue.Empty:
                # A spool no longer used (a gateway stopped, a test's) keeps no threads.
                with self._lock:
                    self._idle -= 1
                    # Under the lock run() checks for idle threads after its put: a job put
                    # before this test is seen here, one put after it starts a new thread.
                    if jobs.empty():
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            batch = [first]
            # More jobs only while no other thread waits for work: an idle one syncs in
            # parallel, which the journal commits together, where this thread would sync the
            # files one after the other (one flush each).
            while not self._idle:
                try:
                    batch.append(jobs.get_nowait())
                except queue.Empty:
                    break
            # Per job: [result, exception]; filled in the order the jobs came.
            outcomes: list[list[Any]] = []
            # A job run here that asked for the directory sync and succeeded.
            needs_sync = False
            for _loop, _future, job, sync in batch:
                try:
                    outcomes.append([job(), None])
                    needs_sync = needs_sync or sync
                except BaseException as exc:
                    outcomes.append([None, exc])
            synced = [o for (*_, sync), o in zip(batch, outcomes, strict=True) if sync]
            failed: BaseException | None = None
            if needs_sync:
                try:
                    self._sync_dir()
                except BaseException as exc:
                    failed = exc
                for outcome in synced:
                    if outcome[1] is not None:
                        continue
                    if failed is not None:
                        outcome[:] = [None, failed]
                    elif callable(outcome[0]):
                        try:
                            outcome[0] = outcome[0]()
                        except BaseException as exc:
                            outcome[:] = [None, exc]
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for (loop, future, _job, _sync), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, *outcome))
            del batch, outcomes, synced
            for loop, done in by_loop.items():
                # A closed loop raises RuntimeError: nobody waits there any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, done)
            del by_loop


class _NativeSyncer:
    """The spool's file work that waits for the disk, run by C threads that never take the
    GIL (:class:`mailwarden_native.SpoolQueue`): the fsync and rename of a new message, the
    in-doubt flag's data sync, the emptying of kept files and the queue directory's syncs.

    A job is one call from the event loop; its completion comes back on the queue's eventfd,
    which the loop watches (``add_reader``): no Python thread wakes, takes the GIL or hands
    it back, and no ``call_soon_threadsafe`` per batch. The loop that first submits owns the
    eventfd; one that is closed hands it to the next. Jobs from another loop while the owner
    runs (rare: embedders), and the work after a failure (which may wait for the file system
    again), go to the Python syncer threads. The batches and their directory sync are the
    Python syncer's: the caller resumes only after its sync returned.
    """

    def __init__(self, directory: str, threads: _Syncer, sync_dir: Callable[[], None]) -> None:
        self._directory = directory
        self._sync_dir = sync_dir
        self._encoded = os.fsencode(directory)
        self._threads = threads
        self._queue: native.SpoolQueue | None = None
        self._pid = _PID
        self._loop: asyncio.AbstractEventLoop | None = None
        # Job id -> (its future, or None for an emptied file; what turns its errno into the
        # result or raises).
        self._waiting: dict[int, tuple[asyncio.Future[Any] | None, Callable[[int], Any]]] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _native(self) -> native.SpoolQueue:
        queue_ = self._queue
        if queue_ is not None and self._pid == _PID:
            return queue_
        with self._lock:
            if self._queue is None or self._pid != _PID:
                # A forked worker: the parent's threads are not here (its queue is left).
                self._pid = _PID
                self._loop = None
                self._waiting.clear()
                self._queue = native.SpoolQueue(self._directory, 4, int(_SYNCER_IDLE_EXIT * 1000))
            return self._queue

    def _owned(self, loop: asyncio.AbstractEventLoop) -> native.SpoolQueue | None:
        """The queue when ``loop`` reads its completions (made so when no open loop does)."""
        queue_ = self._native()
        owner = self._loop
        if owner is loop:
            return queue_
        if owner is not None and not owner.is_closed():
            return None
        # Futures of a closed loop can be resolved no more; emptied files still count.
        self._waiting = {k: v for k, v in self._waiting.items() if v[0] is None}
        loop.add_reader(queue_.fd, self._drain)
        self._loop = loop
        return queue_

    def run(
        self, op: int, fd: int, finish: Callable[[int], Any], src: str = "", dst: str = ""
    ) -> asyncio.Future[Any]:
        """Run ``op`` (native.SPOOL_COMMIT, SPOOL_DATASYNC, SPOOL_DIRSYNC) on ``fd``;
        ``finish`` gets its errno (plus ``SPOOL_AT_DIR`` when the directory sync it needed
        failed) and returns the future's result or raises. On an errno it runs in a thread."""
        loop = asyncio.get_running_loop()
        try:
            queue_ = self._owned(loop)
            if queue_ is not None:
                future = loop.create_future()
                id = next(self._ids)
                self._waiting[id] = (future, finish)
                try:
                    queue_.submit(
                        id,
                        op,
                        fd,
                        os.fsencode(src) if src else None,
                        os.fsencode(dst) if dst else None,
                    )
                except OSError:
                    del self._waiting[id]
                    raise
                return future
        except OSError:
            pass  # no queue or thread to be had (descriptors, memory): Python's threads
        return self._threads.run(lambda: finish(self._run_here(op, fd, src, dst)), sync_dir=False)

    def _run_here(self, op: int, fd: int, src: str, dst: str) -> int:
        """A job run in the calling thread (a Python syncer's): its errno as the queue's."""
        if op != native.SPOOL_DIRSYNC:
            errs, _ = native.spool_batch(
                [op], [fd], [os.fsencode(src) if src else None], [os.fsencode(dst) if dst else None]
            )
            if errs[0] or op != native.SPOOL_COMMIT:
                return errs[0]
        try:
            err = self._native().sync_now()
        except OSError:
            try:
                self._sync_dir()  # without the queue (its removals then wait for a later sync)
                err = 0
            except OSError as exc:
                err = exc.errno or errno.EIO
        return native.SPOOL_AT_DIR + err if err else 0

    def _drain(self) -> None:
        waiting = self._waiting
        queue_ = self._queue
        if queue_ is None:
            return
        for id, err in queue_.done():
            item = waiting.pop(id, None)
            if item is None:
                continue
            future, finish = item
            if future is None:
                finish(err)
            elif err:
                # Undoing may wait for the file system (a rename, a sync): not on the loop.
                inner = self._threads.run(partial(finish, err), sync_dir=False)
                inner.add_done_callback(partial(_pass_on, future))
            else:
                _resolve([(future, *_finished(finish, err))])

    def empty_later(self, kept: _Kept) -> int:
        """Empty ``kept``'s file with the next batch, before its directory sync (truncating
        waits for the file system, which the event loop must not), and count its removal
        as :meth:`sync_later` does; returns the removal's number. The file is marked ready
        on the loop reading the completions."""
        queue_ = self._native()
        id = next(self._ids)

        def emptied(err: int) -> None:
            kept.ready = not err

        self._waiting[id] = (None, emptied)
        removal = queue_.empty_later(id, kept.fd)
        if removal == 0:
            del self._waiting[id]
            kept.ready = False
            removal = queue_.count_removal()
        self._arm()
        return removal

    def sync_later(self) -> int:
        """Count a removal whose directory entry must reach the disk: the next batch's sync
        covers it; if none has started within :data:`_REMOVAL_SYNC_DELAY`, one is run.
        Returns the removal's number: it is on the disk once :meth:`covered` reaches it."""
        removal = self._native().count_removal()
        self._arm()
        return removal

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        # A timer of a loop that has ended (a test's asyncio.run) never fires: not waited on.
        if self._timer is None or self._timer_loop is not loop:
            self._timer_loop = loop
            self._timer = loop.call_later(_REMOVAL_SYNC_DELAY, self._sync_if_needed)

    def available(self) -> None:
        """Raise OSError when the C queue cannot be had (no descriptor or memory left)."""
        self._native()

    def threads(self) -> int:
        """The C threads running now (they end when idle)."""
        queue_ = self._queue
        return queue_.threads() if queue_ is not None and self._pid == _PID else 0

    def covered(self) -> int:
        """How many removals counted by :meth:`sync_later` a finished directory sync covers."""
        queue_ = self._queue
        return queue_.covered() if queue_ is not None and self._pid == _PID else 0

    def _sync_if_needed(self) -> None:
        self._timer = None
        queue_ = self._native()
        if queue_.covered() < queue_.removals():
            self.run(native.SPOOL_DIRSYNC, -1, _raise_errno).add_done_callback(_log_failed_sync)

    def close(self) -> None:
        """Let the C threads go once their work is done (the spool is gone)."""
        queue_, loop = self._queue, self._loop
        if queue_ is None or self._pid != _PID:
            return
        self._queue = None
        if loop is None or loop.is_closed():
            queue_.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _stop_reading(loop, queue_)
            return
        try:
            # The eventfd is closed only once the loop no longer watches it.
            loop.call_soon_threadsafe(_stop_reading, loop, queue_)
        except RuntimeError:
            queue_.close()


def _stop_reading(loop: asyncio.AbstractEventLoop, queue_: native.SpoolQueue) -> None:
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        loop.remove_reader(queue_.fd)
    queue_.close()


def _finished(finish: Callable[[int], Any], err: int) -> tuple[Any, BaseException | None]:
    try:
        return finish(err), None
    except BaseException as exc:
        return None, exc


def _pass_on(future: asyncio.Future[Any], inner: asyncio.Future[Any]) -> None:
    if inner.cancelled():
        future.cancel()
        return
    exc = inner.exception()
    _resolve([(future, None if exc is not None else inner.result(), exc)])


def _no_job() -> None:
    return None


def _log_failed_sync(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        # The removals it covered reach the disk with a later sync; a crash before that
        # finds them flagged in doubt and quarantines them.
        log.warning("syncing the spool's queue directory failed: %s", future.exception())


def _resolve(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in done:
        if future.cancelled():
            if isinstance(result, SpoolEntry):
                # Spooled for a caller that is gone (its client without a 250 resends it):
                # unlocked, the queue's walk delivers it, so at worst it arrives twice.
                result.release()
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class SpoolEntry:
    """One spooled message, locked by this process until :meth:`release` or removal."""

    def __init__(
        self,
        spool: Spool,
        id: str,
        fd: int,
        envelope: Envelope,
        spooled_at: float,
        *,
        spooled_mono: float = 0.0,
        boot: str = "",
        start: int = -1,
        size: int = -1,
    ):
        self.spool = spool
        self.id = id
        self.fd = fd
        self.envelope = envelope
        self.spooled_at = spooled_at
        self.spooled_mono = spooled_mono
        self.boot = boot
        # remove_delivered() made the removal of the message file durable already.
        self.unlinked = False
        # Where the message starts in the file and its length (-1: up to the end, a file of
        # an older version); the state kept in the file starts right after it.
        self._start = start
        self._size = size
        # Known to this process without reading the file: the message bytes (a small one
        # this process spooled) and the first byte (Q or D) as last written here.
        self._data: bytes | None = None
        self._flag: bytes | None = None
        # No state written for it yet, neither in the file nor beside it (spooled here).
        self._stateless = False
        # A ``.state`` file may exist beside it (unknown for one this process did not spool).
        self._state_file = True

    @property
    def path(self) -> Path:
        """The message file."""
        return self.spool.queue / f"{self.id}.msg"

    def raw(self) -> bytes:
        """The message bytes as received."""
        return self._raw(os.fstat(self.fd).st_size)

    def _raw(self, size: int) -> bytes:
        data = os.pread(self.fd, size, 0)
        start = data.index(b"\n") + 1
        return data[start:] if self._size < 0 else data[start : start + self._size]

    def raw_if_small(self, limit: int = INLINE_READ_MAX) -> bytes | None:
        """The message bytes when the file holds at most ``limit`` bytes, else ``None``.

        A spooled message was just written (or its header line just read), so it is in the
        page cache: reading a small one costs microseconds, far less than a hop to a thread
        and back, which is kept for large ones. One this process spooled is not read at all.
        """
        if self._data is not None:
            return self._data
        size = os.fstat(self.fd).st_size
        return None if size > limit else self._raw(size)

    def release(self) -> None:
        """Give the message back to the spool (closing the descriptor drops the lock)."""
        self._data = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spool:
    """The spool directory at ``root`` (``tmp/`` and ``queue/`` are created on first use)."""

    def __init__(self, root: Path, *, damaged_max_bytes: int = DAMAGED_MAX_BYTES) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.queue = root / "queue"
        self.damaged = root / "damaged"
        self.free = root / "free"
        self.damaged_max_bytes = damaged_max_bytes
        # The hot paths join strings: a pathlib join and its str() cost more than the
        # system call they feed (five or six per message).
        self._queue_s = f"{self.queue}{os.sep}"
        self._tmp_s = f"{self.tmp}{os.sep}"
        self._free_s = f"{self.free}{os.sep}"
        # Emptied files of delivered messages, locked and open, for the next messages: the
        # descriptor, the path in free/ and the removal's number (reused once synced).
        self._pool: collections.deque[_Kept] = collections.deque()
        self._pool_pid = _PID
        self._pool_lock = threading.Lock()
        weakref.finalize(self, _close_pool, self._pool)
        self._sync_queue = _GroupSync(self.queue)
        self._threads = _Syncer(self._sync_queue)
        self._syncer = _NativeSyncer(str(self.queue), self._threads, self._sync_queue)
        weakref.finalize(self, self._syncer.close)
        self._made = False

    def _ensure(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.queue.mkdir(parents=True, exist_ok=True)
        self.free.mkdir(exist_ok=True)
        if self._made:
            # Made again under a running gateway: the folder held open is the removed one.
            self._sync_queue.reopen()
        self._made = True

    def _create(self, path: str) -> int:
        # The folders are made once, not per message (two mkdir calls that raise inside);
        # one removed under a running gateway is made again.
        if not self._made:
            self._ensure()
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            self._ensure()
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def recover(self) -> int:
        """Remove temp files left by a crash (messages never acknowledged); count them.

        Call only when no other process writes to this spool.
        """
        self._ensure()
        removed = 0
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        # Emptied files kept for reuse, or a message cut off while written into one.
        for path in self.free.iterdir():
            path.unlink(missing_ok=True)
        for path in self.queue.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        # A state whose message is gone belongs to a message that was already delivered.
        for path in self.queue.glob("*.state"):
            if not path.with_suffix(".msg").exists():
                path.unlink(missing_ok=True)
        return removed

    def write(self, raw: bytes, envelope: Envelope, state: SpoolState | None = None) -> SpoolEntry:
        """Spool ``raw`` durably and return it locked; raises DeliveryError when it cannot."""
        entry = self._write_file(raw, envelope, state)
        try:
            self._sync_queue()
        except OSError as exc:
            self._undo_write(entry)
            raise DeliveryError(f"cannot spool the message: {exc.strerror or exc}") from exc
        return entry

    async def write_async(
        self, raw: bytes, envelope: Envelope, state: SpoolState | None = None
    ) -> SpoolEntry:
        """:meth:`write` from an event loop: the file work in a syncer thread, its directory
        sync shared with the other jobs of its batch."""
        if state is None and len(raw) <= INLINE_READ_MAX:
            # Creating, writing and locking a small file is page-cache work of microseconds,
            # done here; the C threads do only what waits for the disk (the sync, the rename
            # after it, the directory's sync), without the GIL.
            entry, tmp = self._open_file(raw, envelope, pooled=True)
            entry._stateless = True
            spooled: SpoolEntry = await self._syncer.run(
                native.SPOOL_COMMIT,
                entry.fd,
                partial(self._committed, entry, tmp),
                tmp,
                f"{self._queue_s}{entry.id}.msg",
            )
            return spooled
        written: list[SpoolEntry] = []

        def write_job() -> SpoolEntry:
            written.append(self._write_file(raw, envelope, state))
            return written[0]

        try:
            spooled = await self._threads.run(write_job, sync_dir=True)
        except OSError as exc:
            # Only the shared directory sync raises OSError here: the entry is in queue/.
            self._undo_write(written[0])
            raise DeliveryError(f"cannot spool the message: {exc.strerror or exc}") from exc
        return spooled

    def _undo_write(self, entry: SpoolEntry) -> None:
        # Its rename may have reached the disk: the client gets a 4xx and keeps the message,
        # so the spooled copy goes (else it would be delivered as well as sent again).
        _unlink(f"{self._queue_s}{entry.id}.msg")
        entry.release()

    def _write_file(self, raw: bytes, envelope: Envelope, state: SpoolState | None) -> SpoolEntry:
        """Everything of :meth:`write` before the queue directory's sync."""
        entry, tmp = self._open_file(raw, envelope)
        self._commit_file(entry, tmp, state)
        return entry

    def _open_file(
        self, raw: bytes, envelope: Envelope, *, pooled: bool = False
    ) -> tuple[SpoolEntry, str]:
        """The message written (not synced) and locked in ``tmp/``, or with ``pooled`` in a
        file of the pool when one is ready: the entry and its path."""
        try:
            id = f"{time.time_ns():x}{_PID:x}{next(_counter):x}{os.urandom(3).hex()}"
            now, mono = time.time(), time.monotonic()
            meta = msgspec.json.encode(
                _Meta(
                    envelope=envelope,
                    spooled_at=now,
                    spooled_mono=mono,
                    boot=BOOT_ID,
                    size=len(raw),
                )
            )
            header = _QUEUED + meta + b"\n"
            reused = self._from_pool() if pooled else None
            if reused is None:
                tmp = f"{self._tmp_s}{id}.msg"
                fd = self._create(tmp)
            else:
                # Empty, and locked since it was this process's message.
                fd, tmp = reused
            try:
                # At offset 0: a file of the pool keeps the offset its last message left.
                view, at = memoryview(header + raw), 0
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
                if reused is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                _unlink(tmp)
                raise
        except OSError as exc:
            # Full disk or permissions: the client keeps the message when answered 4xx.
            raise DeliveryError(f"cannot spool the message: {exc.strerror or exc}") from exc
        entry = SpoolEntry(
            self,
            id,
            fd,
            envelope,
            now,
            spooled_mono=mono,
            boot=BOOT_ID,
            start=len(header),
            size=len(raw),
        )
        entry._flag = _QUEUED
        entry._state_file = False
        if len(raw) <= INLINE_READ_MAX:
            entry._data = raw
        return entry, tmp

    def _from_pool(self) -> tuple[int, str] | None:
        """An emptied file of a delivered message whose removal is on the disk, or None."""
        pool = self._pool
        if not pool:
            return None
        with self._pool_lock:
            if self._pool_pid != _PID:
                # A forked worker shares the parent's descriptions (and their locks).
                _close_pool(pool)
                self._pool_pid = _PID
                return None
            while pool and pool[0].ready is False:
                spoiled = pool.popleft()
                os.close(spoiled.fd)
                _unlink(spoiled.path)
            if not pool or not pool[0].ready or pool[0].removal > self._syncer.covered():
                return None
            kept = pool.popleft()
        return kept.fd, kept.path

    def _to_pool(self, entry: SpoolEntry) -> bool:
        """Move the delivered ``entry`` out of ``queue/`` into the pool; False when it cannot
        be kept (the pool full, a failure: then it is still in ``queue/``)."""
        if len(self._pool) >= FREE_MAX or self._pool_pid != _PID or entry.fd < 0:
            return False
        try:
            self._syncer.available()
        except OSError:
            return False  # no queue to empty it (out of descriptors): unlinked instead
        free = f"{self._free_s}{entry.id}"
        try:
            os.rename(f"{self._queue_s}{entry.id}.msg", free)
        except OSError:
            # free/ removed under a running gateway: made again for the next one.
            with contextlib.suppress(OSError):
                self.free.mkdir(exist_ok=True)
            return False
        # Renamed first and emptied after (by the syncer): a crash in between leaves a whole
        # message in free/, not an empty one in queue/ (read as damaged).
        kept = _Kept(entry.fd, free, 0)
        entry.fd = -1
        entry._data = None
        with self._pool_lock:
            self._pool.append(kept)
            kept.removal = self._syncer.empty_later(kept)
        return True

    def _committed(self, entry: SpoolEntry, tmp: str, err: int) -> SpoolEntry:
        """The end of a small message's native job (fsync, rename into ``queue/``, sync),
        given its errno: the entry, or on a failure the file gone, the entry released and
        DeliveryError raised."""
        if err == 0:
            return entry
        if err >= native.SPOOL_AT_DIR:
            # Renamed into queue/, but the folder's sync failed: the client gets a 4xx and
            # keeps the message, so the spooled copy goes.
            self._undo_write(entry)
            raise DeliveryError(
                f"cannot spool the message: {os.strerror(err - native.SPOOL_AT_DIR)}"
            )
        if err == native.SPOOL_AT_RENAME + errno.ENOENT:
            # The folders were removed under a running gateway: what _commit_file does then.
            try:
                self._ensure()
                if not os.path.lexists(tmp):
                    tmp = self._rewrite(entry)
                os.rename(tmp, f"{self._queue_s}{entry.id}.msg")
                self._sync_queue()
                return entry
            except OSError as exc:
                err = exc.errno or errno.EIO
        entry.release()
        _unlink(tmp)
        raise DeliveryError(
            f"cannot spool the message: {os.strerror(err % native.SPOOL_AT_RENAME)}"
        )

    def _commit_file(self, entry: SpoolEntry, tmp: str, state: SpoolState | None) -> None:
        """Sync the file written by :meth:`_open_file`, save ``state`` with it (durably) and
        move it into ``queue/``; on a failure the file is gone and the entry released."""
        try:
            os.fsync(entry.fd)
            entry._stateless = state is None
            if state is not None:
                self.save_state(entry, state, durable=True)
            queued = f"{self._queue_s}{entry.id}.msg"
            try:
                os.rename(tmp, queued)
            except FileNotFoundError:
                self._ensure()
                if not os.path.lexists(tmp):
                    # A file of the pool whose folder was removed meanwhile: written anew.
                    tmp = self._rewrite(entry)
                os.rename(tmp, queued)
        except BaseException as exc:
            entry.release()
            _unlink(tmp)
            if isinstance(exc, OSError):
                raise DeliveryError(f"cannot spool the message: {exc.strerror or exc}") from exc
            raise

    def _rewrite(self, entry: SpoolEntry) -> str:
        """Copy ``entry``'s file to a new one in ``tmp/`` (fsynced, locked), which it then
        holds instead; the path of the copy."""
        data = os.pread(entry.fd, os.fstat(entry.fd).st_size, 0)
        tmp = f"{self._tmp_s}{entry.id}.msg"
        fd = self._create(tmp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(entry.fd)
        entry.fd = fd
        return tmp

    def ids(self) -> list[str]:
        """Ids of the spooled messages, oldest first (ids start with the spool time)."""
        if not self.queue.is_dir():
            return []
        return sorted(p.name[:-4] for p in self.queue.iterdir() if p.name.endswith(".msg"))

    def claim(self, id: str) -> SpoolEntry | None:
        """Lock the message ``id`` for this process; None if it is busy, gone or unreadable
        (then moved to ``damaged/``)."""
        try:
            fd = os.open(self.queue / f"{id}.msg", os.O_RDWR)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _UNREADABLE:
                self._set_aside(id, f"cannot be opened: {exc.strerror or exc}")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            # The holder may have finished (and unlinked it) between our open and our lock.
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                line = handle.readline()
            if not line.endswith(b"\n") or line[:1] not in (_QUEUED, _IN_DOUBT):
                raise ValueError("no envelope line")
            meta = msgspec.json.decode(line[1:], type=_Meta)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNREADABLE:
                self._set_aside(id, f"cannot be read: {exc.strerror or exc}")
            return None
        except (msgspec.DecodeError, ValueError) as exc:
            # Under our lock: no other process is writing it (a spooled file is complete).
            self._set_aside(id, f"its envelope line does not decode: {exc}")
            os.close(fd)
            return None
        return SpoolEntry(
            self,
            id,
            fd,
            meta.envelope,
            meta.spooled_at,
            spooled_mono=meta.spooled_mono,
            boot=meta.boot,
            start=len(line),
            size=meta.size,
        )

    def _set_aside(self, id: str, reason: str) -> None:
        """Move the unreadable entry ``id`` (and its state) to ``damaged/``, once, logged."""
        private_dir(self.damaged)
        source = self.queue / f"{id}.msg"
        try:
            os.rename(source, self.damaged / f"{id}.msg")
        except FileNotFoundError:
            return  # another process moved it first
        state = self.queue / f"{id}.state"
        if state.exists():
            os.replace(state, self.damaged / f"{id}.state")
        note = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}\n"
        fd = os.open(self.damaged / f"{id}.reason", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, note.encode("utf-8", "replace"))
        finally:
            os.close(fd)
        _fsync_dir(self.damaged)
        _fsync_dir(self.queue)
        log.error("spool entry %s is unreadable (%s): moved to %s", id, reason, self.damaged)
        self._cap_damaged()

    def _cap_damaged(self) -> None:
        entries: dict[str, list[Path]] = {}
        total = 0
        for path in self.damaged.iterdir():
            entries.setdefault(path.name.split(".", 1)[0], []).append(path)
            total += _size(path)
        # Ids start with the spool time in hex, so they sort oldest first.
        for id in sorted(entries):
            if total <= self.damaged_max_bytes or len(entries) <= 1:
                return
            for path in entries.pop(id):
                total -= _size(path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            log.warning(
                "damaged spool entry %s removed: %s holds more than %d bytes",
                id,
                self.damaged,
                self.damaged_max_bytes,
            )

    def load_state(self, id: str) -> SpoolState:
        """The state of ``id``; a missing or unreadable one means "not decided yet"."""
        try:
            return msgspec.json.decode((self.queue / f"{id}.state").read_bytes(), type=SpoolState)
        except FileNotFoundError:
            return self._state_in_file(id)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            # Rescanning is always safe, so an unreadable state only costs a scan.
            return SpoolState()

    def _state_in_file(self, id: str) -> SpoolState:
        """The state written after the message in its own file (no ``.state`` beside it)."""
        try:
            with open(f"{self._queue_s}{id}.msg", "rb") as handle:
                line = handle.readline()
                meta = msgspec.json.decode(line[1:], type=_Meta)
                if meta.size < 0:
                    return SpoolState()
                handle.seek(len(line) + meta.size)
                tail = handle.read()
            # Empty: none written yet; cut short by a crash: unreadable, so scanned again.
            return msgspec.json.decode(tail, type=SpoolState) if tail else SpoolState()
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return SpoolState()

    def save_state(self, entry: SpoolEntry, state: SpoolState, *, durable: bool) -> None:
        """Replace the state of ``entry`` atomically; ``durable`` fsyncs it before returning."""
        path = f"{self._queue_s}{entry.id}.state"
        if not durable and entry._stateless and entry._size >= 0 and entry.fd >= 0:
            # The first state of a message spooled here goes into its own file, after the
            # message: one write in the page cache, where a file beside it cost a create, a
            # write, a close and at removal an unlink (and the file system an inode each).
            # A ``.state`` file, written from then on, takes precedence over it.
            entry._stateless = False
            os.pwrite(entry.fd, msgspec.json.encode(state), entry._start + entry._size)
            return
        if not durable:
            # A state that may be lost (it saves a rescan) and that ``entry`` has none of yet
            # is written in place: a reader in between, or a crash, finds it unreadable, which
            # reads as "not decided", the same as no state (a rename less per message).
            entry._state_file = True
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                try:
                    os.write(fd, msgspec.json.encode(state))
                finally:
                    os.close(fd)
                return
        entry._state_file = True
        tmp = f"{self._queue_s}.{entry.id}.{_PID}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(state))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            self._sync_queue()

    def mark_in_doubt(self, entry: SpoolEntry, in_doubt: bool) -> None:
        """Flag (or clear) "the next hop may have it": set just before the final dot."""
        flag = _IN_DOUBT if in_doubt else _QUEUED
        os.pwrite(entry.fd, flag, 0)
        entry._flag = flag
        # The flag is one byte in place: a data sync, no directory sync, keeps it cheap.
        os.fdatasync(entry.fd)

    async def mark_in_doubt_async(self, entry: SpoolEntry, in_doubt: bool) -> None:
        """:meth:`mark_in_doubt` from an event loop: the byte written here, its data sync in a
        syncer thread's batch."""
        flag = _IN_DOUBT if in_doubt else _QUEUED
        os.pwrite(entry.fd, flag, 0)
        entry._flag = flag
        await self._syncer.run(native.SPOOL_DATASYNC, entry.fd, _raise_errno)

    async def remove_delivered(self, entry: SpoolEntry) -> None:
        """:meth:`remove` on an event loop once the next hop took the message: the unlink is
        made durable by the queue directory's next sync, which the syncer runs with its next
        batch (or within :data:`_REMOVAL_SYNC_DELAY` when no batch comes), not waited for.

        Waiting would protect nothing: the in-doubt flag was made durable before the final
        dot, so a crash before the unlink reaches the disk finds the message flagged and
        quarantines it instead of delivering it twice, whether or not anyone waited.
        """
        if self._to_pool(entry):
            entry.unlinked = True
            if entry._state_file:
                _unlink(f"{self._queue_s}{entry.id}.state")
            return
        _unlink(f"{self._queue_s}{entry.id}.msg")
        entry.unlinked = True
        self.remove(entry)
        try:
            self._syncer.sync_later()
        except OSError:
            # No C queue: a Python thread's directory sync records the removal soon.
            self._threads.run(_no_job, sync_dir=True).add_done_callback(_log_failed_sync)

    def in_doubt(self, entry: SpoolEntry) -> bool:
        """True when a delivery of ``entry`` was cut off before its outcome was recorded."""
        flag = entry._flag
        return (flag if flag is not None else os.pread(entry.fd, 1, 0)) == _IN_DOUBT

    def remove(self, entry: SpoolEntry) -> None:
        """The message left the spool: unlink it durably, then its state, then unlock."""
        try:
            if not entry.unlinked:
                _unlink(f"{self._queue_s}{entry.id}.msg")
                self._sync_queue()
            if entry._state_file:
                _unlink(f"{self._queue_s}{entry.id}.state")
        finally:
            entry.release()


def _close_pool(pool: collections.deque[_Kept]) -> None:
    # Closed, not unlinked: free/ is cleared at the next start.
    while pool:
        with contextlib.suppress(OSError):
            os.close(pool.popleft().fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return sum(p.lstat().st_size for p in path.rglob("*"))
        return path.lstat().st_size
    except OSError:
        return 0

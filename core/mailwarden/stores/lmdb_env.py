"""LMDB environments for the core's indices: a map that grows, stale readers cleared, one writer.

LMDB itself admits one write transaction at a time across every process that opens the
environment (its lock file holds a robust mutex), which is the one-writer discipline the worker
processes need. Inside a process an environment is opened once and shared (LMDB allows no
more), and one lock orders its transactions, because growing the map remaps it and LMDB
requires that no transaction of the process is open then.

The map starts small and doubles whenever a write finds it full, up to ``max_map_size``; a
process whose neighbour grew the map adopts the new size when LMDB says so. Reader slots left
behind by killed processes are cleared at open, so a SIGKILLed worker never pins old pages.

A damaged environment is moved aside, never used and never deleted: before LMDB maps
``data.mdb`` its two meta pages are read and the file's length checked against the last page
they name (a truncated file would otherwise kill the process with SIGBUS on the first read),
the first and last entries of every database are read at open, and any transaction LMDB
answers with MDB_CORRUPTED, MDB_PAGE_NOTFOUND or MDB_INVALID recovers too. Recovery renames the
directory to ``NAME.corrupt-<UTC time>`` beside it (kept for forensics and listed by the data
inventory), creates it anew, and tells the listeners registered with :func:`on_recovered`
(the gateway writes an application log entry and counts ``mailwarden_store_recovered``). Other
processes notice that ``data.mdb`` changed under them and reopen.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from ..durable import PRIVATE_FILE, fsync_dir, private_dir

__all__ = [
    "CORRUPT_MARK",
    "LmdbEnv",
    "Recovery",
    "damaged_copies",
    "on_recovered",
    "recovered_counts",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_INITIAL_MAP = 16 << 20
_MAX_MAP = 1 << 40
# Doubling from 16 MiB reaches 1 TiB in 16 steps; more attempts mean something else is wrong.
_MAX_ATTEMPTS = 24

# How long a reader goes on with an environment before it checks that no other process has
# replaced it (seconds).
_CHECK_EVERY = 1.0
#: What a damaged environment's directory is renamed to: ``NAME`` + this + a UTC time.
CORRUPT_MARK = ".corrupt-"
# What LMDB says about a damaged file; other errors (a full disk, a full map, permissions) are
# not the file's fault and must not move a healthy store aside. MDB_BAD_TXN: a damaged page
# met inside LMDB can poison the transaction without saying why (1 in 30 random page
# corruptions did so at open).
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadTxnError)
# LMDB's meta page (64-bit builds): a 16-byte page header, magic and version, the free and main
# database records (48 bytes each, the first's pad holding the page size), the last page used
# and the transaction id. Both meta pages must be valid; the newer one names the file's end.
_META = struct.Struct("<QHHHHIIQQ")
_META_PSIZE = struct.Struct("<I")
_META_TAIL = struct.Struct("<QQ")
_MAGIC, _DATA_VERSION, _P_META = 0xBEEFC0DE, 1, 0x08


class Recovery(msgspec.Struct, kw_only=True, frozen=True):
    """A damaged store moved aside and made anew."""

    store: str
    path: str
    moved_to: str
    reason: str
    time: float


_LISTENERS: list[Callable[[Recovery], None]] = []
_PENDING: list[Recovery] = []
_COUNTS: dict[str, int] = {}
_NOTIFY_LOCK = threading.Lock()
_NOTIFYING = threading.local()


def on_recovered(listener: Callable[[Recovery], None]) -> Callable[[], None]:
    """Call ``listener`` for every store this process recovers from now on; returns the
    function that removes it again."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener) if listener in _LISTENERS else None


def recovered_counts() -> dict[str, int]:
    """Stores recovered by this process since it started, by store name."""
    with _NOTIFY_LOCK:
        return dict(_COUNTS)


def damaged_copies(store: Path) -> list[Path]:
    """The damaged copies recovery left of the store at ``store``: ``NAME.corrupt-*`` beside
    it, and inside it for the environments a store keeps in its folder (the backup index)."""
    found: list[Path] = []
    if store.parent.is_dir():
        found += store.parent.glob(f"{glob.escape(store.name)}{CORRUPT_MARK}*")
    if store.is_dir():
        found += store.glob(f"*{CORRUPT_MARK}*")
    return sorted(found)


def _notify() -> None:
    # Called with no store lock held: a listener writes to another store (the application
    # log), which may be the one just recovered.
    if not _PENDING or getattr(_NOTIFYING, "active", False):
        return
    _NOTIFYING.active = True
    try:
        while True:
            with _NOTIFY_LOCK:
                if not _PENDING:
                    return
                recovery = _PENDING.pop(0)
            for listener in list(_LISTENERS):
                try:
                    listener(recovery)
                except Exception:
                    log.exception("telling about the recovery of %s failed", recovery.store)
    finally:
        _NOTIFYING.active = False


def _identity(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the environment's ``data.mdb``; ``path`` may be that file's name as
    a string (what each transaction checks: no path objects built per transaction)."""
    try:
        st = os.stat(path if isinstance(path, str) else path / "data.mdb")
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _damage(data: Path) -> str | None:
    """Why the LMDB file ``data`` cannot be mapped safely, or ``None`` (absent or empty: new).

    Asked twice when the answer is bad: another process may be committing (a meta page read
    while it is written, a file not yet grown), and a healthy store must never be moved.
    """
    reason = _damage_now(data)
    if reason is None:
        return None
    time.sleep(0.05)
    return _damage_now(data)


def _damage_now(data: Path) -> str | None:
    try:
        with data.open("rb") as handle:
            head = handle.read(160)
            if not head:
                return None
            if len(head) < 152:
                return f"data.mdb is {len(head)} bytes, shorter than a meta page"
            psize = _META_PSIZE.unpack_from(head, 40)[0]
            if psize < 512 or psize & (psize - 1) or psize > 1 << 16:
                return f"data.mdb has no valid meta page (page size {psize})"
            newest: tuple[int, int] | None = None
            for number in range(2):
                handle.seek(number * psize)
                page = handle.read(160)
                if len(page) < 152:
                    return "data.mdb is shorter than its two meta pages"
                _pgno, _pad, flags, _lo, _up, magic, version, _addr, _map = _META.unpack_from(page)
                if not flags & _P_META or magic != _MAGIC or version != _DATA_VERSION:
                    return f"meta page {number} of data.mdb is not valid"
                last, txnid = _META_TAIL.unpack_from(page, 136)
                if newest is None or txnid > newest[0]:
                    newest = (txnid, last)
            # After the meta pages: a writer grows the file before it writes the meta page
            # that names the new end.
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return None
    assert newest is not None
    end = (newest[1] + 1) * psize
    if size < end:
        return f"data.mdb is truncated: {size} bytes, its last page ends at byte {end}"
    return None


def _move_aside(path: Path, store: str, reason: str, seen: tuple[int, int] | None) -> None:
    """Rename the damaged directory ``path`` beside itself and create it empty.

    Serialised over processes by a lock on the directory itself; a process that finds the
    directory (or its ``data.mdb``) replaced while it waited leaves the new one alone.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            path.mkdir(parents=True, exist_ok=True)
            return
        if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
            return
        if seen is not None and _identity(path) != seen:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{CORRUPT_MARK}{stamp}-{n}")
        os.rename(path, target)
        path.mkdir(mode=held.st_mode & 0o777)
        fsync_dir(path.parent)
    finally:
        os.close(fd)
    recovery = Recovery(
        store=store, path=str(path), moved_to=str(target), reason=reason, time=time.time()
    )
    log.error(
        "store %s at %s was damaged (%s): moved aside to %s and created anew",
        store,
        path,
        reason,
        target,
    )
    with _NOTIFY_LOCK:
        _COUNTS[store] = _COUNTS.get(store, 0) + 1
        _PENDING.append(recovery)


class _Shared:
    """One open environment of this process and how many :class:`LmdbEnv` objects use it."""

    def __init__(self, env: Any, identity: tuple[int, int] | None) -> None:
        self.env = env
        self.lock = threading.RLock()
        self.refs = 0
        self.pid = os.getpid()
        # data.mdb as opened: another process that recovered the store replaced it.
        self.identity = identity
        # Bumped when the environment is reopened, so each user opens its databases again.
        self.generation = 0
        self.probed = False
        self.checked = time.monotonic()


# LMDB allows an environment to be opened once per process: a gateway's event log and the
# inventory (or the web interface) reading the same folder share one handle.
_OPEN: dict[str, _Shared] = {}
_OPEN_LOCK = threading.Lock()
_OPENING = threading.RLock()


def _acquire(path: Path, opener: Callable[[], Any]) -> _Shared:
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        shared = _OPEN.get(key)
        if shared is None or shared.pid != os.getpid():
            # After a fork the parent's handle must not be used: open our own.
            shared = _OPEN[key] = _Shared(opener(), _identity(path))
        shared.refs += 1
        return shared


def _release(path: Path, shared: _Shared) -> None:
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        shared.refs -= 1
        if shared.refs <= 0:
            if _OPEN.get(key) is shared:
                del _OPEN[key]
            shared.env.close()


class LmdbEnv:
    """One LMDB environment (a directory with ``data.mdb`` and ``lock.mdb``), opened lazily.

    Opening is deferred to the first use so that an object built before ``fork`` (the serve
    parent builds a gateway, then forks workers) never shares an environment across processes.
    """

    def __init__(
        self,
        path: Path,
        *,
        dbs: dict[str, bool],
        sync: bool = True,
        initial_map_size: int = _INITIAL_MAP,
        max_map_size: int = _MAX_MAP,
        name: str = "",
    ) -> None:
        """``dbs`` maps each named database to whether it is an index (dupsort, fixed values);
        ``name`` is the store's name in logs and metrics (the directory's name by default)."""
        self.path = path
        self._data = os.path.join(path, "data.mdb")
        self.name = name or path.name
        self._db_specs = dbs
        self._sync = sync
        self._initial = initial_map_size
        self._max = max_map_size
        self._env: Any = None
        self._shared: _Shared | None = None
        self._generation = -1
        self._dbs: dict[str, Any] = {}
        self._lock = threading.RLock()

    def _open(self) -> Any:
        if self._env is not None:
            return self._env
        # One lock for every open in the process, not this object's: the object's lock is
        # swapped for the shared environment's below, and a thread arriving after the swap
        # would otherwise open alongside the first. Two open_db calls (or an open_db and a
        # write of another object on the same environment) at once deadlocked a worker at
        # start-up: each held what the other needed, LMDB's write mutex or the GIL.
        try:
            with _OPENING:
                if self._env is not None:
                    return self._env
                private_dir(self.path)
                shared = _acquire(self.path, self._open_env)
                with shared.lock:
                    self._attach_or_recover(shared)
                    # Before _env is set: whoever sees the environment open also sees its lock.
                    self._lock = shared.lock
                    self._env = shared.env
                return self._env
        finally:
            _notify()

    def _attach(self, shared: _Shared) -> None:
        """Open this object's databases in ``shared``'s environment (probing it once)."""
        self._shared = shared
        for name, index in self._db_specs.items():
            for _ in range(_MAX_ATTEMPTS):
                try:
                    self._dbs[name] = shared.env.open_db(
                        name.encode(), dupsort=index, dupfixed=index, create=True
                    )
                    break
                except lmdb.MapResizedError:
                    # A neighbour grew the map since our open: take its size.
                    shared.env.set_mapsize(0)
        if not shared.probed:
            # The pages on the way to each database's first and last entries: where appends
            # and the oldest-first trimming go, so damage there is found at start, not later.
            with shared.env.begin() as txn:
                for db in self._dbs.values():
                    txn.stat(db)
                    cursor = txn.cursor(db=db)
                    for found in (cursor.first(), cursor.last()):
                        if found:
                            cursor.value()
            shared.probed = True
        self._generation = shared.generation

    def _attach_or_recover(self, shared: _Shared) -> None:
        try:
            self._attach(shared)
        except _DAMAGE as exc:
            self._recover(shared, str(exc))
            self._attach(shared)

    def _open_env(self) -> Any:
        reason = _damage(self.path / "data.mdb")
        if reason is not None:
            _move_aside(self.path, self.name, reason, _identity(self.path))
        try:
            env = self._lmdb_open()
        except _DAMAGE as exc:
            _move_aside(self.path, self.name, str(exc), _identity(self.path))
            env = self._lmdb_open()
        # Slots of readers whose process died (SIGKILL) would keep old pages from reuse.
        env.reader_check()
        return env

    def _lmdb_open(self) -> Any:
        existing = self.path / "data.mdb"
        size = max(self._initial, existing.stat().st_size if existing.exists() else 0)
        # metasync off: a machine crash may undo the last commit but never breaks the
        # database; sync on: a commit is on disk before the caller goes on.
        return lmdb.open(
            str(self.path),
            map_size=size,
            max_dbs=len(self._db_specs) + 1,
            sync=self._sync,
            metasync=False,
            readahead=False,
            max_readers=256,
            mode=PRIVATE_FILE,
        )

    def _recover(self, shared: _Shared, reason: str) -> None:
        """Move the damaged environment aside and open a new one (under ``shared.lock``)."""
        shared.env.close()
        _move_aside(self.path, self.name, reason, shared.identity)
        self._reopen(shared)

    def _reopen(self, shared: _Shared) -> None:
        shared.env = self._open_env()
        shared.identity = _identity(self.path)
        shared.generation += 1
        shared.probed = False

    def _current(self, *, write: bool = False) -> Any:
        """The environment to use now (under the lock), reopened if it was replaced."""
        shared = self._shared
        assert shared is not None
        if shared.generation == self._generation:
            now = time.monotonic()
            # A stat costs more than an LMDB read transaction: readers look at most once a
            # second (what they miss meanwhile is the old, damaged copy); a write always
            # looks, so nothing new goes into the copy.
            if not write and now - shared.checked < _CHECK_EVERY:
                return shared.env
            shared.checked = now
            if _identity(self._data) == shared.identity:
                return shared.env
        if shared.generation == self._generation:
            # Another process moved a damaged environment aside and made a new one.
            shared.env.close()
            self._reopen(shared)
        self._attach_or_recover(shared)
        self._env = shared.env
        return shared.env

    def db(self, name: str) -> Any:
        """The handle of the named database."""
        self._open()
        return self._dbs[name]

    @property
    def map_size(self) -> int:
        """The current map size in bytes."""
        self._open()
        with self._lock:
            return int(self._current().info()["map_size"])

    def read(self, work: Callable[[Any], T]) -> T:
        """Run ``work(txn)`` in a read transaction."""
        return self._run(work, write=False)

    def write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(txn)`` in a write transaction, growing the map when it is full.

        ``work`` may be run again after a full map aborted it, so it must only act through
        ``txn``.
        """
        return self._run(work, write=True)

    def _run(self, work: Callable[[Any], T], *, write: bool) -> T:
        self._open()
        try:
            # Under the lock for reads too: growing the map remaps it, which must not happen
            # under a reader of this process (LMDB does not check; the reader would read
            # unmapped memory).
            with self._lock:
                recovered = False
                for _ in range(_MAX_ATTEMPTS):
                    env = self._current(write=write)
                    try:
                        with env.begin(write=write) as txn:
                            return work(txn)
                    except lmdb.MapFullError:
                        if not write:
                            raise
                        self._grow()
                    except lmdb.MapResizedError:
                        self._adopt()
                    except _DAMAGE as exc:
                        if recovered:
                            raise
                        # Once: the work goes to the new, empty environment (a new record is
                        # kept, a search finds what is left); failing again is not the file.
                        assert self._shared is not None
                        self._recover(self._shared, str(exc))
                        recovered = True
        finally:
            _notify()
        if write:
            raise lmdb.MapFullError(f"{self.path}: map cannot grow past {self._max} bytes")
        raise lmdb.Error(f"{self.path}: map kept being resized")

    def _grow(self) -> None:
        env = self._current()
        size = int(env.info()["map_size"])
        if size >= self._max:
            raise lmdb.MapFullError(f"{self.path}: map is at its maximum of {self._max} bytes")
        env.set_mapsize(min(size * 2, self._max))

    def _adopt(self) -> None:
        # Another process grew the map: size 0 tells LMDB to take the size in the file.
        with self._lock:
            self._current().set_mapsize(0)

    def sync(self) -> None:
        """Flush to disk (for environments opened without ``sync``)."""
        if self._env is not None:
            with self._lock:
                self._current().sync(True)

    def close(self) -> None:
        """Close the environment (once no other object of this process uses it); the next
        use opens it again."""
        with self._lock:
            if self._env is not None and self._shared is not None:
                _release(self.path, self._shared)
                self._env = None
                self._shared = None
                self._generation = -1
                self._dbs = {}

    def disk_bytes(self) -> int:
        """Bytes the environment's files take on disk (the map file is sparse)."""
        total = 0
        for name in ("data.mdb", "lock.mdb"):
            try:
                total += (self.path / name).stat().st_blocks * 512
            except OSError:
                continue
        return total

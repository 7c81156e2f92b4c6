"""LMDB environments for the core's indices: a map that grows, stale readers cleared, one writer.

LMDB itself admits one write transaction at a time across every process that opens the
environment (its lock file holds a robust mutex), which is the one-writer discipline the worker
processes need. Inside a process an environment is opened once and shared (LMDB allows no
more), and one lock orders its transactions, because growing the map remaps it and LMDB
requires that no transaction of the process is open then.

The map starts small and doubles whenever a write finds it full, up to ``max_map_size``; a
process whose neighbour grew the map adopts the new size when LMDB says so. Reader slots left
behind by killed processes are cleared at open, so a SIGKILLed worker never pins old pages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ..durable import PRIVATE_FILE, private_dir

__all__ = ["LmdbEnv"]

T = TypeVar("T")

_INITIAL_MAP = 16 << 20
_MAX_MAP = 1 << 40
# Doubling from 16 MiB reaches 1 TiB in 16 steps; more attempts mean something else is wrong.
_MAX_ATTEMPTS = 24


class _Shared:
    """One open environment of this process and how many :class:`LmdbEnv` objects use it."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.lock = threading.RLock()
        self.refs = 0
        self.pid = os.getpid()


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
            shared = _OPEN[key] = _Shared(opener())
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
    ) -> None:
        """``dbs`` maps each named database to whether it is an index (dupsort, fixed values)."""
        self.path = path
        self._db_specs = dbs
        self._sync = sync
        self._initial = initial_map_size
        self._max = max_map_size
        self._env: Any = None
        self._shared: _Shared | None = None
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
        with _OPENING:
            if self._env is not None:
                return self._env
            private_dir(self.path)
            shared = _acquire(self.path, self._open_env)
            with shared.lock:
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
            self._shared = shared
            # Before _env is set: whoever sees the environment open also sees its lock.
            self._lock = shared.lock
            self._env = shared.env
            return self._env

    def _open_env(self) -> Any:
        existing = self.path / "data.mdb"
        size = max(self._initial, existing.stat().st_size if existing.exists() else 0)
        # metasync off: a machine crash may undo the last commit but never breaks the
        # database; sync on: a commit is on disk before the caller goes on.
        env = lmdb.open(
            str(self.path),
            map_size=size,
            max_dbs=len(self._db_specs) + 1,
            sync=self._sync,
            metasync=False,
            readahead=False,
            max_readers=256,
            mode=PRIVATE_FILE,
        )
        # Slots of readers whose process died (SIGKILL) would keep old pages from reuse.
        env.reader_check()
        return env

    def db(self, name: str) -> Any:
        """The handle of the named database."""
        self._open()
        return self._dbs[name]

    @property
    def map_size(self) -> int:
        """The current map size in bytes."""
        return int(self._open().info()["map_size"])

    def read(self, work: Callable[[Any], T]) -> T:
        """Run ``work(txn)`` in a read transaction."""
        env = self._open()
        # Under the lock too: growing the map remaps it, which must not happen under a reader
        # of this process (LMDB does not check; the reader would read unmapped memory).
        with self._lock:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    with env.begin() as txn:
                        return work(txn)
                except lmdb.MapResizedError:
                    self._adopt()
        raise lmdb.Error(f"{self.path}: map kept being resized")

    def write(self, work: Callable[[Any], T]) -> T:
        """Run ``work(txn)`` in a write transaction, growing the map when it is full.

        ``work`` may be run again after a full map aborted it, so it must only act through
        ``txn``.
        """
        env = self._open()
        with self._lock:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    with env.begin(write=True) as txn:
                        return work(txn)
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.MapResizedError:
                    self._adopt()
        raise lmdb.MapFullError(f"{self.path}: map cannot grow past {self._max} bytes")

    def _grow(self) -> None:
        size = self.map_size
        if size >= self._max:
            raise lmdb.MapFullError(f"{self.path}: map is at its maximum of {self._max} bytes")
        self._env.set_mapsize(min(size * 2, self._max))

    def _adopt(self) -> None:
        # Another process grew the map: size 0 tells LMDB to take the size in the file.
        with self._lock:
            self._env.set_mapsize(0)

    def sync(self) -> None:
        """Flush to disk (for environments opened without ``sync``)."""
        if self._env is not None:
            self._env.sync(True)

    def close(self) -> None:
        """Close the environment (once no other object of this process uses it); the next
        use opens it again."""
        with self._lock:
            if self._env is not None and self._shared is not None:
                _release(self.path, self._shared)
                self._env = None
                self._shared = None
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

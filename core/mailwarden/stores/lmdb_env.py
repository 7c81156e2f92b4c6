"""LMDB environments for the core's indices: a map that grows, stale readers cleared, one writer.

LMDB itself admits one write transaction at a time across every process that opens the
environment (its lock file holds a robust mutex), which is the one-writer discipline the worker
processes need; inside a process a lock keeps threads from starting a write while the map is
being grown (LMDB requires no open transaction in the process that resizes).

The map starts small and doubles whenever a write finds it full, up to ``max_map_size``; a
process whose neighbour grew the map adopts the new size when LMDB says so. Reader slots left
behind by killed processes are cleared at open, so a SIGKILLed worker never pins old pages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

__all__ = ["LmdbEnv"]

T = TypeVar("T")

_INITIAL_MAP = 16 << 20
_MAX_MAP = 1 << 40
# Doubling from 16 MiB reaches 1 TiB in 16 steps; more attempts mean something else is wrong.
_MAX_ATTEMPTS = 24


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
        self._dbs: dict[str, Any] = {}
        self._lock = threading.RLock()

    def _open(self) -> Any:
        if self._env is not None:
            return self._env
        with self._lock:
            if self._env is not None:
                return self._env
            self.path.mkdir(parents=True, exist_ok=True)
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
            )
            # Slots of readers whose process died (SIGKILL) would keep old pages from reuse.
            env.reader_check()
            for name, index in self._db_specs.items():
                for _ in range(_MAX_ATTEMPTS):
                    try:
                        self._dbs[name] = env.open_db(
                            name.encode(), dupsort=index, dupfixed=index, create=True
                        )
                        break
                    except lmdb.MapResizedError:
                        # A neighbour grew the map since our open: take its size.
                        env.set_mapsize(0)
            self._env = env
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
        """Close the environment; the next use opens it again."""
        with self._lock:
            if self._env is not None:
                self._env.close()
                self._env = None
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

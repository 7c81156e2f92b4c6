"""The spool's file work for a batch of messages in one call to the C core (GIL released once)."""

from __future__ import annotations

from collections.abc import Sequence

from ._core import ffi, lib

__all__ = [
    "SPOOL_AT_DIR",
    "SPOOL_AT_RENAME",
    "SPOOL_COMMIT",
    "SPOOL_DATASYNC",
    "SPOOL_DIRSYNC",
    "SPOOL_DIR_ALWAYS",
    "SPOOL_DIR_IF_COMMIT",
    "SPOOL_DIR_NONE",
    "SPOOL_TRUNCATE",
    "SpoolQueue",
    "spool_batch",
]

SPOOL_COMMIT = int(lib.MW_SPOOL_COMMIT)
SPOOL_DATASYNC = int(lib.MW_SPOOL_DATASYNC)
SPOOL_TRUNCATE = int(lib.MW_SPOOL_TRUNCATE)
SPOOL_DIR_NONE = int(lib.MW_SPOOL_DIR_NONE)
SPOOL_DIR_IF_COMMIT = int(lib.MW_SPOOL_DIR_IF_COMMIT)
SPOOL_DIR_ALWAYS = int(lib.MW_SPOOL_DIR_ALWAYS)
#: Added to the errno of a commit whose fsync succeeded and whose rename failed.
SPOOL_AT_RENAME = int(lib.MW_SPOOL_AT_RENAME)
#: Added to the errno of the directory sync a :class:`SpoolQueue` job waited for.
SPOOL_AT_DIR = int(lib.MW_SPOOL_AT_DIR)
#: A :class:`SpoolQueue` job that only has the directory synced (after its batch's work).
SPOOL_DIRSYNC = int(lib.MW_SPOOL_DIRSYNC)

_batch = lib.mw_spool_batch
_NULL = ffi.NULL


def spool_batch(
    ops: Sequence[int],
    fds: Sequence[int],
    srcs: Sequence[bytes | None],
    dsts: Sequence[bytes | None],
    directory: bytes | None = None,
    dir_sync: int = SPOOL_DIR_NONE,
) -> tuple[list[int], int]:
    """Run the operations ``ops[i]`` on ``fds[i]`` (:data:`SPOOL_COMMIT`: fsync, then rename
    ``srcs[i]`` to ``dsts[i]``; :data:`SPOOL_DATASYNC`: fdatasync; :data:`SPOOL_TRUNCATE`:
    empty the file) in order, then sync ``directory`` as ``dir_sync`` says, all in one call
    without the GIL.

    Returns each operation's errno (0: done; a rename's plus :data:`SPOOL_AT_RENAME`) and the
    directory sync's (0: synced, -1: not run).
    """
    n = len(ops)
    # The path buffers must live until the call returns: kept in this list.
    keep = [ffi.new("char[]", p) if p is not None else _NULL for p in (*srcs, *dsts)]
    errs = ffi.new("int[]", n)
    synced = _batch(
        n,
        ops,
        fds,
        keep[:n],
        keep[n:],
        errs,
        directory if directory is not None else _NULL,
        dir_sync,
    )
    return list(errs), int(synced)


_DONE_CAP = 256


class SpoolQueue:
    """The spool's file work for ``directory`` run by up to ``threads`` C threads that never
    take the GIL (``mw_spool_q`` in mw_spool.h): :meth:`submit` queues a job, and when jobs
    finish :attr:`fd` (an eventfd) becomes readable and :meth:`done` hands out their errnos.
    Threads end after ``idle_ms`` without work and start again with the next job."""

    def __init__(self, directory: str, threads: int = 4, idle_ms: int = 10_000) -> None:
        q = lib.mw_spool_q_new(directory.encode(), threads, idle_ms)
        if q == _NULL:
            raise OSError(ffi.errno, "cannot make the spool's queue")
        self._q = q
        #: Readable while completions wait for :meth:`done`.
        self.fd = int(lib.mw_spool_q_fd(q))
        self._ids = ffi.new("unsigned long long[]", _DONE_CAP)
        self._errs = ffi.new("int[]", _DONE_CAP)

    def submit(
        self, id: int, op: int, fd: int, src: bytes | None = None, dst: bytes | None = None
    ) -> None:
        """Queue ``op`` (:data:`SPOOL_COMMIT`, :data:`SPOOL_DATASYNC`, :data:`SPOOL_DIRSYNC`)
        on ``fd`` as job ``id``; raises OSError when it cannot be queued."""
        err = lib.mw_spool_q_submit(
            self._q,
            id,
            op,
            fd,
            src if src is not None else _NULL,
            dst if dst is not None else _NULL,
        )
        if err:
            raise OSError(err, "cannot queue the spool's work")

    def empty_later(self, id: int, fd: int) -> int:
        """Empty ``fd`` with the next batch (its completion is job ``id``) and count a
        removal; the removal's number (0: out of memory, not queued)."""
        return int(lib.mw_spool_q_empty_later(self._q, id, fd))

    def count_removal(self) -> int:
        """Count a removal out of the directory; its number."""
        return int(lib.mw_spool_q_count_removal(self._q))

    def removals(self) -> int:
        """Removals counted so far."""
        return int(lib.mw_spool_q_removals(self._q))

    def covered(self) -> int:
        """Removals counted before a directory sync that has succeeded since."""
        return int(lib.mw_spool_q_covered(self._q))

    def done(self) -> list[tuple[int, int]]:
        """The finished jobs as (id, errno) pairs: a job's own errno as :func:`spool_batch`
        gives it, or :data:`SPOOL_AT_DIR` plus the errno of the directory sync it needed."""
        found: list[tuple[int, int]] = []
        ids, errs = self._ids, self._errs
        while True:
            n = lib.mw_spool_q_done(self._q, ids, errs, _DONE_CAP)
            found += zip(ids[0:n], errs[0:n], strict=True)
            if n < _DONE_CAP:
                return found

    def threads(self) -> int:
        """Its threads running now."""
        return int(lib.mw_spool_q_threads(self._q))

    def sync_now(self) -> int:
        """Run the waiting work and sync the directory in this thread; the sync's errno."""
        return int(lib.mw_spool_q_sync_now(self._q))

    def close(self) -> None:
        """Let the queue go (its threads finish the queued work first); nothing may be called
        on it after."""
        q, self._q = self._q, _NULL
        if q != _NULL:
            lib.mw_spool_q_close(q)

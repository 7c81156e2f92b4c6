"""The spool's file work for a batch of messages in one call to the C core (GIL released once)."""

from __future__ import annotations

from collections.abc import Sequence

from ._core import ffi, lib

__all__ = [
    "SPOOL_AT_RENAME",
    "SPOOL_COMMIT",
    "SPOOL_DATASYNC",
    "SPOOL_DIR_ALWAYS",
    "SPOOL_DIR_IF_COMMIT",
    "SPOOL_DIR_NONE",
    "SPOOL_TRUNCATE",
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

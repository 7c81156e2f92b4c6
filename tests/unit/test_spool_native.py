"""The C core's batch of spool file work: each operation's outcome, then the directory sync."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import mailwarden_native as native


def test_a_batch_commits_syncs_and_reports_each_failure_on_its_own(tmp_path: Path) -> None:
    tmp, queue = tmp_path / "tmp", tmp_path / "queue"
    tmp.mkdir()
    queue.mkdir()
    fds = []
    for name in ("a", "b"):
        fd = os.open(tmp / name, os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, name.encode())
        fds.append(fd)
    closed = os.open(tmp / "c", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(closed)
    try:
        errs, synced = native.spool_batch(
            [native.SPOOL_COMMIT, native.SPOOL_COMMIT, native.SPOOL_DATASYNC, native.SPOOL_COMMIT],
            [fds[0], fds[1], fds[0], closed],
            [bytes(tmp / "a"), bytes(tmp / "gone"), None, bytes(tmp / "c")],
            [bytes(queue / "a"), bytes(queue / "b"), None, bytes(queue / "c")],
            bytes(queue),
            native.SPOOL_DIR_IF_COMMIT,
        )
        # The missing source fails at its rename, the closed descriptor at its fsync (and is
        # not renamed); the others are done and the directory synced after them.
        assert errs == [0, native.SPOOL_AT_RENAME + errno.ENOENT, 0, errno.EBADF]
        assert synced == 0
        assert sorted(p.name for p in queue.iterdir()) == ["a"]
        assert (queue / "a").read_bytes() == b"a" and (tmp / "c").exists()
        # Nothing committed: no directory sync unless asked for in any case; a directory
        # that is gone reports its errno.
        args = ([native.SPOOL_DATASYNC], [fds[1]], [None], [None])
        assert native.spool_batch(*args, bytes(queue), native.SPOOL_DIR_IF_COMMIT) == ([0], -1)
        assert native.spool_batch(*args, bytes(queue), native.SPOOL_DIR_ALWAYS) == ([0], 0)
        assert native.spool_batch(*args, bytes(tmp_path / "none"), native.SPOOL_DIR_ALWAYS) == (
            [0],
            errno.ENOENT,
        )
        # Emptied in place (a delivered message's file kept for the next one).
        assert native.spool_batch([native.SPOOL_TRUNCATE], [fds[0]], [None], [None]) == ([0], -1)
        assert os.fstat(fds[0]).st_size == 0 and (queue / "a").read_bytes() == b""
    finally:
        for fd in fds:
            os.close(fd)

"""The C core's spool file work: each operation's outcome, then the directory sync; in one
call, or by a queue's own threads."""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _wait_done(queue: native.SpoolQueue, count: int) -> dict[int, int]:
    """The completions of ``count`` jobs, read when the eventfd says they are there."""
    found: dict[int, int] = {}
    deadline = time.monotonic() + 10
    while len(found) < count and time.monotonic() < deadline:
        readable, _, _ = select.select([queue.fd], [], [], 1.0)
        if readable:
            found.update(queue.done())
    return found


def test_a_queue_runs_jobs_in_its_threads_and_signals_each_outcome(tmp_path: Path) -> None:
    tmp, folder = tmp_path / "tmp", tmp_path / "queue"
    tmp.mkdir()
    folder.mkdir()
    queue = native.SpoolQueue(str(folder), 2, 200)
    fd = os.open(tmp / "a", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"message")
    try:
        assert queue.done() == [] and select.select([queue.fd], [], [], 0)[0] == []
        queue.submit(1, native.SPOOL_COMMIT, fd, bytes(tmp / "a"), bytes(folder / "a"))
        queue.submit(2, native.SPOOL_COMMIT, fd, bytes(tmp / "gone"), bytes(folder / "b"))
        queue.submit(3, native.SPOOL_DATASYNC, fd)
        assert _wait_done(queue, 3) == {1: 0, 2: native.SPOOL_AT_RENAME + errno.ENOENT, 3: 0}
        assert sorted(p.name for p in folder.iterdir()) == ["a"]
        # A removal is covered once a directory sync that started after it succeeded; the
        # file to empty goes with that batch.
        removal = queue.empty_later(4, fd)
        assert removal == queue.removals() and queue.covered() < removal
        queue.submit(5, native.SPOOL_DIRSYNC, -1)
        assert _wait_done(queue, 2) == {4: 0, 5: 0}
        assert queue.covered() == removal and os.fstat(fd).st_size == 0
        # Idle threads end and the next job starts one again.
        deadline = time.monotonic() + 5
        while queue.threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.threads() == 0
        queue.submit(6, native.SPOOL_DATASYNC, fd)
        assert _wait_done(queue, 1) == {6: 0}
    finally:
        queue.close()
        os.close(fd)
    # Let go of (a spool collected while its loop drained it): calls do nothing, no crash.
    assert queue.done() == [] and queue.covered() == 0 and queue.threads() == 0
    with pytest.raises(OSError):
        queue.submit(7, native.SPOOL_DIRSYNC, -1)
    queue.close()


def test_a_failed_directory_sync_fails_the_jobs_that_waited_for_it(tmp_path: Path) -> None:
    # The commit's rename went through but its folder's sync did not: the job reports the
    # sync's errno (the spool then undoes the message), a data sync does not wait for it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    folder = tmp_path / "queue"
    folder.mkdir()
    queue = native.SpoolQueue(str(tmp_path / "not-a-folder"), 1, 200)
    fd = os.open(tmp / "a", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        removal = queue.count_removal()
        queue.submit(1, native.SPOOL_COMMIT, fd, bytes(tmp / "a"), bytes(folder / "a"))
        queue.submit(2, native.SPOOL_DATASYNC, fd)
        queue.submit(3, native.SPOOL_DIRSYNC, -1)
        failed = native.SPOOL_AT_DIR + errno.ENOENT
        assert _wait_done(queue, 3) == {1: failed, 2: 0, 3: failed}
        assert queue.covered() < removal
        assert queue.sync_now() == errno.ENOENT
    finally:
        queue.close()
        os.close(fd)


_OPS = st.lists(
    st.sampled_from(["commit", "commit-missing", "datasync", "dirsync", "empty", "removal"]),
    min_size=1,
    max_size=24,
)


@settings(max_examples=25, deadline=None)
@given(ops=_OPS, threads=st.integers(1, 4))
def test_every_queued_job_completes_once_with_its_own_outcome(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str], threads: int
) -> None:
    # However the threads cut the jobs into batches: each job is answered once, a commit's
    # file is in the folder, a failed one reports its rename, and once a directory sync has
    # run after the last removal every removal is covered.
    root = tmp_path_factory.mktemp("q")
    tmp, folder = root / "tmp", root / "queue"
    tmp.mkdir()
    folder.mkdir()
    queue = native.SpoolQueue(str(folder), threads, 1000)
    fds: list[int] = []
    expected: dict[int, int] = {}
    try:
        for id, op in enumerate(ops, 1):
            fd = os.open(tmp / str(id), os.O_RDWR | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            fds.append(fd)
            if op == "commit":
                queue.submit(
                    id, native.SPOOL_COMMIT, fd, bytes(tmp / str(id)), bytes(folder / str(id))
                )
            elif op == "commit-missing":
                queue.submit(id, native.SPOOL_COMMIT, fd, bytes(tmp / "none"), bytes(folder / "x"))
            elif op == "datasync":
                queue.submit(id, native.SPOOL_DATASYNC, fd)
            elif op == "dirsync":
                queue.submit(id, native.SPOOL_DIRSYNC, -1)
            elif op == "empty":
                assert queue.empty_later(id, fd) > 0
            else:
                queue.count_removal()
                continue
            expected[id] = native.SPOOL_AT_RENAME + errno.ENOENT if op == "commit-missing" else 0
        last = len(ops) + 1
        queue.submit(last, native.SPOOL_DIRSYNC, -1)
        expected[last] = 0
        assert _wait_done(queue, len(expected)) == expected
        assert queue.done() == []
        assert queue.covered() == queue.removals() == ops.count("empty") + ops.count("removal")
        committed = {str(i) for i, op in enumerate(ops, 1) if op == "commit"}
        assert {p.name for p in folder.iterdir()} == committed
        for i, op in enumerate(ops):
            if op == "empty":
                assert os.fstat(fds[i]).st_size == 0
    finally:
        queue.close()
        for fd in fds:
            os.close(fd)

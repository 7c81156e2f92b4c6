"""The durable spool: what survives, who may work on a message, what a restart cleans."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mailwarden.spool
from mailwarden.spool import Spool, SpoolState
from mailwarden_sdk import Envelope
from tests.conftest import make_message


def test_a_spooled_message_is_complete_private_and_locked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    raw = make_message(subject="spooled")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    entry = spool.write(raw, envelope)
    assert spool.ids() == [entry.id]
    assert entry.path.stat().st_mode & 0o777 == 0o600
    assert entry.raw() == raw
    # Another claimant (another worker, or this process's queue scan) cannot take it.
    assert spool.claim(entry.id) is None
    entry.release()
    again = spool.claim(entry.id)
    assert again is not None
    assert again.envelope.rcpt_to == ["bob@example.net"] and again.raw() == raw
    spool.remove(again)
    assert spool.ids() == []


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(b"Subject: x\r\n\r\nbody\r\n", Envelope(rcpt_to=["b@example.net"]))
    entry.release()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mailwarden.spool import Spool;"
            f"e = Spool(Path({str(spool.root)!r})).claim({entry.id!r}); print(e is not None,"
            " flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert spool.claim(entry.id) is None
    finally:
        holder.kill()
        holder.wait()
    assert spool.claim(entry.id) is not None


def test_recover_removes_temp_files_and_orphaned_state_but_keeps_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.write(b"Subject: kept\r\n\r\n", Envelope(rcpt_to=["b@example.net"]))
    spool.save_state(kept, SpoolState(decided=True, attempts=2), durable=True)
    kept.release()
    (spool.tmp / "half-written.msg").write_bytes(b"partial")
    (spool.queue / "gone.state").write_bytes(b"{}")
    assert spool.recover() == 1
    assert list(spool.tmp.iterdir()) == []
    assert not (spool.queue / "gone.state").exists()
    assert spool.ids() == [kept.id]
    assert spool.load_state(kept.id).attempts == 2


def test_a_state_that_may_be_lost_is_written_and_replaced_like_a_durable_one(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(b"Subject: s\r\n\r\n", Envelope(rcpt_to=["b@example.net"]))
    spool.save_state(entry, SpoolState(decided=True, add_headers=[("X-A", "1")]), durable=False)
    assert spool.load_state(entry.id).add_headers == [("X-A", "1")]
    # A second one replaces the first whichever way either was written.
    spool.save_state(entry, SpoolState(decided=True, attempts=1), durable=True)
    spool.save_state(entry, SpoolState(decided=True, attempts=3), durable=False)
    assert spool.load_state(entry.id).attempts == 3
    assert sorted(p.name for p in spool.queue.iterdir()) == [f"{entry.id}.msg", f"{entry.id}.state"]
    spool.remove(entry)
    assert list(spool.queue.iterdir()) == []


def test_the_first_state_lives_in_the_message_file_and_survives_the_process(
    tmp_path: Path,
) -> None:
    # The decision after the scan goes into the message's own file (no second file per
    # message), and what a crashed process left there is found by the next one; the bytes
    # relayed stay exactly the message, whether its state was written or cut short.
    spool = Spool(tmp_path / "spool")
    raw = make_message(subject="state inside")
    entry = spool.write(raw, Envelope(rcpt_to=["b@example.net"]))
    decided = SpoolState(decided=True, add_headers=[("X-Verdict", "clean")])
    spool.save_state(entry, decided, durable=False)
    assert sorted(p.name for p in spool.queue.iterdir()) == [f"{entry.id}.msg"]
    entry.release()  # the process dies here: its lock goes, its page cache stays
    after = Spool(tmp_path / "spool")
    assert after.load_state(entry.id).add_headers == [("X-Verdict", "clean")]
    again = after.claim(entry.id)
    assert again is not None and again.raw() == raw and again.raw_if_small() == raw
    # A later state is a file beside it, which wins over the one in the message file.
    after.save_state(again, SpoolState(decided=True, attempts=2), durable=False)
    assert after.load_state(again.id).attempts == 2
    after.remove(again)
    assert list(after.queue.iterdir()) == []
    # Cut short by a crash in the middle of its write: unreadable, so scanned again.
    cut = spool.write(raw, Envelope(rcpt_to=["b@example.net"]))
    spool.save_state(cut, decided, durable=False)
    size = cut.path.stat().st_size
    os.truncate(cut.path, size - 5)
    cut.release()
    assert Spool(tmp_path / "spool").load_state(cut.id) == SpoolState()
    claimed = spool.claim(cut.id)
    assert claimed is not None and claimed.raw() == raw
    spool.remove(claimed)


def test_a_message_file_of_the_older_format_reads_to_its_end(tmp_path: Path) -> None:
    # Spooled by a version that wrote no length: the message runs to the end of the file.
    spool = Spool(tmp_path / "spool")
    entry = spool.write(b"Subject: o\r\n\r\nold\r\n", Envelope(rcpt_to=["b@example.net"]))
    entry.release()
    data = entry.path.read_bytes()
    line, rest = data.split(b"\n", 1)
    line = line.replace(b',"size":' + str(len(rest)).encode(), b"")
    assert b"size" not in line
    entry.path.write_bytes(line + b"\n" + rest)
    assert spool.load_state(entry.id) == SpoolState()
    old = spool.claim(entry.id)
    assert old is not None and old.raw() == b"Subject: o\r\n\r\nold\r\n"
    spool.save_state(old, SpoolState(decided=True), durable=False)
    assert spool.load_state(old.id).decided and old.raw() == rest
    spool.remove(old)


def test_an_unreadable_state_means_scan_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(b"Subject: s\r\n\r\n", Envelope(rcpt_to=["b@example.net"]))
    (spool.queue / f"{entry.id}.state").write_bytes(b"")
    assert spool.load_state(entry.id).decided is False


def test_in_doubt_flag_is_persistent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(b"Subject: d\r\n\r\nbody\r\n", Envelope(rcpt_to=["b@example.net"]))
    spool.mark_in_doubt(entry, True)
    entry.release()
    again = spool.claim(entry.id)
    assert again is not None and spool.in_doubt(again)
    assert again.raw() == b"Subject: d\r\n\r\nbody\r\n"
    spool.mark_in_doubt(again, False)
    assert not spool.in_doubt(again)
    again.release()


def test_spooling_from_the_event_loop_is_durable_and_locked_on_return(tmp_path: Path) -> None:
    # Twenty sessions spool at once: their syncs are batched, each still returns only with
    # its message in queue/, locked, its state saved where one was given.
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def session(n: int) -> None:
        raw = make_message(subject=f"at once {n}")
        state = SpoolState(decided=True) if n % 2 else None
        entry = await spool.write_async(raw, envelope, state)
        assert entry.path.parent == spool.queue and entry.raw() == raw
        assert spool.claim(entry.id) is None
        assert spool.load_state(entry.id).decided == bool(n % 2)
        await spool.mark_in_doubt_async(entry, True)
        assert spool.in_doubt(entry)
        await spool.remove_delivered(entry)
        # Gone, state and all, and no longer held open.
        assert not entry.path.exists() and entry.fd == -1
        assert not (spool.queue / f"{entry.id}.state").exists()

    async def main() -> None:
        await asyncio.gather(*(session(n) for n in range(20)))

    asyncio.run(main())
    assert spool.ids() == [] and not list(spool.tmp.iterdir())


def test_a_message_spooled_for_a_session_that_is_gone_is_left_to_the_queue(
    tmp_path: Path,
) -> None:
    # The client hung up while its message was being synced: no 250 went out, but the copy is
    # durable, so it must not stay locked by a caller that no longer exists.
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def main() -> None:
        task = asyncio.ensure_future(spool.write_async(make_message(), envelope))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(200):  # the syncer resolves the batch through the loop
            if spool.ids():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    asyncio.run(main())
    (id,) = spool.ids()
    claimed = spool.claim(id)
    assert claimed is not None, "still locked by the cancelled session"
    spool.remove(claimed)


def test_syncer_threads_end_when_idle_and_come_back_with_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gateway stopped (or one of the many a test run makes) keeps no threads behind.
    monkeypatch.setattr(mailwarden.spool, "_SYNCER_IDLE_EXIT", 0.2)
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    def syncers() -> int:
        # This spool's (other tests' spools have threads of their own, ending later).
        return spool._syncer.threads()

    async def spool_some(n: int) -> None:
        entries = await asyncio.gather(
            *(spool.write_async(make_message(), envelope) for _ in range(n))
        )
        for entry in entries:
            await spool.remove_delivered(entry)

    for _ in range(2):
        asyncio.run(spool_some(5))
        deadline = time.monotonic() + 5
        while syncers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert syncers() == 0
    assert spool.ids() == []


def test_a_delivered_message_s_removal_reaches_the_disk_without_more_mail(
    tmp_path: Path,
) -> None:
    # The removal after the next hop's 250 is not waited for: the directory sync of the next
    # batch covers it, and with no next batch a sync of its own follows within moments.
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def main() -> None:
        entry = await spool.write_async(make_message(), envelope)
        await spool.mark_in_doubt_async(entry, True)
        await spool.remove_delivered(entry)
        assert not entry.path.exists() and entry.fd == -1
        # The removal's number: a directory sync that started after it covers it.
        removal = spool._syncer._native().removals()
        deadline = time.monotonic() + 5
        while spool._syncer.covered() < removal and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert spool._syncer.covered() >= removal

    asyncio.run(main())


def test_a_spool_folder_made_again_under_a_running_gateway_is_the_one_synced(
    tmp_path: Path,
) -> None:
    # The queue folder's descriptor is kept for the synchronous syncs; a folder removed and
    # made again must be synced itself, not the removed one through a stale descriptor. The
    # event loop's batches sync it by its path.
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def spool_one() -> None:
        entry = await spool.write_async(make_message(), envelope)
        assert entry.path.exists() and entry.raw() == make_message()
        entry.release()

    spool.write(make_message(), envelope).release()
    shutil.rmtree(spool.root)
    spool.write(make_message(), envelope).release()
    kept = spool._sync_queue._fd
    assert os.fstat(kept).st_ino == spool.queue.stat().st_ino
    shutil.rmtree(spool.root)
    asyncio.run(spool_one())
    assert len(spool.ids()) == 1


def test_a_delivered_message_s_file_is_reused_once_its_removal_is_synced(
    tmp_path: Path,
) -> None:
    # The file of a delivered message takes the next message (no inode to allocate) only
    # after the queue directory's sync that recorded the removal, and then holds that message
    # alone: not the longer one before it, its state or its in-doubt flag.
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    long, short = make_message(body="long " * 2000), make_message(subject="short")

    async def main() -> None:
        first = await spool.write_async(long, envelope)
        spool.save_state(first, SpoolState(decided=True, add_headers=[("X-A", "1")]), durable=False)
        await spool.mark_in_doubt_async(first, True)
        reused = os.fstat(first.fd).st_ino
        await spool.remove_delivered(first)
        assert not first.path.exists() and first.fd == -1
        # Spooled before any sync covered the removal: a new file.
        second = await spool.write_async(short, envelope)
        assert os.fstat(second.fd).st_ino != reused
        third = await spool.write_async(short, envelope)
        assert os.fstat(third.fd).st_ino == reused
        assert spool.claim(third.id) is None  # locked
        assert spool.load_state(third.id) == SpoolState()
        with open(third.path, "rb") as handle:
            line = handle.readline()
            assert line[:1] == b"Q" and handle.read() == short
        assert all(p.stat().st_size == 0 for p in spool.free.iterdir())
        for entry in (second, third):
            await spool.remove_delivered(entry)

    asyncio.run(main())
    assert spool.ids() == []
    # A restart clears the kept files with the temp files.
    Spool(spool.root).recover()
    assert list(spool.free.iterdir()) == [] and list(spool.tmp.iterdir()) == []


def test_a_message_written_into_a_kept_file_whose_folder_was_removed_is_spooled(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def main() -> None:
        first = await spool.write_async(make_message(), envelope)
        await spool.remove_delivered(first)
        await spool.write_async(make_message(), envelope)  # its sync covers the removal
        shutil.rmtree(spool.free)
        entry = await spool.write_async(make_message(subject="after"), envelope)
        assert entry.path.exists() and entry.raw() == make_message(subject="after")
        assert spool.claim(entry.id) is None

    asyncio.run(main())
    assert len(spool.ids()) == 2


def test_without_its_c_queue_the_spool_still_syncs_in_python_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The C queue needs an eventfd: a process out of descriptors cannot make one. Mail is
    # still spooled durably and its removal recorded, by the Python syncer threads.
    def no_queue(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(mailwarden.spool.native, "SpoolQueue", no_queue)
    spool = Spool(tmp_path / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

    async def main() -> None:
        entry = await spool.write_async(make_message(), envelope)
        assert spool.ids() == [entry.id] and entry.raw() == make_message()
        await spool.mark_in_doubt_async(entry, True)
        assert spool.in_doubt(entry)
        await spool.remove_delivered(entry)
        assert spool.ids() == [] and entry.fd == -1
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert spool._threads._threads > 0

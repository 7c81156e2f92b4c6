"""The durable spool: what survives, who may work on a message, what a restart cleans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

"""The message event log's writer thread (issue 24): the event loop never waits on the event
log, a full queue makes ingress wait rather than drop events, a stop writes every queued event,
and the size cap holds after a batch of hundreds.

"The disk is slow" is made real by another process holding LMDB's write lock on the event log
(what the retention enforcement, a second worker or a stalled fsync does to a writer): the
gateway recorded on the event loop and so stopped answering every connection until the lock
was released.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailwarden.events import MessageEventLog
from mailwarden.pipeline import Gateway
from mailwarden.stores.statistics import FLUSH_SECONDS, Statistics
from mailwarden_sdk import Envelope
from tests.conftest import free_port, make_message
from tests.serving import start_serve, stop_serve
from tests.unit.test_events import event

# Holds a write transaction on the environment until its stdin closes (exit 0), or gives up
# after HOLD_SECONDS (exit 3).
HOLDER = """
import select, sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=32)
txn = env.begin(write=True)
print("held", flush=True)
released, _, _ = select.select([sys.stdin], [], [], float(sys.argv[2]))
txn.abort()
sys.exit(0 if released else 3)
"""
HOLD_SECONDS = 60.0


@contextmanager
def write_lock_held(directory: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the event log's LMDB write lock while the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), str(HOLD_SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)


def _home(tmp_path: Path, config: str = "") -> Path:
    (tmp_path / "mailwarden.toml").write_text(
        f'[gateway]\nhome = "{tmp_path}"\n[smtp]\nenabled = false\n{config}'
    )
    return tmp_path / "mailwarden.toml"


def test_messages_are_answered_while_another_process_holds_the_event_log(
    tmp_path: Path,
) -> None:
    gateway = Gateway.from_file(str(_home(tmp_path)))
    gateway.events.usage()  # the environment exists for the holder to open

    async def run(holder: subprocess.Popen[str]) -> None:
        async with gateway:
            for n in range(3):
                envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
                raw = make_message(subject=f"held {n}")
                outcome = await asyncio.wait_for(gateway.process(raw, envelope), 60)
                assert outcome.reply_code == 250
            # Answered, all three: now the lock goes (the stop then waits for the writer).
            assert holder.stdin is not None
            holder.stdin.close()

    with write_lock_held(tmp_path / "events") as holder:
        asyncio.run(run(holder))
    # The old gateway's loop waited in the first message until the holder gave up (exit 3).
    assert holder.returncode == 0
    # Written once the lock was free: the stop waited for them.
    found = sorted(e.subject or "" for e in MessageEventLog(tmp_path / "events").search())
    assert found == ["held 0", "held 1", "held 2"]


def test_a_full_queue_makes_the_writer_wait_and_loses_nothing(tmp_path: Path) -> None:
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None, queue_events=8)
    log.usage()
    now = time.time()
    done = threading.Event()

    def ingress() -> None:
        for n in range(40):
            log.write_later(event(now + n, f"m{n}"))
        done.set()

    with write_lock_held(tmp_path):
        sender = threading.Thread(target=ingress, daemon=True)
        sender.start()
        # Waits once 8 are queued and the writer holds a batch it cannot commit.
        assert not done.wait(1.0)
        assert log.pending() <= 8 + 8
    assert done.wait(30)
    sender.join(30)
    assert sorted(e.subject or "" for e in log.search(None)) == sorted(f"m{n}" for n in range(40))
    log.close()


def test_close_writes_the_events_queued_in_a_long_batch_window(tmp_path: Path) -> None:
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None, batch_seconds=600)
    now = time.time()
    for n in range(5):
        log.write_later(event(now + n, f"m{n}"))
    log.close()
    # Another process reads them: on disk, not only in this process's view.
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mailwarden.events import "
            "MessageEventLog; print(len(MessageEventLog(Path(sys.argv[1])).search()))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert listed.stdout.strip() == "5"


def test_the_size_cap_holds_after_a_batch_of_hundreds(tmp_path: Path) -> None:
    scratch = MessageEventLog(tmp_path / "one", retention_days=None, max_bytes=None)
    scratch.append(event(time.time(), "m100"))
    one = scratch.usage().bytes  # an event with its index entries
    log = MessageEventLog(
        tmp_path / "log", retention_days=None, max_bytes=20 * one, batch_seconds=600
    )
    now = time.time()
    for n in range(300):
        log.write_later(event(now + n, f"m{n}"))
    assert log.flush(60)
    usage = log.usage()
    assert 0 < usage.bytes <= 20 * one, usage
    newest = log.search(None)[0]
    assert newest.subject == "m299"
    assert log.verify() == []
    log.close()


def test_the_statistics_flush_leaves_the_loop_running_while_their_store_is_locked(
    tmp_path: Path,
) -> None:
    stats = Statistics(tmp_path / "stats")
    stats.counters("d", "20231114")  # the environment exists for the holder to open

    async def main(holder: subprocess.Popen[str]) -> None:
        stats.count(event(time.time(), "counted"))
        # The timer fires within this sleep; its write waits for the lock (on main, on the
        # loop: this sleep ended only when the holder gave up).
        await asyncio.sleep(FLUSH_SECONDS + 0.5)
        assert holder.stdin is not None
        holder.stdin.close()

    with write_lock_held(tmp_path / "stats") as holder:
        asyncio.run(main(holder))
    assert holder.returncode == 0
    day = time.strftime("%Y%m%d", time.gmtime())
    assert Statistics(tmp_path / "stats").counters("d", day)["messages"] == {"": 1}


def test_serve_stopped_by_sigterm_writes_the_events_it_had_queued(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n")
    MessageEventLog(home / "events").usage()
    out = tmp_path / "serve.log"
    process = start_serve(home, out, [port])
    try:
        with write_lock_held(home / "events") as holder:
            # The old gateway answered none of these while the lock was held.
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for n in range(5):
                    message = make_message(subject=f"queued {n}")
                    assert client.sendmail("alice@example.org", ["bob@example.net"], message) == {}
            process.terminate()
            time.sleep(0.5)  # the stop waits for the writer, which waits for the lock
            assert process.poll() is None
        assert holder.returncode == 0  # released by the test, not given up
        process.wait(timeout=60)
        assert process.returncode == 0, (process.returncode, out.read_text())
    finally:
        if process.poll() is None:
            stop_serve(process, out)
    listed = subprocess.run(
        [sys.executable, "-m", "mailwarden", "events", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        timeout=60,
        check=True,
    )
    subjects = sorted(json.loads(line)["subject"] for line in listed.stdout.splitlines())
    assert subjects == [f"queued {n}" for n in range(5)]


def test_with_the_log_off_events_still_go_out_and_else_no_writer_is_woken(
    tmp_path: Path,
) -> None:
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    exported = tmp_path / "out"
    exported.mkdir()
    quiet = tmp_path / "quiet"
    quiet.mkdir()

    async def run(home: Path, subject: str) -> bool:
        gateway = Gateway.from_file(str(home))
        async with gateway:
            outcome = await gateway.process(make_message(subject=subject), envelope)
            assert outcome.reply_code == 250
            return any(t.name == "event-writer" for t in threading.enumerate())

    # Off, but sent out as JSON lines: the writer thread still sends each event.
    config = '[events]\nenabled = false\njson = "events.jsonl"\n'
    assert asyncio.run(run(_home(exported, config), "exported"))
    lines = (exported / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["subject"] for line in lines] == ["exported"]
    # Off and going nowhere: nothing is queued, no writer thread is started for it.
    assert not asyncio.run(run(_home(quiet, "[events]\nenabled = false\n"), "quiet"))
    assert not (quiet / "events.jsonl").exists()

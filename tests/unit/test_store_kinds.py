"""Each kind of core store at a small cap or a shifted clock: backup, application log, auth
log, traces, statistics, temp files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailwarden.stores import enforce
from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.authlog import AuthLog
from mailwarden.stores.backup import BackupStore
from mailwarden.stores.statistics import FLUSH_SECONDS, Statistics
from mailwarden.stores.temp import clean_temp
from mailwarden.stores.traces import TraceStreams
from mailwarden_sdk import Finding, MessageEvent
from mailwarden_sdk.types import Category
from tests.unit.test_events import event

DAY = 86400.0
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_backup_put_list_get_and_oldest_removed_over_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    backup = BackupStore(tmp_path / "backup", max_bytes=4500, clock=clock)
    entries = []
    for n in range(5):
        clock.now += 1
        entries.append(
            backup.put(bytes([65 + n]) * 1000, reason="before disinfection", mail_from="a@b.c")
        )
    kept = backup.list()
    assert [e.id for e in kept] == [e.id for e in entries[:1:-1]]  # the newest three, newest first
    assert backup.usage().bytes <= 4500
    assert backup.get(entries[-1].id) == b"E" * 1000
    with pytest.raises(KeyError):
        backup.get(entries[0].id)
    # The bodies of removed copies are gone from disk, those kept are there.
    assert sorted(backup.blobs.digests()) == sorted(e.sha256 for e in kept)
    assert backup.index.verify() == []


def test_backup_shares_identical_bodies_and_ages_out(tmp_path: Path) -> None:
    clock = Clock()
    backup = BackupStore(tmp_path / "b", max_bytes=None, retention_days=1, clock=clock)
    first = backup.put(b"same body", reason="r")
    clock.now += DAY / 2
    second = backup.put(b"same body", reason="r")
    assert first.sha256 == second.sha256 and len(list(backup.blobs.digests())) == 1
    clock.now += DAY / 2 + 1  # the first is past a day, the second not
    assert enforce(backup) == 1
    assert backup.get(second.id) == b"same body"  # still named by the second entry
    clock.now += DAY
    assert enforce(backup) == 1
    assert list(backup.blobs.digests()) == [] and backup.list() == []


def test_backup_body_of_an_interrupted_put_is_collected(tmp_path: Path) -> None:
    backup = BackupStore(tmp_path / "b")
    kept = backup.put(b"indexed", reason="r")
    backup.blobs.put(b"written but never indexed (killed before the commit)")
    assert backup.remove_unreferenced() == 1
    assert list(backup.blobs.digests()) == [kept.sha256]
    path = backup.blobs.path_of(kept.sha256)
    assert path.stat().st_mode & 0o777 == 0o600


def test_application_log_search_cap_and_age(tmp_path: Path) -> None:
    clock = Clock()
    log = ApplicationLog(tmp_path / "app", max_bytes=2000, clock=clock)
    log.write("login", "web login", actor="admin", client_address="192.0.2.7")
    clock.now += 1
    log.write("admin", "rule changed", actor="admin", detail="rules[0].actions.spam=reject")
    clock.now += 1
    log.write("update", "signatures updated", detail="1234 signatures")
    assert [e.action for e in log.search(actor="admin")] == ["rule changed", "web login"]
    assert [e.action for e in log.search(kind="update")] == ["signatures updated"]
    for n in range(30):
        clock.now += 1
        log.write("error", f"error {n}", detail="x" * 50)
    assert log.usage().bytes <= 2000
    assert log.search(kind="login") == []  # the oldest went first
    assert log.search(limit=1)[0].action == "error 29"
    clock.now += 1100 * DAY + 1
    assert enforce(log) > 0 and log.usage().count == 0


def test_auth_log_keeps_five_weeks(tmp_path: Path) -> None:
    clock = Clock()
    log = AuthLog(tmp_path / "auth", clock=clock)
    log.login("admin", "192.0.2.1", success=False)
    clock.now += 7 * DAY
    log.login("admin", "192.0.2.1", success=True)
    clock.now += 28 * DAY + 1  # 35 days after the first, 28 after the second
    assert enforce(log) == 1
    assert [e.success for e in log.search(user="ADMIN")] == [True]
    assert len(log.search(client_address="192.0.2.1")) == 1


def test_traces_rotate_and_keep_the_cap_per_stream(tmp_path: Path) -> None:
    traces = TraceStreams(tmp_path / "traces", max_bytes_per_stream=5000)
    for n in range(200):
        traces.write("smtp", f"{n:05d} " + "t" * 93)  # 100 bytes a line
        traces.write("pipeline", f"{n:05d}")
    segments = traces.segments("smtp")
    assert len(segments) > 1
    assert all(p.stat().st_size <= 1000 for p in segments)
    assert sum(p.stat().st_size for p in segments) <= 5000 + 1000
    assert traces.evictions > 0
    assert segments[-1].read_text().splitlines()[-1].startswith("00199 ")
    assert traces.segments("pipeline")[0].read_text().startswith("00000")  # under its cap
    with pytest.raises(ValueError):
        traces.write("../escape", "x")


def test_statistics_count_by_hour_and_day_with_tops(tmp_path: Path) -> None:
    stats = Statistics(tmp_path / "stats")
    stats.count(event(NOW, "a", sender="x@example.org"))
    stats.count(event(NOW + 10, "b", sender="x@example.org", infected=True))
    later = event(NOW + 3000, "c", sender="y@example.org")
    later.verdict.findings.append(
        Finding(code="EICAR", detector="antivirus", category=Category.ANTIVIRUS, status="infected")
    )
    stats.count(later)
    hour = stats.counters("h", "2023111422")
    assert hour["messages"] == {"": 2}
    assert hour["antivirus"] == {"clean": 1, "infected": 1}
    assert hour["action"] == {"deliver": 1, "reject": 1}
    day = stats.counters("d", "20231114")
    assert day["messages"] == {"": 3}
    assert stats.top("d", "20231114", "sender") == [("x@example.org", 2), ("y@example.org", 1)]
    assert stats.top("d", "20231114", "recipient") == [("b@example.net", 3)]
    assert stats.top("d", "20231114", "detection") == [("EICAR", 1)]


def test_statistics_in_a_gateway_wait_a_second_and_move_in_one_write(tmp_path: Path) -> None:
    stats = Statistics(tmp_path / "stats")
    other = Statistics(tmp_path / "stats")  # what another worker or the web process sees

    async def main() -> None:
        for n in range(50):
            stats.count(event(NOW + n, f"r{n}"))
        # Not written yet: another process sees nothing, this one reads its own counts.
        assert other.env.read(lambda txn: txn.stat(other.env.db("counts"))["entries"]) == 0
        assert stats.counters("d", "20231114")["messages"] == {"": 50}
        stats.count(event(NOW, "late"))
        await asyncio.sleep(FLUSH_SECONDS + 0.5)
        # Written by the timer, without a read or another message.
        assert other.counters("d", "20231114")["messages"] == {"": 51}

    asyncio.run(main())
    stats.count(event(NOW, "outside a loop"))  # a command: written at once
    assert other.counters("d", "20231114")["messages"] == {"": 52}


def test_statistics_waiting_in_memory_keep_each_message_in_its_own_hour_and_day(
    tmp_path: Path,
) -> None:
    stats = Statistics(tmp_path / "stats")

    async def main() -> None:
        # One flush window, messages of two hours and two days (22:xx, then 00:xx).
        for n, at in enumerate([NOW, NOW + 60, NOW + 2 * 3600, NOW + 2 * 3600 + 5]):
            stats.count(event(at, f"m{n}", sender=f"s{n % 2}@example.org", infected=n == 3))

    asyncio.run(main())
    assert stats.counters("h", "2023111422")["messages"] == {"": 2}
    assert stats.counters("h", "2023111500")["antivirus"] == {"clean": 1, "infected": 1}
    assert stats.counters("d", "20231114")["messages"] == {"": 2}
    assert stats.top("d", "20231115", "sender") == [("s0@example.org", 1), ("s1@example.org", 1)]
    stats.close()


def test_statistics_waiting_in_memory_count_what_each_message_counted_when_it_came(
    tmp_path: Path,
) -> None:
    """Messages alike wait as one count: the totals are those of counting each on its own,
    with senders and recipients in any case, detections and virus names, and a finding an
    observer changes after the message was counted."""

    def messages() -> list[MessageEvent]:
        made = []
        for n in range(40):
            e = event(NOW + n, f"m{n}", sender=["X@Example.org", "x@example.org", ""][n % 3])
            e.rcpt_to = ["B@example.net", "b@example.net", "c@example.net"][: 1 + n % 3]
            if n % 4 == 0:
                e.verdict.findings.append(
                    Finding(
                        code="SIG",
                        detector="antivirus",
                        category=Category.ANTIVIRUS,
                        status="infected",
                        details={"signature": f"Virus.{n % 8}"},
                    )
                )
                e.verdict.virus_names.append("Named.One")
            e.verdict.reputation = "suspicious" if n % 5 == 0 else None
            made.append(e)
        return made

    one_by_one = Statistics(tmp_path / "one")
    for e in messages():
        one_by_one.count(e)  # outside a loop: written at once
    waiting = Statistics(tmp_path / "waiting")

    async def main() -> None:
        for e in messages():
            waiting.count(e)
            for finding in e.verdict.findings:
                finding.details["signature"] = "changed later"

    asyncio.run(main())
    for period, bucket in (("h", "2023111422"), ("d", "20231114")):
        expected = one_by_one.counters(period, bucket)
        assert waiting.counters(period, bucket) == expected
    assert expected["recipient"] == {"b@example.net": 66, "c@example.net": 13}
    assert expected["sender"] == {"x@example.org": 27, "<>": 13}
    assert expected["detection"] == {"Named.One": 10, "Virus.0": 5, "Virus.4": 5}
    waiting.close()
    one_by_one.close()


def test_temp_files_removed_at_start(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    (temp / "sub").mkdir(parents=True)
    (temp / "half-written").write_bytes(b"x")
    (temp / "sub" / "f").write_bytes(b"y")
    assert clean_temp(temp) == 2
    assert list(temp.iterdir()) == []


_BACKUP_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mailwarden.events import MessageEventLog
    from mailwarden.stores.backup import BackupStore
    from tests.unit.test_events import event
    home, who = Path(sys.argv[1]), sys.argv[2]
    events = MessageEventLog(home / "events", retention_days=None, max_bytes=None)
    backup = BackupStore(home / "backup", max_bytes=150_000)
    for n in range(300):
        events.append(event(time.time(), f"{who}-{n}", sender=f"{who}@example.org"))
        backup.put(f"{who} {n} ".encode() * 100, reason="before change", mail_from=who)
    """
)


def test_two_processes_writing_events_and_backups_at_once(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _BACKUP_WRITER, str(tmp_path), who], cwd=root, env=os.environ
        )
        for who in ("alice", "bob")
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    backup = BackupStore(tmp_path / "backup", max_bytes=150_000)
    assert backup.index.verify() == []
    assert backup.usage().bytes <= 150_000
    kept = backup.list(limit=None)
    assert sorted(backup.blobs.digests()) == sorted({e.sha256 for e in kept})
    for entry in kept:
        assert backup.get(entry.id).startswith(entry.mail_from.encode())
    from mailwarden.events import MessageEventLog

    events = MessageEventLog(tmp_path / "events", retention_days=None, max_bytes=None)
    assert events.verify() == [] and events.usage().count == 600

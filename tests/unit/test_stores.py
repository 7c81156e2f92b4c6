"""The store abstraction: caps and overflow policies, age with a shifted clock, LMDB growth,
two writer processes, and SIGKILL in the middle of writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailwarden.events import EventQuery, MessageEventLog
from mailwarden.stores import FileStore, RecordLog, StoreFull, admit, enforce
from mailwarden_sdk import StoreDescriptor, WhenFull
from tests.unit.test_events import event

DAY = 86400.0
NOW = 1_700_000_000.0


def _files(root: Path, count: int, size: int = 100) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = root / f"m{n}"
        path.write_bytes(b"x" * size)
        os.utime(path, (NOW - (count - n) * 60, NOW - (count - n) * 60))  # m0 is the oldest
        paths.append(path)
    return paths


def test_file_store_removes_oldest_over_size_and_count_caps(tmp_path: Path) -> None:
    _files(tmp_path / "q", 10)
    by_size = FileStore(
        StoreDescriptor(
            name="q", path=str(tmp_path / "q"), holds="x", max_bytes=450,
            when_full=WhenFull.REMOVE_OLDEST,
        )
    )  # fmt: skip
    assert enforce(by_size) == 6
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["m6", "m7", "m8", "m9"]
    by_count = FileStore(
        StoreDescriptor(
            name="q", path=str(tmp_path / "q"), holds="x", max_entries=2,
            when_full=WhenFull.REMOVE_OLDEST,
        )
    )  # fmt: skip
    assert enforce(by_count) == 2
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["m8", "m9"]
    assert by_count.evictions == 2
    admit(by_count, 10**9)  # a remove-oldest store always takes the new one


def test_file_store_refusing_new_keeps_what_it_holds(tmp_path: Path) -> None:
    _files(tmp_path / "hold", 3)
    store = FileStore(
        StoreDescriptor(
            name="hold", path=str(tmp_path / "hold"), holds="x", max_bytes=1000,
            max_entries=3, when_full=WhenFull.REFUSE_NEW,
        )
    )  # fmt: skip
    with pytest.raises(StoreFull, match="'hold' is full"):
        admit(store, 10)
    assert enforce(store) == 0  # nothing held is thrown away for size
    assert len(list((tmp_path / "hold").iterdir())) == 3
    (tmp_path / "hold" / "m0").unlink()
    admit(store, 10)  # room again


def test_file_store_age_with_a_shifted_clock(tmp_path: Path) -> None:
    _files(tmp_path / "t", 5)  # written 5..1 minutes before NOW
    now = [NOW]
    store = FileStore(
        StoreDescriptor(name="t", path=str(tmp_path / "t"), holds="x", retention_days=1.0),
        clock=lambda: now[0],
    )
    assert enforce(store) == 0
    now[0] += DAY - 150  # a day after m2 (NOW - 180 s) and m0, m1; m3 and m4 are younger
    assert enforce(store) == 3
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["m3", "m4"]
    assert store.usage().count == 2


def test_event_log_cap_removes_oldest_at_every_append(tmp_path: Path) -> None:
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=5000)
    for n in range(40):
        log.append(event(NOW + n, f"m{n}"))
    usage = log.usage()
    assert usage.bytes <= 5000
    kept = [e.subject for e in log.search(EventQuery(limit=None))]
    assert kept == [f"m{n}" for n in range(39, 39 - len(kept), -1)]  # the newest, in order
    assert 1 < len(kept) < 40
    assert log.store.evictions == 40 - len(kept)
    assert log.verify() == []


def test_event_log_age_with_a_shifted_clock(tmp_path: Path) -> None:
    now = [NOW]
    log = MessageEventLog(tmp_path, retention_days=3, max_bytes=None, clock=lambda: now[0])
    for hours in (80, 73, 71, 1):
        log.append(event(NOW - hours * 3600, f"h{hours}"))
    assert log.enforce() == 2
    assert [e.subject for e in log.search()] == ["h1", "h71"]
    now[0] += 2 * 3600
    assert log.enforce() == 1
    assert [e.subject for e in log.search()] == ["h1"]
    assert log.usage().oldest == pytest.approx(NOW - 3600)
    assert log.verify() == []


def test_record_log_map_grows_from_a_small_start(tmp_path: Path) -> None:
    descriptor = StoreDescriptor(name="r", path=str(tmp_path), holds="x")
    log: RecordLog[dict[str, str]] = RecordLog(
        descriptor,
        dict,
        time_of=lambda r: float(r["t"]),
        index_terms=lambda r: {"who": [r["who"]]},
        indices=("who",),
        initial_map_size=64 * 1024,
    )
    for n in range(200):
        log.append_many([{"t": str(NOW + n), "who": f"w{n % 3}", "pad": "p" * 4000}] * 5)
    assert log.env.map_size > 64 * 1024
    assert log.usage().count == 1000
    assert log.count_term("who", "W1") == 335
    assert log.verify() == []


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mailwarden.events import MessageEventLog
    from tests.unit.test_events import event
    path, who, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    log = MessageEventLog(path, retention_days=None, max_bytes=None, initial_map_size=64 * 1024)
    for n in range(count):
        log.append(event(time.time(), f"{who}-{n} " + "padding " * 40, sender=f"{who}@example.org"))
        if n == 0:
            print("started", flush=True)
    """
)


def _writer(path: Path, who: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), who, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )


def test_two_processes_writing_at_once_leave_consistent_indices(tmp_path: Path) -> None:
    writers = [_writer(tmp_path, who, 400) for who in ("alice", "bob")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None)
    assert log.verify() == []
    assert log.usage().count == 800
    assert log.store.env.map_size > 64 * 1024  # grown while both wrote
    for who in ("alice", "bob"):
        found = log.search(EventQuery(sender=f"{who}@example.org", limit=None))
        assert sorted(int(e.subject.split()[0].split("-")[1]) for e in found) == list(range(400))


def test_sigkill_during_writes_leaves_a_readable_store(tmp_path: Path) -> None:
    writer = _writer(tmp_path, "carol", 1_000_000)
    assert writer.stdout is not None and writer.stdout.readline() == "started\n"
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None)
    deadline = time.monotonic() + 30
    while log.usage().count < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    log.close()
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None)
    count = log.usage().count
    assert count >= 50
    assert log.verify() == []
    assert len(log.search(EventQuery(sender="carol", limit=None))) == count
    log.append(event(time.time(), "after"))  # the killed writer's lock and reader slot are free
    assert log.search(EventQuery(limit=1))[0].subject == "after"


def test_building_a_gateway_opens_no_environment(tmp_path: Path) -> None:
    # `mailwarden serve` builds a gateway and then forks workers: an LMDB environment opened
    # before the fork could not be opened again in the workers.
    from mailwarden.config import parse_config
    from mailwarden.pipeline import Gateway
    from mailwarden.stores import lmdb_env

    config = parse_config(f'[gateway]\nhome = "{tmp_path}"\n')
    Gateway(config)
    assert not [path for path in lmdb_env._OPEN if path.startswith(str(tmp_path))]


def test_first_use_from_many_threads_at_once_never_deadlocks(tmp_path: Path) -> None:
    # A worker's threads (store enforcement, the application log) used a store for the first
    # time together, and two opens of one environment could run side by side and deadlock,
    # GIL included: so the race runs in a child process that must finish in time.
    script = textwrap.dedent(
        """
        import sys, threading
        from pathlib import Path
        from mailwarden.stores.lmdb_env import LmdbEnv

        def work(n, env, start):
            start.wait()
            env.write(lambda txn: txn.put(f"k{n}".encode(), b"v", db=env.db("main")))

        for round_ in range(30):
            path = Path(sys.argv[1]) / f"env{round_}"
            envs = [LmdbEnv(path, dbs={"main": False, "index": True}) for _ in range(2)]
            start = threading.Barrier(8)
            threads = [
                threading.Thread(target=work, args=(n, envs[n % 2], start)) for n in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            first = envs[0]
            entries = first.read(lambda txn: txn.stat(first.db("main"))["entries"])
            assert entries == 8, entries
            for env in envs:
                env.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_bodies_of_backups_the_cap_removed_go_whichever_thread_wrote(tmp_path: Path) -> None:
    # Each removed entry's body file is deleted after the commit that removed it. The removed
    # entries were kept on the store object, so another thread's write beginning between a
    # commit and its hand-over took them away: their message copies stayed on disk for good,
    # past the backup's cap and retention.
    from mailwarden.stores.backup import BackupStore

    store = BackupStore(tmp_path / "backup", max_bytes=40_000)
    start = threading.Barrier(4)

    def put(worker: int) -> None:
        start.wait()
        for n in range(150):
            store.put(f"{worker}-{n}".encode() * 300, reason="test")

    threads = [threading.Thread(target=put, args=(worker,)) for worker in range(4)]
    # Switch threads as often as the interpreter can: the hand-over race then shows in a
    # few hundred writes instead of by chance.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    named = {entry.sha256 for entry in store.list(limit=None)}
    assert len(named) < 600  # the cap removed some
    assert set(store.blobs.digests()) - named == set()

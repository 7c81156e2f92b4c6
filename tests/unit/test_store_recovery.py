"""Damaged stores: found at open (or at the first transaction that meets the damage), moved
aside to ``NAME.corrupt-TIME``, created empty, logged in the application log and counted in
``mailwarden_store_recovered``; never a crash, never silent loss."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.authlog import AuthLog
from mailwarden.stores.backup import BackupStore
from mailwarden.stores.statistics import Statistics
from mailwarden_sdk import Envelope
from tests.conftest import free_port, make_message
from tests.serving import start_serve, stop_serve
from tests.web.conftest import PASSWORD, Web

PAGE = 4096


def truncate_half(env: Path) -> None:
    data = env / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)


def zero_pages(env: Path) -> None:
    """Zeros over every page but the two meta pages: what a bad sector or a stray write does."""
    data = env / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as handle:
        handle.seek(2 * PAGE)
        handle.write(b"\0" * (size - 2 * PAGE))


def copies(env: Path) -> list[Path]:
    return sorted(env.parent.glob(f"{env.name}.corrupt-*"))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        timeout=120,
    )


def fill_app_log(path: Path, n: int = 300) -> None:
    log = ApplicationLog(path)
    for i in range(n):
        log.write("admin", f"setting {i} changed", actor="admin", detail="x" * 200)
    log.close()


def recovered_entries(home: Path) -> list[str]:
    log = ApplicationLog(home / "app-log")
    try:
        return [e.detail for e in log.search(kind="error") if e.action == "store recovered"]
    finally:
        log.close()


def test_truncated_app_log_does_not_stop_serve(tmp_path: Path) -> None:
    """It stopped `serve` at start (SIGBUS on the first read past the file's end): mail down."""
    home = tmp_path / "home"
    home.mkdir()
    port, metrics = free_port(), free_port()
    (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n[metrics]\nport = {metrics}\n")
    fill_app_log(home / "app-log")
    truncate_half(home / "app-log")
    out = tmp_path / "serve.log"
    # It died with SIGBUS before listening: start_serve fails with the log.
    process = start_serve(home, out, [port, metrics])
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.sendmail("alice@example.org", ["bob@example.net"], make_message()) == {}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'mailwarden_store_recovered_total{store="application event log"} 1.0' in text
        assert 'mailwarden_store_damaged_copies{store="application event log"} 1.0' in text
        assert 'mailwarden_store_damaged_copies{store="auth log"} 0.0' in text
    finally:
        stop_serve(process, out)
    assert "was damaged" in out.read_text()
    [aside] = copies(home / "app-log")
    assert (aside / "data.mdb").stat().st_size > 0  # kept as it was, for forensics
    [entry] = recovered_entries(home)
    assert "application event log" in entry and "truncated" in entry and str(aside) in entry
    inventory = json.loads(cli(home, "data-inventory", "--json").stdout)
    assert str(aside) in [state["store"]["path"] for state in inventory]


def _gateway(home: Path) -> Gateway:
    plugins = build_plugin_manager()
    return Gateway(load_config(home / "mailwarden.toml", plugins.config_schemas()), plugins=plugins)


def _process(home: Path, subjects: list[str]) -> None:
    import asyncio

    async def run() -> None:
        gateway = _gateway(home)
        await gateway.start()
        try:
            for subject in subjects:
                raw = make_message(subject=subject)
                envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
                await gateway.process(raw, envelope, ingress="smtp")
        finally:
            await gateway.stop()
            gateway.events.close()

    asyncio.run(run())


def test_corrupt_events_store_is_recovered_and_events_command_works(tmp_path: Path) -> None:
    """Every event was silently lost and `mailwarden events` crashed."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text("")
    _process(home, [f"before {i}" for i in range(40)])
    zero_pages(home / "events")

    result = cli(home, "events", "--json")
    assert result.returncode == 0, result.stderr
    assert "message event log was damaged" in result.stderr
    assert len(copies(home / "events")) == 1
    assert any("message event log" in entry for entry in recovered_entries(home))

    _process(home, ["after recovery"])
    result = cli(home, "events", "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["subject"] for line in result.stdout.splitlines()] == [
        "after recovery"
    ]


def test_damaged_event_record_is_skipped_and_said_on_stderr(tmp_path: Path) -> None:
    """A record whose bytes rotted (pages intact): the others are listed, the command says
    how many it skipped."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text("")
    _process(home, ["first", "second", "third"])
    env = lmdb.open(str(home / "events"), max_dbs=16)
    records = env.open_db(b"records")
    with env.begin(write=True) as txn:
        key = sorted(k for k, _ in txn.cursor(db=records))[1]
        value = txn.get(key, db=records)
        txn.put(key, b"\x00\xff" + value[2:-7], db=records)
    env.close()

    result = cli(home, "events")
    assert result.returncode == 0, result.stderr
    assert "1 damaged event record(s) skipped" in result.stderr
    assert "subject: third" in result.stdout and "subject: first" in result.stdout
    assert "subject: second" not in result.stdout
    assert copies(home / "events") == []  # one bad record is not a damaged store


def test_web_login_works_after_a_corrupt_auth_log(tmp_path: Path) -> None:
    """Every web login answered 500."""
    home = tmp_path / "home"
    first = Web(home)
    try:
        for _ in range(30):
            first.login("administrator")
    finally:
        first.close()
        first.gateway.stores.auth_log.close()
    zero_pages(home / "auth-log")

    web = Web(home)
    try:
        client = web.client()
        answer = client.post("/api/login", json={"name": "administrator", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        answer = client.post("/api/login", json={"name": "operator", "password": "wrong"})
        assert answer.status_code == 401, answer.text
        attempts = web.gateway.stores.auth_log.search()
        assert [(a.user, a.success) for a in attempts] == [
            ("operator", False),
            ("administrator", True),
        ]
        registry = web.gateway.stores.metrics.registry
        assert (
            registry.get_sample_value("mailwarden_store_recovered_total", {"store": "auth log"})
            == 1.0
        )
    finally:
        web.close()
    assert len(copies(home / "auth-log")) == 1
    assert any("auth log" in entry for entry in recovered_entries(home))


def fill_backup(path: Path) -> None:
    store = BackupStore(path)
    for i in range(20):
        store.put(make_message(subject=f"kept {i}"), reason="infected", subject=f"kept {i}")
    store.index.close()


def use_backup(path: Path) -> int:
    store = BackupStore(path)
    store.put(make_message(subject="new"), reason="infected", subject="new")
    return store.index.usage().count


def fill_statistics(path: Path) -> None:
    stats = Statistics(path)
    counts = stats.env.db("counts")
    stats.env.write(lambda txn: [txn.put(b"k%d" % i, b"v" * 300, db=counts) for i in range(200)])
    stats.close()


def use_statistics(path: Path) -> int:
    stats = Statistics(path)
    counts = stats.env.db("counts")
    stats.env.write(lambda txn: txn.put(b"new", b"1", db=counts))
    return int(stats.env.read(lambda txn: txn.stat(counts)["entries"]))


def fill_auth_log(path: Path) -> None:
    log = AuthLog(path)
    for i in range(300):
        log.login(f"user{i}", "192.0.2.1", success=True)
    log.close()


def use_auth_log(path: Path) -> int:
    log = AuthLog(path)
    log.login("admin", "192.0.2.2", success=True)
    return log.usage().count


def use_in_child(store: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``use_<store>(path)`` in another process; it prints the records the store holds."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; import tests.unit.test_store_recovery as t; "
            f"print(t.use_{store}(Path(sys.argv[1])))",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("store", ["backup", "statistics", "auth_log"])
@pytest.mark.parametrize("damage", [zero_pages, truncate_half])
def test_every_lmdb_store_recovers(
    tmp_path: Path, store: str, damage: Callable[[Path], None]
) -> None:
    """Each core LMDB store, truncated or with zeroed pages, opens empty and takes new data."""
    path = tmp_path / "store"
    globals()[f"fill_{store}"](path)
    env = next(p.parent for p in path.rglob("data.mdb"))
    damage(env)
    # In a child process: a truncated file killed the old code's process (SIGBUS).
    child = use_in_child(store, path)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["1"]
    assert "was damaged" in child.stderr
    [aside] = copies(env)
    assert (aside / "data.mdb").exists()


def test_recovery_in_process_is_counted(tmp_path: Path) -> None:
    from mailwarden.stores.lmdb_env import LmdbEnv, recovered_counts

    fill_auth_log(tmp_path / "auth")
    zero_pages(tmp_path / "auth")
    before = recovered_counts().get("auth log", 0)
    assert use_auth_log(tmp_path / "auth") == 1
    assert recovered_counts()["auth log"] == before + 1
    # Opened again (a new object, a new process would do the same): healthy, nothing moved.
    assert LmdbEnv(tmp_path / "auth", dbs={}).read(lambda txn: txn.stat()["entries"]) > 0
    assert len(copies(tmp_path / "auth")) == 1


def test_a_process_that_had_the_store_open_follows_the_recovery(tmp_path: Path) -> None:
    """Workers share the stores: the one that did not recover must not write into the copy."""
    path = tmp_path / "auth"
    fill_auth_log(path)
    ours = AuthLog(path)
    assert ours.usage().count == 300  # open in this process, as in a running worker
    zero_pages(path)
    other = use_in_child("auth_log", path)
    assert other.returncode == 0, other.stderr
    assert len(copies(path)) == 1
    ours.login("carol", "192.0.2.3", success=False)
    assert sorted(a.user for a in ours.search()) == ["admin", "carol"]
    ours.close()
    assert sorted(a.user for a in AuthLog(path).search()) == ["admin", "carol"]

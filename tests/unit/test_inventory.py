"""``mailwarden data-inventory``: every store, the four plugins' included, with the sizes and
counts of what this test wrote; the plugins' declared stores enforced like the core's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import load_config
from mailwarden.events import MessageEventLog
from mailwarden.inventory import plugin_descriptors
from mailwarden.plugins import build_plugin_manager
from mailwarden.quarantine import Quarantine
from mailwarden.record import plugin_file_stores
from mailwarden.spool import Spool
from mailwarden.stores import StoreFull, admit, enforce
from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.authlog import AuthLog
from mailwarden.stores.backup import BackupStore
from mailwarden.stores.statistics import Statistics
from mailwarden.stores.traces import TraceStreams
from mailwarden.tls import write_private
from mailwarden_reputation.cache import Answer, ReputationCache
from mailwarden_sdk import Envelope
from tests.unit.test_events import event

CONFIG = """
[stores]
traces = true

[[dkim.keys]]
domain = "example.org"
selector = "s1"
key_file = "dkim/example.org.s1.key"

[antispam]
quarantine_max_bytes = 250

[sandbox]
quarantine_max_messages = 2
"""


def _files(folder: Path, sizes: list[int]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for n, size in enumerate(sizes):
        (folder / f"m{n}").write_bytes(b"m" * size)
        os.utime(folder / f"m{n}", (time.time() - 100 + n, time.time() - 100 + n))
    return sum(sizes)


def _disk(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files), len(files)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text(CONFIG)
    return home


def test_inventory_lists_every_store_with_what_was_written(home: Path) -> None:
    started = time.time()
    events = MessageEventLog(home / "events")
    for n in range(3):
        events.append(event(started + n, f"m{n}"))
    app = ApplicationLog(home / "app-log")
    app.write("admin", "rule changed", actor="admin")
    app.write("login", "web login", actor="admin")
    AuthLog(home / "auth-log").login("admin", "192.0.2.1", success=True)
    backup = BackupStore(home / "backup")
    backup.put(b"one" * 100, reason="r")
    backup.put(b"two" * 100, reason="r")
    Statistics(home / "statistics").count(event(started, "s"))
    TraceStreams(home / "traces").write("smtp", "EHLO client")
    Quarantine(home / "quarantine").hold(
        b"Subject: held\r\n\r\nbody\r\n", Envelope(), decision="d", rule="r", reason="spam"
    )
    Spool(home / "spool").write(b"Subject: x\r\n\r\ny\r\n", Envelope(mail_from="a@b.c"))
    write_private(home / "dkim" / "example.org.s1.key", b"-----BEGIN PRIVATE KEY-----\n")
    spam_bytes = _files(home / "quarantine" / "spam", [100, 120])
    sandbox_bytes = _files(home / "quarantine" / "sandbox", [50])
    cache = ReputationCache(home / "reputation" / "cache", cap=100)
    cache.put_many({f"k{n}": (Answer(verdict="clean"), 60.0) for n in range(4)})
    cache.close()

    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
    )
    shown: dict[str, Any] = {s["store"]["name"]: s for s in json.loads(result.stdout)}

    def check(name: str, path: Path, records: int, owner: str = "core") -> dict[str, Any]:
        state = shown[name]
        assert state["owner"] == owner, name
        assert state["store"]["path"] == str(path), name
        assert state["exists"], name
        assert (state["bytes"], state["files"]) == _disk(path), name
        assert state["records"] == records, name
        return state

    ev = check("message event log", home / "events", 3)
    assert ev["oldest"] == pytest.approx(started)
    assert ev["store"]["retention_days"] == 3.0 and ev["store"]["max_bytes"] == 1 << 30
    check("application event log", home / "app-log", 2)
    check("auth log", home / "auth-log", 1)
    check("backup", home / "backup", 2)
    check("traces", home / "traces", 1)
    check("statistics", home / "statistics", 2)  # data.mdb and lock.mdb
    check("quarantine", home / "quarantine" / "held", 1)
    check("spool", home / "spool", _disk(home / "spool")[1])
    check("DKIM key s1._domainkey.example.org", home / "dkim" / "example.org.s1.key", 1)
    assert shown["TLS key"]["store"]["path"] == str(home / "tls" / "key.pem")
    assert shown["temp files"]["exists"] is False
    spam = check("spam quarantine", home / "quarantine" / "spam", 2, owner="antispam")
    assert spam["bytes"] == spam_bytes and spam["store"]["when_full"] == "remove_oldest"
    sandbox = check("sandbox quarantine", home / "quarantine" / "sandbox", 1, owner="sandbox")
    assert sandbox["bytes"] == sandbox_bytes
    assert sandbox["store"]["when_full"] == "refuse_new"
    assert sandbox["store"]["max_entries"] == 2
    assert shown["reputation cache"]["records"] == 4
    assert shown["reputation cache"]["owner"] == "reputation"
    # The antivirus plugin's own store is its signature cache: its backups are the core's.
    assert shown["antivirus signatures"]["store"]["holds"].endswith("no personal data")
    owners = {s["owner"] for s in shown.values()}
    assert owners == {"core", "antispam", "antivirus", "reputation", "sandbox"}
    for state in shown.values():
        assert state["store"]["read_permission"], state["store"]["name"]

    text = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
    ).stdout
    assert "message event log (core)" in text and "3 entries, oldest " in text
    assert "sandbox quarantine (sandbox)" in text and "when full: refuse_new" in text


def test_plugins_declared_stores_are_enforced_by_the_core(home: Path) -> None:
    plugins = build_plugin_manager()
    config = load_config(home / "mailwarden.toml", plugins.config_schemas())
    stores = {s.descriptor.name: s for s in plugin_file_stores(
        d for _, d in plugin_descriptors(config, plugins)
    )}  # fmt: skip
    # The reputation and sandbox verdict caches (LRU) keep their own caps; backups are the
    # core's own store.
    assert set(stores) == {"spam quarantine", "sandbox quarantine"}
    _files(home / "quarantine" / "spam", [100, 100, 100])
    assert enforce(stores["spam quarantine"]) == 1  # cap 250: the oldest goes
    assert sorted(p.name for p in (home / "quarantine" / "spam").iterdir()) == ["m1", "m2"]
    _files(home / "quarantine" / "sandbox", [10, 10])
    with pytest.raises(StoreFull):
        admit(stores["sandbox quarantine"], 10)  # 2 messages held: the third is refused
    assert enforce(stores["sandbox quarantine"]) == 0
    assert len(list((home / "quarantine" / "sandbox").iterdir())) == 2

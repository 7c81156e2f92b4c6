"""The stores that grew without bound have caps: the JSON events export and the web's audit
copy (rotated once, the file and its older half within the cap, shared by worker processes),
and the antispam plugin's journal of learning acts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mailwarden.config import load_config
from mailwarden.events import MessageEventLog
from mailwarden.record import CoreStores
from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.lines import rotated_path
from mailwarden.telemetry.eventsout import JsonLinesSink
from mailwarden.web.audit import AuditLog
from mailwarden_antispam.bayes import Bayes
from mailwarden_sdk import ActionKind, MessageEvent, Verdict
from tests.conftest import make_message

CAP = 20_000


def _event(event_id: str) -> MessageEvent:
    return MessageEvent(
        id=event_id,
        time=time.time(),
        ingress="smtp",
        mail_from="alice@example.org",
        rcpt_to=["bob@example.net", "carol@example.net"],
        client_address="192.0.2.1",
        helo="client.example.org",
        queue_id=None,
        message_id="<m@example.org>",
        subject="a subject of some length for the export line " * 4,
        size=1234,
        attachments=["invoice.pdf"],
        rule="default",
        verdict=Verdict(),
        action=ActionKind.DELIVER,
        reply="250 2.0.0 Ok",
    )


def _kept(path: Path) -> tuple[int, list[str]]:
    size, lines = 0, []
    for part in (rotated_path(path), path):
        if part.exists():
            size += part.stat().st_size
            lines += part.read_text().splitlines()
    return size, lines


def test_json_export_from_two_processes_stays_under_its_cap(tmp_path: Path) -> None:
    target = tmp_path / "export" / "events.jsonl"
    children = []
    for tag in ("a", "b"):
        pid = os.fork()
        if pid == 0:  # a second worker process writing the same file
            code = 1
            try:
                sink = JsonLinesSink(str(target), CAP)
                for i in range(300):
                    sink.send(_event(f"{tag}{i}"))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    size, lines = _kept(target)
    # Uncapped, these 600 events were 438,928 bytes.
    assert 0 < size <= CAP
    ids = [json.loads(text)["id"] for text in lines]  # every kept line whole
    # What is kept of each writer is its newest lines, none missing in between.
    for tag in "ab":
        kept = [int(i[1:]) for i in ids if i[0] == tag]
        assert kept == list(range(300 - len(kept), 300)), (tag, kept)
    assert ids[-1] in ("a299", "b299") and len(ids) > 10
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_web_audit_copy_is_capped_and_the_application_log_keeps_everything(
    tmp_path: Path,
) -> None:
    app_log = ApplicationLog(tmp_path / "app-log")
    audit = AuditLog(tmp_path / "web" / "audit.jsonl", app_log=app_log, max_bytes=CAP)
    for i in range(400):
        audit.write("settings.edit", "alice", section="smtp", keys=[f"key{i}"], client="192.0.2.1")
    size, _ = _kept(audit.path)
    assert size <= CAP
    records = audit.records()
    assert records[-1]["keys"] == ["key399"] and len(records) < 400
    assert len(app_log.search(limit=None)) == 400
    app_log.close()


def test_bayes_journal_keeps_the_newest_acts(tmp_path: Path) -> None:
    bayes = Bayes(tmp_path / "bayes", map_size=16 << 20, journal_max_entries=5)
    try:
        for i in range(8):
            assert bayes.learn(
                make_message(subject=f"lesson {i}", body=f"words {i}\n"), "spam", "ops"
            )
        journal = bayes.journal()
        assert len(journal) == 5
        # The tokens of every lesson stay learned; only the record of who taught them goes.
        assert bayes.counts() == (8, 0)
        assert [r.action for r in journal] == ["learn"] * 5
        newest = {r.digest for r in journal}
        assert len(newest) == 5
    finally:
        bayes.close()


def test_the_retention_engine_brings_a_file_back_under_a_lowered_cap(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text(
        f'[events]\njson = "events.jsonl"\njson_max_bytes = {CAP}\n'
    )
    sink = JsonLinesSink(str(home / "events.jsonl"), CAP)
    for i in range(100):
        sink.send(_event(f"e{i}"))
    assert _kept(home / "events.jsonl")[0] > 4000
    # The cap lowered in the config: the next enforcement applies it to what is there.
    (home / "mailwarden.toml").write_text(
        '[events]\njson = "events.jsonl"\njson_max_bytes = 4000\n'
    )
    config = load_config(home / "mailwarden.toml")
    stores = CoreStores(config, MessageEventLog(home / "events"))
    removed = stores.enforce_all()
    assert removed["JSON events export"] >= 1
    assert _kept(home / "events.jsonl")[0] <= 4000
    assert removed["web audit copy"] == 0

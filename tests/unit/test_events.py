"""The message event log: search, retention by age, size cap, and its place in the inventory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mailwarden.events import EventQuery, MessageEventLog
from mailwarden_sdk import ActionKind, AntivirusStatus, MessageEvent, Verdict

DAY = 86400.0


def event(
    when: float, subject: str, sender: str = "a@example.org", infected: bool = False
) -> MessageEvent:
    verdict = Verdict(antivirus=AntivirusStatus.INFECTED if infected else AntivirusStatus.CLEAN)
    return MessageEvent(
        id=f"id-{subject}",
        time=when,
        ingress="smtp",
        mail_from=sender,
        rcpt_to=["b@example.net"],
        client_address="192.0.2.1",
        helo="client",
        queue_id=None,
        message_id=f"<{subject}@x>",
        subject=subject,
        size=10,
        attachments=[],
        rule="default",
        verdict=verdict,
        action=ActionKind.REJECT if infected else ActionKind.DELIVER,
        reply="250 ok",
    )


def test_search_filters_and_orders_newest_first(tmp_path: Path) -> None:
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None)
    now = time.time()
    log.append(event(now - 2 * DAY, "old", sender="carol@example.org"))
    log.append(event(now - 60, "bad", infected=True))
    log.append(event(now, "new"))
    assert [e.subject for e in log.search()] == ["new", "bad", "old"]
    assert [e.subject for e in log.search(EventQuery(status="infected"))] == ["bad"]
    assert [e.subject for e in log.search(EventQuery(sender="carol"))] == ["old"]
    assert [e.subject for e in log.search(EventQuery(since=now - DAY))] == ["new", "bad"]
    assert [e.subject for e in log.search(EventQuery(until=now - DAY))] == ["old"]
    assert [e.subject for e in log.search(EventQuery(action="reject"))] == ["bad"]
    assert log.search(EventQuery(client_address="198.51.100.1")) == []
    assert len(log.search(EventQuery(limit=2))) == 2


def test_days_past_retention_are_removed(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    log = MessageEventLog(tmp_path, retention_days=3, max_bytes=None, clock=lambda: now[0])
    for age in (5, 4, 2, 0):
        log.append(event(now[0] - age * DAY, f"age{age}"))
    log.enforce()
    assert sorted(e.subject for e in log.search()) == ["age0", "age2"]
    now[0] += 4 * DAY  # four days on, even the newest day is past the retention
    log.enforce()
    assert [e.subject for e in log.search()] == []


def test_size_cap_removes_oldest_days_but_never_today(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=1, clock=lambda: now)
    for age in (2, 1, 0):
        log.append(event(now - age * DAY, f"age{age}"))
    log.enforce()
    assert [e.subject for e in log.search()] == ["age0"]


def test_queries_match_address_parts_words_and_ids(tmp_path: Path) -> None:
    log = MessageEventLog(tmp_path, retention_days=None, max_bytes=None)
    now = time.time()
    log.append(event(now - 10, "Quarterly invoice attached", sender="Carol@Example.org"))
    log.append(event(now, "lunch", sender="dave@example.net"))
    for sender in ("carol@example.org", "CAROL", "@example.org", "example.org"):
        assert [e.subject for e in log.search(EventQuery(sender=sender))] == [
            "Quarterly invoice attached"
        ], sender
    assert log.search(EventQuery(sender="caro")) == []  # a part of a word is not a match
    assert len(log.search(EventQuery(subject="INVOICE quarterly"))) == 1
    assert log.search(EventQuery(subject="invoice lunch")) == []
    assert len(log.search(EventQuery(message_id="lunch@x"))) == 1
    assert len(log.search(EventQuery(message_id="<lunch@x>"))) == 1
    assert len(log.search(EventQuery(recipient="example.net"))) == 2
    assert len(log.search(EventQuery(client_address="192.0.2.1", limit=None))) == 2
    assert log.verify() == []


def test_data_inventory_lists_event_log_with_real_size(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = MessageEventLog(home / "events", retention_days=None, max_bytes=None)
    for n in range(3):
        log.append(event(time.time(), f"m{n}"))
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory", "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
    )
    stores = {s["store"]["name"]: s for s in json.loads(result.stdout)}
    events = stores["message event log"]
    assert events["store"]["retention_days"] == 3.0
    assert events["store"]["max_bytes"] == 1 << 30
    assert events["bytes"] == sum(p.stat().st_size for p in (home / "events").iterdir())
    assert events["store"]["read_permission"] == "events.messages.view"
    assert stores["maildir"]["exists"] is False


def test_events_command_searches_the_index(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = MessageEventLog(home / "events", retention_days=None, max_bytes=None)
    now = time.time()
    log.append(event(now - 3 * 3600, "early", sender="carol@example.org"))
    log.append(event(now - 60, "late", sender="carol@example.org", infected=True))
    log.append(event(now - 30, "other", sender="dave@example.org"))
    log.close()

    def run(*args: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mailwarden", "events", "--json", *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
        return [json.loads(line)["subject"] for line in result.stdout.splitlines()]

    assert run() == ["other", "late", "early"]
    assert run("--sender", "carol@example.org") == ["late", "early"]
    assert run("--sender", "carol", "--until", "1h") == ["early"]
    assert run("--sender", "@example.org", "--since", "2h") == ["other", "late"]
    assert run("--status", "infected") == ["late"]
    assert run("--subject", "EARLY", "--rcpt", "example.net") == ["early"]


def test_day_files_of_the_json_lines_format_are_imported_once(tmp_path: Path) -> None:
    import msgspec

    now = time.time()
    (tmp_path / "20231114.jsonl").write_bytes(
        msgspec.json.encode(event(now - 60, "old format", sender="carol@example.org"))
        + b"\n"
        + b'{"id": "torn", "ti'
    )
    log = MessageEventLog(tmp_path, retention_days=3, max_bytes=None)
    log.append(event(now, "new format"))  # the first write enforces, which imports
    assert [e.subject for e in log.search()] == ["new format", "old format"]
    assert list(tmp_path.glob("*.jsonl")) == []
    assert len(log.search(EventQuery(sender="carol"))) == 1
    assert log.import_legacy() == 0 and log.verify() == []

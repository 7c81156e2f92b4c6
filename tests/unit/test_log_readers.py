"""``mailwarden events --log app|auth``: the application and authentication logs read from the
shell, newest first, with the message events' ``--since``/``--until``; account changes made
with ``mailwarden web`` are in the application log like the web's own."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailwarden.stores.applog import ApplicationLog
from mailwarden.stores.authlog import AuthLog

DAY = 86400.0


def _run(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text("[smtp]\nport = 2525\n")
    return home


def test_app_log_newest_first_with_since_kind_and_actor(home: Path) -> None:
    now = time.time()
    times = iter([now - 3 * DAY, now - 600, now - 60])
    app = ApplicationLog(home / "app-log", clock=lambda: next(times))
    app.write("admin", "rules.edit", actor="alice", client_address="192.0.2.7", detail="old")
    app.write("login", "login", actor="bob", client_address="192.0.2.8")
    app.write("admin", "settings.edit", actor="alice", detail='{"section": "smtp"}')
    app.close()

    lines = _run(home, "events", "--log", "app").stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["settings.edit", "login", "rules.edit"]
    assert "actor=alice" in lines[0] and '{"section": "smtp"}' in lines[0]
    assert "client=192.0.2.8" in lines[1]

    recent = _run(home, "events", "--log", "app", "--since", "2h").stdout.splitlines()
    assert [line.split()[2] for line in recent] == ["settings.edit", "login"]
    older = _run(home, "events", "--log", "app", "--until", "1d").stdout.splitlines()
    assert [line.split()[2] for line in older] == ["rules.edit"]

    by_alice = _run(home, "events", "--log", "app", "--actor", "alice", "--kind", "admin", "--json")
    records = [json.loads(line) for line in by_alice.stdout.splitlines()]
    assert [(r["action"], r["actor"]) for r in records] == [
        ("settings.edit", "alice"),
        ("rules.edit", "alice"),
    ]


def test_auth_log_by_user_and_client(home: Path) -> None:
    now = time.time()
    times = iter([now - 10 * DAY, now - 120, now - 30])
    auth = AuthLog(home / "auth-log", clock=lambda: next(times))
    auth.login("alice", "192.0.2.7", success=True)
    auth.login("mallory", "198.51.100.9", success=False)
    auth.login("alice", "198.51.100.9", success=True, method="directory")
    auth.close()

    lines = _run(home, "events", "--log", "auth").stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["ok", "user=alice"],
        ["FAILED", "user=mallory"],
        ["ok", "user=alice"],
    ]
    from_there = _run(home, "events", "--log", "auth", "--client", "198.51.100.9", "--json")
    users = [json.loads(line)["user"] for line in from_there.stdout.splitlines()]
    assert users == ["alice", "mallory"]
    week = _run(home, "events", "--log", "auth", "--actor", "alice", "--since", "7d")
    assert len(week.stdout.splitlines()) == 1 and "method=directory" in week.stdout


def test_message_filters_are_refused_for_the_other_logs(home: Path) -> None:
    result = _run(home, "events", "--log", "app", "--sender", "x@example.org", check=False)
    assert result.returncode == 2 and "--sender: not a filter of the app log" in result.stderr
    result = _run(home, "events", "--log", "auth", "--kind", "admin", check=False)
    assert result.returncode == 2 and "--kind: not a filter of the auth log" in result.stderr


def test_account_changes_from_the_shell_are_in_the_application_log(home: Path) -> None:
    secret = "s3cret horse battery"
    _run(home, "web", "password", "--user", "ops", "--role", "Operator", "--password", secret)
    token = _run(home, "web", "token", "robot", "--role", "Auditor").stdout.strip()
    who = "cli:" + pwd.getpwuid(os.getuid()).pw_name

    shown = _run(home, "events", "--log", "app", "--actor", who, "--json").stdout
    records = [json.loads(line) for line in shown.splitlines()]
    assert [r["action"] for r in records] == ["token.create", "account.password"]
    assert json.loads(records[0]["detail"]) == {"token_name": "robot", "roles": ["Auditor"]}
    assert json.loads(records[1]["detail"])["account"] == "ops"
    # Neither the password nor the token is written anywhere in the logs.
    audit = (home / "web" / "audit.jsonl").read_text()
    assert secret not in audit + shown and token not in audit + shown
    assert [json.loads(line)["act"] for line in audit.splitlines()] == [
        "account.password",
        "token.create",
    ]

"""After real use of ``mailwarden serve`` (mail through SMTP, the web interface, the core and
spam quarantines, a backup, the JSON events export, traces, two workers sharing metrics, CLI
account changes), nothing under the home folder is readable by other local users, and every
file there belongs to a store ``mailwarden data-inventory`` lists."""

from __future__ import annotations

import json
import os
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR, free_port, make_message
from tests.serving import start_serve, stop_serve
from tests.web.conftest import GTUBE

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def _mailwarden(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Serve:
    def __init__(self, tmp_path: Path) -> None:
        # Made as a user would with the usual umask 022: the gateway must narrow it itself.
        self.home = tmp_path / "home"
        self.home.mkdir(mode=0o755)
        self.home.chmod(0o755)
        self.smtp, self.web, self.metrics = free_port(), free_port(), free_port()
        (self.home / "mailwarden.toml").write_text(
            f"[smtp]\nport = {self.smtp}\nworkers = 2\n"
            f"[web]\nenabled = true\nport = {self.web}\n"
            f"[metrics]\nport = {self.metrics}\n"
            '[events]\njson = "export/events.jsonl"\n'
            "[stores]\ntraces = true\n"
            '[antispam]\nquarantine = ["spam"]\nauthentication = false\n'
            # carol's infected mail is delivered without the virus: a backup copy is kept.
            '[[rules]]\nname = "carol"\nrecipients = ["carol@example.net"]\n'
            '[rules.actions]\ninfected = "remove"\n'
            '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
            'spam = "discard"\n'
        )
        self.env = {**os.environ, "MAILWARDEN_HOME": str(self.home)}
        _mailwarden(self.env, "web", "password", "--password", PASSWORD)
        _mailwarden(self.env, "web", "token", "robot", "--role", "Auditor")
        self.log = tmp_path / "serve.log"
        self.process = start_serve(self.home, self.log, [self.web, self.smtp], ready=2)

    def send(self, message: bytes, to: str = "bob@example.net") -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            client.sendmail("alice@example.org", [to], message)

    def stop(self) -> None:
        stop_serve(self.process, self.log)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tmp_path)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _use(serve: Serve) -> None:
    serve.send(make_message(subject="clean"))
    serve.send(make_message(subject="held", attachment=EICAR, filename="invoice.com"))
    serve.send(make_message(subject="spam", body=GTUBE.decode() + "\r\n"))
    serve.send(make_message(subject="cut", attachment=EICAR, filename="a.com"), "carol@example.net")
    # The web's certificate is the generated self-signed one.
    with httpx.Client(base_url=f"https://127.0.0.1:{serve.web}", verify=False, timeout=30) as web:
        login = web.post("/api/login", json={"name": "admin", "password": PASSWORD})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf"]
        deadline = time.monotonic() + 30
        while not web.get("/api/quarantine").json() and time.monotonic() < deadline:
            time.sleep(0.1)
        [held] = web.get("/api/quarantine").json()
        assert web.get("/api/quarantines/spam").json()
        assert web.get("/api/events").status_code == 200
        assert web.get("/api/backup").status_code == 200
        release = web.post(f"/api/quarantine/{held['id']}/release", headers={"x-csrf-token": csrf})
        assert release.status_code == 200, release.text
    metrics = httpx.get(f"http://127.0.0.1:{serve.metrics}/metrics", timeout=30)
    assert metrics.status_code == 200


def _inventory_paths(serve: Serve) -> list[Path]:
    listed = json.loads(_mailwarden(serve.env, "data-inventory", "--json").stdout)
    return [Path(state["store"]["path"]) for state in listed if state["store"]["path"][:1] == "/"]


def _covered(path: Path, stores: list[Path]) -> bool:
    return any(path == store or store in path.parents for store in stores)


def test_home_is_private_and_inventoried_after_real_use(serve: Serve) -> None:
    _use(serve)
    serve.stop()
    # The stores the run must have written, so the walk below proves something.
    for written in ("export/events.jsonl", "web/audit.jsonl", "web/users.json", "tls"):
        assert (serve.home / written).exists(), written
    assert any((serve.home / "traces").rglob("*.log")), "traces are on but none was written"
    assert any((serve.home / "backup" / "bodies").rglob("*")), "no backup copy was kept"

    stores = _inventory_paths(serve)
    readable: list[str] = []
    unlisted: list[str] = []
    for folder, dirs, names in os.walk(serve.home):
        for name in [*dirs, *names, ""]:
            path = Path(folder) / name if name else Path(folder)
            mode = path.lstat().st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
                continue
            # Owner only (0700 / 0600): nothing for the group or other users.
            if mode & 0o077:
                readable.append(f"{path} {stat.filemode(mode)}")
        for name in names:
            path = Path(folder) / name
            if not _covered(path, stores):
                unlisted.append(str(path.relative_to(serve.home)))
        if not dirs and not names and not _covered(Path(folder), stores):
            unlisted.append(str(Path(folder).relative_to(serve.home)) + "/")
    assert not readable, "open to group or other:\n" + "\n".join(sorted(readable))
    assert not unlisted, "not in data-inventory:\n" + "\n".join(sorted(unlisted))

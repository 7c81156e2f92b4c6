"""The vertical slice: `mailwarden serve` as a subprocess, real SMTP clients, Maildir, events."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EICAR, free_port, make_message

pytestmark = pytest.mark.integration


class Server:
    def __init__(self, process: subprocess.Popen[str], home: Path, port: int, log: Path) -> None:
        self.process = process
        self.home = home
        self.port = port
        self.log = log

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return home_cli(self.home, *args)


def home_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``mailwarden ARGS`` on ``home``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        timeout=60,
    )


def _wait_for_port(
    port: int, process: subprocess.Popen[str], log: Path, limit: float = 30.0
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mailwarden serve exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        # Listening comes before the signal handlers; "ready" after them, so a test that
        # stops serve at once finds it able to stop cleanly.
        if "\nready" in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"mailwarden serve did not listen on {port}: {log.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "home"
    port = free_port()
    home.mkdir()
    (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
    srv = Server(process, home, port, log)
    try:
        _wait_for_port(port, process, log)
        yield srv
    finally:
        srv.process.terminate()
        try:
            srv.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.process.kill()
            srv.process.wait()
    # SIGTERM is the normal way to stop the gateway: it must exit cleanly.
    assert srv.process.returncode == 0, log.read_text()


def test_clean_is_delivered_eicar_is_rejected_and_both_are_recorded(server: Server) -> None:
    clean = make_message(
        subject="tour: clean", sender="alice@example.org", recipient="bob@example.net"
    )
    infected = make_message(
        subject="tour: eicar", attachment=EICAR, filename="eicar.com", recipient="bob@example.net"
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        code, _ = client.ehlo("client.example.org")
        assert code == 250
        refused = client.sendmail("alice@example.org", ["bob@example.net"], clean)
        assert refused == {}
        with pytest.raises(smtplib.SMTPDataError) as rejected:
            client.sendmail("alice@example.org", ["bob@example.net"], infected)
    assert rejected.value.smtp_code == 550
    assert b"Eicar-Test-Signature" in rejected.value.smtp_error

    delivered = sorted((server.home / "maildir" / "new").iterdir())
    assert len(delivered) == 1
    content = delivered[0].read_bytes()
    assert b"Subject: tour: clean" in content
    assert content.startswith(b"X-Mailwarden-Virus: clean")

    result = server.cli("events", "--json")
    assert result.returncode == 0, result.stderr
    events = {e["subject"]: e for e in map(json.loads, result.stdout.splitlines())}
    assert events["tour: clean"]["action"] == "deliver"
    assert events["tour: clean"]["verdict"]["antivirus"] == "clean"
    assert events["tour: clean"]["client_address"] == "127.0.0.1"
    assert events["tour: clean"]["helo"] == "client.example.org"
    assert events["tour: eicar"]["action"] == "reject"
    assert events["tour: eicar"]["verdict"]["virus_names"] == ["Eicar-Test-Signature"]
    assert events["tour: eicar"]["reply"].startswith("550 5.7.1")
    assert events["tour: eicar"]["attachments"] == ["eicar.com"]

    search = server.cli("events", "--status", "infected", "--json")
    assert [json.loads(line)["subject"] for line in search.stdout.splitlines()] == ["tour: eicar"]


def test_serve_announces_its_listeners(server: Server) -> None:
    text = server.log.read_text()
    assert f"smtp     127.0.0.1:{server.port}" in text
    assert "antivirus" in text


def _maildir_messages(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((root / "new").glob("*"))] if root.exists() else []


def test_recipients_under_different_rules_are_split_after_data(
    tmp_path: Path, server: Server
) -> None:
    # Reconfigure: the lab's rule runs no antivirus, everyone else's quarantines infected mail.
    # The server reads its config at start, so restart it.
    server.process.terminate()
    server.process.wait(timeout=10)
    (server.home / "mailwarden.toml").write_text(
        f"[smtp]\nport = {server.port}\n"
        '[[rules]]\nname = "lab"\nrecipients = ["@lab.example"]\ndetectors = ["-antivirus"]\n'
        '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
    )
    log = tmp_path / "serve2.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MAILWARDEN_HOME": str(server.home)},
        )
    server.process = process
    _wait_for_port(server.port, process, log)
    infected = make_message(
        subject="split: eicar", attachment=EICAR, filename="eicar.com", recipient="x@lab.example"
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example.org")
        # Both recipients are taken in one transaction: nobody waits for a retry.
        refused = client.sendmail("alice@example.org", ["x@lab.example", "y@example.net"], infected)
        assert refused == {}

    delivered = _maildir_messages(server.home / "maildir")
    held = [p.read_bytes() for p in (server.home / "quarantine" / "held").glob("*.eml")]
    assert len(delivered) == 1 and len(held) == 1
    assert b"split: eicar" in delivered[0] and b"split: eicar" in held[0]
    assert b"Eicar-Test-Signature" in held[0]  # the status header says why it is held
    assert b"Eicar-Test-Signature" not in delivered[0].split(b"\r\n\r\n")[0]

    result = server.cli("events", "--json")
    events = {tuple(e["rcpt_to"]): e for e in map(json.loads, result.stdout.splitlines())}
    assert events[("x@lab.example",)]["rule"] == "lab"
    assert events[("x@lab.example",)]["action"] == "deliver"
    assert events[("y@example.net",)]["rule"] == "default"
    assert events[("y@example.net",)]["action"] == "quarantine"
    assert process.poll() is None

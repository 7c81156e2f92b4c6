"""SIGHUP: new rules without a restart, over connections that stay open; bad files refused."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailwarden.web.auth import WebAuth
from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_smtp_serve import _wait_for_port
from tests.services.slapd import directory_section, running_slapd

pytestmark = pytest.mark.integration

RULES = '[[rules]]\nname = "{name}"\n[rules.actions]\ninfected = "{infected}"\n'


class Serve:
    def __init__(self, tmp_path: Path, workers: int, extra: str = "") -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.port = free_port()
        self.config = self.home / "mailwarden.toml"
        self.head = f"[smtp]\nport = {self.port}\nworkers = {workers}\n{extra}"
        self.write(RULES.format(name="strict", infected="reject"))
        self.log = tmp_path / "serve.log"
        out = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MAILWARDEN_HOME": str(self.home)},
        )
        try:
            _wait_for_port(self.port, self.process, self.log)
            self.wait_for_log("ready", count=workers)
        except BaseException:
            # A gateway that never came up must not outlive its test (nor hide why it failed).
            self.process.kill()
            self.process.wait(timeout=30)
            raise

    def write(self, rules: str) -> None:
        self.config.write_text(self.head + rules)

    def wait_for_log(self, text: str, count: int = 1, limit: float = 30.0) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            log = self.log.read_text()
            if log.count(text) >= count:
                return log
            assert self.process.poll() is None, log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} not in the log: {self.log.read_text()}")

    def reload(self, expect: str, count: int = 1) -> str:
        before = self.log.read_text().count(expect)
        self.process.send_signal(signal.SIGHUP)
        return self.wait_for_log(expect, count=before + count)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        assert self.process.returncode == 0, self.log.read_text()


@pytest.fixture
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Serve]:
    server = Serve(tmp_path, getattr(request, "param", 1))
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _send_eicar(client: smtplib.SMTP) -> int:
    try:
        client.sendmail("a@example.org", ["b@example.net"], make_message(attachment=EICAR))
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code
    return 250


def test_sighup_swaps_rules_under_an_open_connection(serve: Serve) -> None:
    with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
        client.ehlo("client.example.org")
        assert _send_eicar(client) == 550
        serve.write(RULES.format(name="lenient", infected="quarantine"))
        serve.reload("reloaded rules: lenient")
        # Same connection, next transaction: the new rule applies.
        assert _send_eicar(client) == 250
    assert len(list((serve.home / "quarantine" / "held").iterdir())) == 1


def test_a_bad_file_is_refused_naming_key_and_line_and_the_old_rules_stay(serve: Serve) -> None:
    serve.write('[[rules]]\nname = "broken"\nrecipients = ["re:("]\n')
    log = serve.reload("reload refused, running config kept")
    assert "rules[0].recipients[0]" in log and "mailwarden.toml:6" in log
    with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
        assert _send_eicar(client) == 550


def test_sections_that_need_a_restart_are_named(serve: Serve) -> None:
    serve.head += "[events]\nretention_days = 9\n"
    serve.write(RULES.format(name="strict", infected="reject"))
    log = serve.reload("changed, applied at the next start: events")
    assert "reloaded rules: strict" in log


@pytest.mark.parametrize("serve", [2], indirect=True)
def test_every_worker_reloads(serve: Serve) -> None:
    serve.write(RULES.format(name="lenient", infected="quarantine"))
    serve.reload("reloaded rules: lenient", count=2)
    # Several connections, spread over both workers by the kernel: all see the new rule.
    for _ in range(6):
        with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
            assert _send_eicar(client) == 250


@pytest.mark.parametrize("workers", [1, 2])
def test_turning_the_directory_off_deletes_its_cache_at_the_reload(
    tmp_path: Path, workers: int
) -> None:
    with running_slapd() as slapd:
        serve = Serve(tmp_path, workers, directory_section(slapd))
        try:
            cache = serve.home / "directory-cache"
            assert (cache / "data.mdb").is_file()
            serve.head = serve.head.replace("enabled = true", "enabled = false")
            serve.write(RULES.format(name="strict", infected="reject"))
            log = serve.reload("reloaded rules: strict", count=workers)
            # Applied now, so not among the sections left for the next start.
            assert "applied at the next start: directory" not in log
            deadline = time.monotonic() + 30
            while cache.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            # Deleted now, by the running gateway: not at its next start.
            assert not cache.exists(), serve.log.read_text()
            serve.wait_for_log("directory integration turned off: deleted its cache")
            assert serve.process.poll() is None
            with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
                assert _send_eicar(client) == 550
        finally:
            serve.stop()
        assert not cache.exists()


def test_a_rules_edit_through_the_web_reaches_every_worker(tmp_path: Path) -> None:
    # The worker that serves the edit asks the supervisor, which has every worker reload (as
    # at SIGHUP): the next connections, whichever worker the kernel gives them, see the rule.
    web_port = free_port()
    serve = Serve(tmp_path, 2, f"[web]\nenabled = true\nport = {web_port}\ntls = false\n")
    token = WebAuth(
        serve.home / "web", session_seconds=60, custom_roles={}, login_attempts=5
    ).create_token("editor", ["Administrator"])
    try:
        lenient = [{"name": "lenient", "actions": {"infected": "quarantine"}}]
        answer = httpx.put(
            f"http://127.0.0.1:{web_port}/api/rules",
            json={"rules": lenient},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert [rule["name"] for rule in answer.json()["rules"]] == ["lenient"]
        log = serve.wait_for_log("reloaded rules: lenient", count=2)
        assert "Traceback" not in log, log
        for _ in range(6):
            with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
                assert _send_eicar(client) == 250
        assert serve.process.poll() is None
    finally:
        serve.stop()

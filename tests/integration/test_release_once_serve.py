"""`mailwarden serve` with two worker processes: releases of one message over the REST API at
the same moment, on separate connections (the kernel spreads them over both workers), deliver
it once; the other callers get 409 or 404. For a held message and for the spam quarantine."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_smtp_serve import _wait_for_port
from tests.web.conftest import GTUBE

pytestmark = pytest.mark.integration

CALLERS = 8
PASSWORD = "correct horse battery"


class Serve:
    def __init__(self, tmp_path: Path, workers: int = 2) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.smtp_port, self.web_port = free_port(), free_port()
        (self.home / "mailwarden.toml").write_text(
            f"[smtp]\nport = {self.smtp_port}\nworkers = {workers}\n"
            f"[web]\nenabled = true\nport = {self.web_port}\ntls = false\n"
            '[antispam]\nquarantine = ["spam"]\nauthentication = false\n'
            '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
            'spam = "discard"\n'
        )
        env = {**os.environ, "MAILWARDEN_HOME": str(self.home)}
        # The web's secret and accounts made before the workers start, so both sign and check
        # sessions with the same key.
        subprocess.run(
            [sys.executable, "-m", "mailwarden", "web", "password", "--password", PASSWORD],
            env=env,
            check=True,
            capture_output=True,
        )
        self.log = tmp_path / "serve.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailwarden", "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        try:
            _wait_for_port(self.web_port, self.process, self.log)
            _wait_for_port(self.smtp_port, self.process, self.log)
            deadline = time.monotonic() + 30
            while self.log.read_text().count("ready") < workers and time.monotonic() < deadline:
                time.sleep(0.05)
        except BaseException:
            self.process.kill()
            self.process.wait(timeout=30)
            raise

    def send(self, message: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], message)

    def delivered(self) -> list[Path]:
        new = self.home / "maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        assert self.process.returncode == 0, self.log.read_text()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tmp_path)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _post_at_once(serve: Serve, cookies: httpx.Cookies, csrf: str, path: str) -> list[int]:
    """``CALLERS`` clients, each on its own connection, POST ``path`` together."""
    clients = [
        httpx.Client(base_url=f"http://127.0.0.1:{serve.web_port}", cookies=cookies, timeout=60)
        for _ in range(CALLERS)
    ]
    start = threading.Barrier(CALLERS)
    codes: list[int] = []

    def post(client: httpx.Client) -> None:
        start.wait()
        codes.append(client.post(path, headers={"x-csrf-token": csrf}).status_code)

    threads = [threading.Thread(target=post, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    for client in clients:
        client.close()
    return sorted(codes)


def test_releases_at_once_across_two_workers_deliver_once(serve: Serve) -> None:
    serve.send(make_message(subject="held", attachment=EICAR, filename="invoice.com"))
    serve.send(make_message(subject="spam", body=GTUBE.decode() + "\r\n"))
    with httpx.Client(base_url=f"http://127.0.0.1:{serve.web_port}", timeout=30) as admin:
        login = admin.post("/api/login", json={"name": "admin", "password": PASSWORD})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf"]
        [held] = admin.get("/api/quarantine").json()
        [spam] = admin.get("/api/quarantines/spam").json()
        cookies = admin.cookies

        codes = _post_at_once(serve, cookies, csrf, f"/api/quarantine/{held['id']}/release")
        assert codes.count(200) == 1 and set(codes) <= {200, 404, 409}, codes
        assert len(serve.delivered()) == 1

        codes = _post_at_once(serve, cookies, csrf, f"/api/quarantines/spam/{spam['id']}/release")
        assert codes.count(200) == 1 and set(codes) <= {200, 404, 409}, codes
        time.sleep(0.3)
        delivered = serve.delivered()
        assert len(delivered) == 2
        assert sum(GTUBE in p.read_bytes() for p in delivered) == 1
        assert admin.get("/api/quarantine").json() == []
        assert admin.get("/api/quarantines/spam").json() == []

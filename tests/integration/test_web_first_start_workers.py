"""The first start of `mailwarden serve` with two workers and the web interface on: the session
secret, the first administrator and the self-signed certificate are made once, before the
workers start, so both workers sign and check sessions with the same key."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.test_gateway_relay import Serve, wait_until

pytestmark = pytest.mark.integration


def test_first_start_with_two_workers_makes_one_secret_and_one_admin(tmp_path: Path) -> None:
    web_port = free_port()
    serve = Serve(
        tmp_path / "home", free_port(), f"workers = 2\n[web]\nenabled = true\nport = {web_port}\n"
    )
    serve.start(wait_port=web_port)
    try:
        wait_until(lambda: serve.log.read_text().count("ready") >= 2, 30, "both workers")
        text = serve.log.read_text()
        # Announced once, by the parent; no worker failed and was replaced.
        assert text.count("first start: the admin password is in") == 1, text
        assert "Traceback" not in text and "exited" not in text, text
        password = (serve.home / "web" / "initial-admin-password").read_text().strip()
        base = f"https://127.0.0.1:{web_port}"
        with httpx.Client(base_url=base, verify=False, timeout=10) as client:
            answer = client.post("/api/login", json={"name": "admin", "password": password})
            assert answer.status_code == 200, answer.text
            cookies = dict(client.cookies)
        # New connections land on either worker: each accepts the session the other signed.
        for _ in range(12):
            with httpx.Client(base_url=base, verify=False, timeout=10, cookies=cookies) as c:
                me = c.get("/api/me")
                assert me.status_code == 200, me.text
                assert me.json()["name"] == "admin"
    finally:
        serve.stop()

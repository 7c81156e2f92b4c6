"""A gateway with its web application, real stores under a temp home, and users per role."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from starlette.testclient import TestClient

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.web.app import WebState, create_app
from mailwarden.web.permissions import BUILTIN_ROLES
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, free_port, make_message
from tests.services.sandboxd import ReferenceServer, running_reference_server

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

PASSWORD = "correct horse battery"


class Web:
    def __init__(self, home: Path, extra_config: str = "", antispam: str = "") -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.config_path = home / "mailwarden.toml"
        self.config_path.write_text(
            "# hand-written comment that an API edit must keep\n"
            "[web]\nenabled = true\n" + extra_config + "\n"
            # The spam quarantine keeps GTUBE mail (the rule rejects it): a plugin quarantine
            # for the web's plugin-quarantine routes.
            '[antispam]\nquarantine = ["spam"]\n' + antispam + "\n"
            '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
        )
        plugins = build_plugin_manager()
        self.gateway = Gateway(
            load_config(self.config_path, plugins.config_schemas()), plugins=plugins
        )
        # Started once, as `mailwarden serve` does before it serves pages: the directory and
        # the detectors stay open for every request of the test.
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.gateway.start())
        self.state = WebState(self.gateway, secure_cookies=True)
        self.app = create_app(self.state)
        for role in BUILTIN_ROLES:
            self.state.auth.set_password(role.lower().replace(" ", "-"), PASSWORD, roles=[role])

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="https://testserver")

    def login(self, name: str, password: str = PASSWORD) -> tuple[TestClient, str]:
        """A client holding a session of ``name`` and its CSRF token."""
        client = self.client()
        answer = client.post("/api/login", json={"name": name, "password": password})
        assert answer.status_code == 200, answer.text
        return client, answer.json()["csrf"]

    def login_form_token(self, client: TestClient) -> str:
        """The anti-CSRF token of the login form ``client`` was shown (its cookie kept)."""
        page = client.get("/login")
        found = re.search(r'id="login-csrf" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def hold(self, subject: str = "held one", filename: str = "eicar.com") -> str:
        """Process an infected message (the rule quarantines it); its held id."""
        raw = make_message(subject=subject, attachment=EICAR, filename=filename)
        envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])

        self.loop.run_until_complete(self.gateway.process(raw, envelope, ingress="smtp"))
        return self.gateway.quarantine.held()[0].id

    def spam(self, subject: str = "spam one") -> str:
        """Process a GTUBE message (the spam quarantine keeps it); its spam quarantine id."""
        raw = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
        envelope = Envelope(mail_from="spammer@example.org", rcpt_to=["bob@example.net"])
        self.loop.run_until_complete(self.gateway.process(raw, envelope, ingress="smtp"))
        _, spam = self.gateway.plugin_quarantines()["spam"]
        return next(e.id for e in spam.search(subject))

    def backup(self, subject: str = "kept one", filename: str = "eicar.com") -> str:
        """Keep a copy of an infected message in the core backup store; its backup id."""
        raw = make_message(subject=subject, attachment=EICAR, filename=filename)
        entry = self.gateway.stores.backup.put(
            raw,
            reason="infected",
            mail_from="alice@example.org",
            rcpt_to=["bob@example.net"],
            subject=subject,
        )
        return entry.id

    def close(self) -> None:
        self.loop.run_until_complete(self.gateway.stop())
        self.loop.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    made = Web(tmp_path / "home")
    try:
        yield made
    finally:
        made.close()


class _NextHop:
    """aiosmtpd handler: records every message with its envelope."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 Ok: stored"


@pytest.fixture
def next_hop() -> Iterator[_NextHop]:
    handler = _NextHop()
    handler.port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
def held_reference() -> Iterator[ReferenceServer]:
    """An analysis server that gives no verdict: the sandbox holds what it sends there."""
    with running_reference_server(hold=True) as server:
        yield server

"""What a message says reaches only roles with ``messages.content.view`` (issue 26).

Every route the application mounts (enumerated from the app, so a new route is walked without
editing this file) is called by every built-in role, a custom role with every permission but
the content one, and no one, with messages in every store (held, spam quarantine, sandbox
quarantine, backup) that carry a unique marker in their text and in a header past the
envelope. No marker may reach a role without the permission.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from mailwarden.web.permissions import BUILTIN_ROLES, CONTENT, PERMISSIONS
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, make_message
from tests.services.sandboxd import ReferenceServer
from tests.web.conftest import GTUBE, PASSWORD, _NextHop
from tests.web.test_web_plugin_quarantines import Served, wait_until

NO_CONTENT = "Everything but content"
EXTRA = (
    '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
    f'[web.roles]\n"{NO_CONTENT}" = {sorted(set(PERMISSIONS) - {CONTENT})!r}\n'.replace("'", '"')
)


class Walk:
    """The site with messages carrying ``marker`` and a way to make more of each kind."""

    def __init__(self, served: Served, reference: ReferenceServer) -> None:
        self.served = served
        self.reference = reference
        self.marker = "MARK" + uuid.uuid4().hex
        self.header_marker = "HDR" + uuid.uuid4().hex
        served.state.auth.set_password("no-content", PASSWORD, roles=[NO_CONTENT])

    def _raw(self, body: str, **kwargs: Any) -> bytes:
        text = f"{body}\r\nThe secret is {self.marker}.\r\n"
        message = make_message(subject="walked", body=text, **kwargs)
        return f"X-Private-Note: {self.header_marker}\r\n".encode() + message

    def held(self) -> str:
        quarantine = self.served.gateway.quarantine
        before = {h.id for h in quarantine.held()}
        self.served.runner.process(
            self._raw("Invoice attached.", attachment=EICAR, filename="eicar.com"),
            Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"]),
        )
        [new] = [h.id for h in quarantine.held() if h.id not in before]
        return new

    def entry(self, quarantine: str) -> str:
        _, store = self.served.gateway.plugin_quarantines()[quarantine]
        before = {e.id for e in store.search("", limit=1000)}
        envelope = Envelope(mail_from="mallory@example.org", rcpt_to=["bob@example.net"])
        if quarantine == "spam":
            self.served.runner.process(self._raw(GTUBE.decode()), envelope)
        else:
            tasks = len(self.reference.tasks())
            raw = self._raw("Report attached.", attachment=b"quarterly", filename="report.pdf")
            self.served.runner.process(raw, envelope)
            wait_until(lambda: len(self.reference.tasks()) > tasks)
        [new] = [e.id for e in store.search("", limit=1000) if e.id not in before]
        return new

    def backup(self) -> str:
        entry = self.served.gateway.stores.backup.put(
            self._raw("Kept."),
            reason="infected",
            mail_from="alice@example.org",
            rcpt_to=["bob@example.net"],
            subject="walked",
        )
        return str(entry.id)

    def leaked(self, content: bytes) -> bool:
        return self.marker.encode() in content or self.header_marker.encode() in content


@pytest.fixture
def walk(tmp_path: Path, next_hop: _NextHop, held_reference: ReferenceServer) -> Iterator[Walk]:
    served = Served(tmp_path / "home", next_hop, held_reference.url, extra=EXTRA)
    try:
        yield Walk(served, held_reference)
    finally:
        served.close()


def _fill(
    walk: Walk, path: str, quarantine: str, fresh: Callable[[str, Callable[[], str]], str]
) -> str:
    """``path`` with every parameter filled; a parameter the walk does not know fails the test
    (teach it here, so the new route is walked too)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        fillers: dict[str, Callable[[], str]] = {
            "held_id": lambda: fresh("held", walk.held),
            "quarantine": lambda: quarantine,
            # /my/quarantine/{entry_id} names an entry of the spam quarantine.
            "entry_id": lambda: fresh(
                quarantine or "spam", lambda: walk.entry(quarantine or "spam")
            ),
            "backup_id": lambda: fresh("backup", walk.backup),
            "name": lambda: "app.css",
            "section": lambda: "smtp" if path.startswith(("/mta", "/api/mta")) else "events",
            "role": lambda: "Walked role",
            "token_id": lambda: "0" * 16,
            "event_id": lambda: "0" * 32,
            "token": lambda: "not.signed",
        }
        assert name in fillers, f"the content walk cannot fill {{{name}}} in {path}"
        return fillers[name]()

    return re.sub(r"\{(\w+)\}", value, path)


def _client(walk: Walk, role: str | None) -> tuple[Any, dict[str, str], frozenset[str]]:
    if role is None:
        from starlette.testclient import TestClient

        return TestClient(walk.served.app, base_url="https://testserver"), {}, frozenset()
    name = "no-content" if role == NO_CONTENT else role.lower().replace(" ", "-")
    client, headers = walk.served.login(name)
    granted = BUILTIN_ROLES.get(role, frozenset(PERMISSIONS) - {CONTENT})
    return client, headers, granted


@pytest.mark.parametrize("role", [None, *BUILTIN_ROLES, NO_CONTENT])
def test_no_message_content_reaches_a_role_without_the_permission(
    walk: Walk, role: str | None
) -> None:
    client, headers, granted = _client(walk, role)
    csrf = headers.get("x-csrf-token", "")
    routes = [r for r in walk.served.app.routes if isinstance(r, Route)]
    assert len(routes) > 60
    quarantines = sorted(walk.served.gateway.plugin_quarantines())
    assert quarantines == ["sandbox", "spam"]
    # Messages a GET shows stay; a change (release, delete) gets a message of its own.
    kept: dict[str, str] = {}
    leaks: list[str] = []
    shown: list[str] = []
    for route in routes:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if route.path == "/logout":
                continue  # ends the session the rest of the walk uses
            safe = method == "GET"

            def fresh(kind: str, make: Callable[[], str], safe: bool = safe) -> str:
                if not safe:
                    return make()
                if kind not in kept:
                    kept[kind] = make()
                return kept[kind]

            for quarantine in quarantines if "{quarantine}" in route.path else [""]:
                path = _fill(walk, route.path, quarantine, fresh)
                if method == "GET":
                    answer = client.get(path, follow_redirects=False)
                elif path.startswith("/api/"):
                    answer = client.request(
                        method, path, headers=headers, json={}, follow_redirects=False
                    )
                else:
                    answer = client.request(
                        method, path, data={"csrf": csrf}, follow_redirects=False
                    )
                if walk.leaked(answer.content):
                    (shown if CONTENT in granted else leaks).append(f"{method} {path}")
    assert leaks == [], f"message content reached {role}: {leaks}"
    if CONTENT in granted:
        # The walk does find the markers where they may be shown: it can fail.
        assert any(p.startswith("GET /api/quarantine/") for p in shown), shown
        assert any("/sandbox/" in p for p in shown) and any("/spam/" in p for p in shown), shown
        if "backup.manage" in granted:
            assert any(p.startswith("GET /api/backup/") for p in shown), shown

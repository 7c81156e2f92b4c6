"""Plugin quarantines through the REST API and the pages (``mailwarden_quarantines``, SDK 1.7).

A real gateway (its loop in a thread, as ``mailwarden serve`` runs it) relays to an aiosmtpd
next hop on 127.0.0.1; GTUBE mail reaches the spam quarantine through a real scan, and the
sandbox holds mail for a reference analysis server that never answers. Operators list, view,
release (and see the message arrive), release and learn, delete; an Auditor may look only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner
from mailwarden.web.app import WebState, create_app
from mailwarden.web.permissions import BUILTIN_ROLES
from mailwarden_antispam import AntispamPlugin
from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.services.sandboxd import ReferenceServer
from tests.web.conftest import GTUBE, PASSWORD, Web, _NextHop

HOSTILE = '<script>alert("subject")</script>'


def wait_until(predicate: Callable[[], Any], limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {limit} s")


class Served:
    """A started gateway relaying to ``next_hop``, with its web application and a user per
    built-in role (named after the role, as in tests/web/conftest.py)."""

    def __init__(self, home: Path, next_hop: _NextHop, sandbox_url: str, extra: str = "") -> None:
        sandbox = {
            "enabled": True,
            "mode": "hold",
            "backend": "http",
            "http_url": sandbox_url,
            "poll_interval": 0.2,
            "verdict_timeout": 3000.0,
        }
        config = (
            "[web]\nenabled = true\n"
            f'[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{next_hop.port}"\n'
            'tls = "none"\n'
            # No DNS: authentication checks are not what this is about.
            '[antispam]\nquarantine = ["spam"]\nauthentication = false\n'
            "[sandbox]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in sandbox.items()) + extra
        )
        home.mkdir(parents=True)
        (home / "mailwarden.toml").write_text(config)
        plugins = build_plugin_manager()
        cfg = parse_config(config, plugins.config_schemas(), source=str(home / "mailwarden.toml"))
        cfg.gateway.home = str(home)
        self.gateway = Gateway(cfg, plugins=plugins)
        self.runner = GatewayRunner(self.gateway).start()
        self.runner._call(self.gateway.delivery.start())
        self.state = WebState(self.gateway, secure_cookies=True)
        self.app = create_app(self.state)
        for role in BUILTIN_ROLES:
            self.state.auth.set_password(role.lower().replace(" ", "-"), PASSWORD, roles=[role])

    def login(self, name: str) -> tuple[TestClient, dict[str, str]]:
        client = TestClient(self.app, base_url="https://testserver")
        answer = client.post("/api/login", json={"name": name, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return client, {"x-csrf-token": answer.json()["csrf"]}

    def spam(self, subject: str, recipients: list[str]) -> None:
        raw = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
        outcome = self.runner.process(
            raw, Envelope(mail_from="spammer@example.org", rcpt_to=recipients)
        )
        assert outcome.reply_code >= 500  # the rule rejects spam; the quarantine keeps a copy

    @property
    def antispam(self) -> AntispamPlugin:
        plugin: AntispamPlugin = self.gateway.plugins.plugins["antispam"].obj
        return plugin

    def close(self) -> None:
        self.runner._call(self.gateway.delivery.stop(grace=5))
        self.runner.stop()


@pytest.fixture
def served(tmp_path: Path, next_hop: _NextHop, held_reference: ReferenceServer) -> Iterator[Served]:
    made = Served(tmp_path / "home", next_hop, held_reference.url)
    try:
        yield made
    finally:
        made.close()


def _acts(served: Served) -> list[str]:
    return [a.action for a in served.gateway.stores.app_log.search(actor="operator")]


def test_spam_quarantine_list_view_release_learn_and_delete(
    served: Served, next_hop: _NextHop
) -> None:
    served.spam(HOSTILE, ["bob@example.net", "carol@example.net"])
    operator, csrf = served.login("operator")
    # The overview links the spam quarantine's own page now.
    stores = {q["name"]: q for q in operator.get("/api/quarantines").json()}
    assert stores["spam quarantine"]["in_web"] is True
    assert stores["spam quarantine"]["manage"] == "/quarantines/spam"
    assert stores["sandbox quarantine"]["manage"] == "/quarantines/sandbox"

    [entry] = operator.get("/api/quarantines/spam").json()
    assert (entry["sender"], entry["recipients"]) == (
        "spammer@example.org",
        ["bob@example.net", "carol@example.net"],
    )
    assert (entry["reason"], entry["score"], entry["subject"]) == ("spam", 1000.0, HOSTILE)
    assert operator.get("/api/quarantines/spam", params={"q": "nobody-matches"}).json() == []
    view = operator.get(f"/api/quarantines/spam/{entry['id']}").json()
    assert ["Subject", HOSTILE] in view["headers"] and GTUBE.decode() in view["text"]
    # Shown as text: the subject's markup is escaped on the list and the message page.
    for page in ("/quarantines/spam", f"/quarantines/spam/{entry['id']}"):
        html = operator.get(page).text
        assert "&lt;script&gt;" in html and HOSTILE not in html
    assert 'id="release-as-ham"' in operator.get(f"/quarantines/spam/{entry['id']}").text

    # An Auditor may look, but not release, delete or download.
    auditor, auditor_csrf = served.login("auditor")
    assert auditor.get("/api/quarantines/spam").status_code == 200
    base = f"/api/quarantines/spam/{entry['id']}"
    assert auditor.post(f"{base}/release", headers=auditor_csrf).status_code == 403
    assert auditor.delete(base, headers=auditor_csrf).status_code == 403
    assert auditor.get(f"{base}/raw").status_code == 403
    # No CSRF token, no release.
    assert operator.post(f"{base}/release").status_code == 403
    assert next_hop.received == []

    raw = operator.get(f"{base}/raw")
    assert raw.status_code == 200 and GTUBE in raw.content
    assert raw.headers["content-disposition"].startswith("attachment")
    released = operator.post(f"{base}/release", headers=csrf)
    assert released.status_code == 200, released.text
    assert released.json()["result"].startswith("queued as ")
    # Delivered through the gateway's relay queue, to the original envelope.
    sender, recipients, data = wait_until(lambda: next_hop.received)[0]
    assert (sender, recipients) == ("spammer@example.org", ["bob@example.net", "carol@example.net"])
    assert GTUBE in data
    assert operator.get(base).status_code == 404
    assert operator.post(f"{base}/release", headers=csrf).status_code == 404

    # Release and learn as ham: Bayes counts one more ham, and the message is delivered.
    bayes = served.antispam.bayes
    assert bayes is not None
    spam_before, ham_before = bayes.counts()
    served.spam("not spam after all", ["dave@example.net"])
    [second] = operator.get("/api/quarantines/spam", params={"q": "after all"}).json()
    done = operator.post(f"/api/quarantines/spam/{second['id']}/release-as-ham", headers=csrf)
    assert done.status_code == 200, done.text
    assert done.json()["learned"] == "learned as ham"
    assert bayes.counts() == (spam_before, ham_before + 1)
    wait_until(lambda: len(next_hop.received) == 2)
    assert next_hop.received[1][1] == ["dave@example.net"]

    # Learn as spam and delete: one more spam, gone, never delivered.
    served.spam("really spam", ["erin@example.net"])
    [third] = operator.get("/api/quarantines/spam", params={"q": "really"}).json()
    gone = operator.post(f"/api/quarantines/spam/{third['id']}/delete-as-spam", headers=csrf)
    assert gone.status_code == 200 and bayes.counts() == (spam_before + 1, ham_before + 1)
    # Plain delete, from the page form this time.
    served.spam("just delete", ["frank@example.net"])
    [fourth] = operator.get("/api/quarantines/spam", params={"q": "just delete"}).json()
    form = operator.post(
        f"/quarantines/spam/{fourth['id']}/delete",
        data={"csrf": csrf["x-csrf-token"]},
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"] == "/quarantines/spam"
    assert operator.get("/api/quarantines/spam").json() == []
    time.sleep(0.3)
    assert len(next_hop.received) == 2
    # Every change is in the application event log, with who did it.
    assert _acts(served)[:4] == [
        "quarantine.delete",
        "quarantine.delete-as-spam",
        "quarantine.release-as-ham",
        "quarantine.release",
    ]


def test_ids_and_names_that_are_not_ours_reach_no_plugin(served: Served) -> None:
    operator, csrf = served.login("operator")
    for path in (
        "/api/quarantines/spam/..%2F..%2Fmailwarden.toml",
        "/api/quarantines/spam/a.b",
        "/api/quarantines/spam/0123456789abcdef01234567",
        "/api/quarantines/nosuch/abc",
        "/api/quarantines/..%2Fsandbox",
        "/quarantines/spam/%3Cscript%3E",
    ):
        answer = operator.get(path)
        assert answer.status_code == 404, path
        assert "<script>" not in answer.text
    assert operator.post("/api/quarantines/spam/abc/release", headers=csrf).status_code == 404
    # The sandbox has no classifier: learning there is refused, nothing happens.
    served.runner.process(
        make_message(subject="held", attachment=b"attached"),
        Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"]),
    )
    [held] = operator.get("/api/quarantines/sandbox").json()
    refused = operator.post(f"/api/quarantines/sandbox/{held['id']}/release-as-ham", headers=csrf)
    assert refused.status_code == 409 and "cannot learn" in refused.json()["error"]
    assert operator.get(f"/api/quarantines/sandbox/{held['id']}").status_code == 200


def test_sandbox_quarantine_list_view_release_and_delete(
    served: Served, next_hop: _NextHop, held_reference: ReferenceServer
) -> None:
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    first = served.runner.process(
        make_message(subject="wait for it", attachment=b"report", filename="report.pdf"),
        envelope,
    )
    assert "held for analysis" in first.reply_text
    served.runner.process(make_message(subject="drop it", attachment=b"other"), envelope)
    wait_until(lambda: len(held_reference.tasks()) == 2)
    operator, csrf = served.login("operator")
    entries = operator.get("/api/quarantines/sandbox").json()
    assert [e["subject"] for e in entries] == ["drop it", "wait for it"]  # newest first
    waiting = entries[1]
    assert waiting["reason"] == "waiting" and waiting["recipients"] == ["bob@example.net"]
    assert waiting["details"]["rule"] == "default"
    view = operator.get(f"/api/quarantines/sandbox/{waiting['id']}").json()
    assert [a["name"] for a in view["attachments"]] == ["report.pdf"]
    page = operator.get(f"/quarantines/sandbox/{waiting['id']}").text
    assert 'id="release"' in page and 'id="release-as-ham"' not in page

    auditor, auditor_csrf = served.login("auditor")
    assert [e["id"] for e in auditor.get("/api/quarantines/sandbox").json()] == [
        e["id"] for e in entries
    ]
    base = f"/api/quarantines/sandbox/{waiting['id']}"
    assert auditor.post(f"{base}/release", headers=auditor_csrf).status_code == 403

    # Released without the verdict: back through the pipeline, then relayed.
    released = operator.post(f"{base}/release", headers=csrf)
    assert released.status_code == 200, released.text
    assert released.json()["result"].startswith("released: 250")
    sender, recipients, data = wait_until(lambda: next_hop.received)[0]
    assert (sender, recipients) == ("alice@example.org", ["bob@example.net"])
    assert b"Subject: wait for it" in data and b"released by an admin" in data
    assert operator.get(base).status_code == 404

    dropped = entries[0]["id"]
    assert operator.delete(f"/api/quarantines/sandbox/{dropped}", headers=csrf).status_code == 200
    assert operator.get("/api/quarantines/sandbox").json() == []
    time.sleep(0.5)
    assert len(next_hop.received) == 1
    assert _acts(served)[:2] == ["quarantine.delete", "quarantine.release"]


def test_release_goes_to_release_host_when_configured(tmp_path: Path, next_hop: _NextHop) -> None:
    # The existing [antispam] release_host/release_port: straight to the MTA's re-injection
    # port over SMTP, not through the gateway's delivery (here a Maildir).
    web = Web(
        tmp_path / "home",
        antispam=f'release_host = "127.0.0.1"\nrelease_port = {next_hop.port}\n',
    )
    try:
        spam_id = web.spam("to the MTA")
        client, csrf = web.login("operator")
        answer = client.post(
            f"/api/quarantines/spam/{spam_id}/release", headers={"x-csrf-token": csrf}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == f"sent to 127.0.0.1:{next_hop.port}"
        assert next_hop.received[0][1] == ["bob@example.net"]
        assert web.gateway.maildir.messages() == []
    finally:
        web.close()


def test_sandbox_release_by_two_operators_at_once_is_sent_once(
    served: Served, next_hop: _NextHop, held_reference: ReferenceServer
) -> None:
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    served.runner.process(make_message(subject="twice", attachment=b"report"), envelope)
    wait_until(lambda: held_reference.tasks())
    operators = [served.login("operator") for _ in range(2)]
    [held] = operators[0][0].get("/api/quarantines/sandbox").json()
    start = threading.Barrier(2)
    answers: list[Any] = []

    def release(client: TestClient, csrf: dict[str, str]) -> None:
        start.wait()
        answers.append(client.post(f"/api/quarantines/sandbox/{held['id']}/release", headers=csrf))

    threads = [threading.Thread(target=release, args=operator) for operator in operators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(a.status_code for a in answers)
    assert codes[0] == 200 and codes[1] in (404, 409), [a.text for a in answers]
    [loser] = [a for a in answers if a.status_code != 200]
    if loser.status_code == 409:  # asked while the first was pending, or just after it went
        assert "requested already" in loser.json()["error"] or "released" in loser.json()["error"]
    wait_until(lambda: next_hop.received)
    time.sleep(0.5)
    assert len(next_hop.received) == 1
    assert operators[0][0].get("/api/quarantines/sandbox").json() == []

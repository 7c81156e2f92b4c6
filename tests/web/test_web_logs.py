"""The application log and the authentication log, read through the web (issue 26): pages and
API, each behind its permission (``events.app.view``, ``events.auth.view``)."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.web.conftest import PASSWORD, Web


def test_the_application_log_shows_what_administrators_did(web: Web) -> None:
    admin, csrf = web.login("administrator")
    done = admin.put(
        "/api/settings/events", json={"retention_days": 3.0}, headers={"x-csrf-token": csrf}
    )
    assert done.status_code == 200, done.text
    auditor, _ = web.login("auditor")
    records = auditor.get("/api/logs/app", params={"kind": "admin"}).json()
    assert [(r["action"], r["actor"]) for r in records] == [("settings.edit", "administrator")]
    assert "retention_days" in records[0]["detail"]
    logins = auditor.get("/api/logs/app", params={"actor": "auditor", "hours": 1}).json()
    assert [r["action"] for r in logins] == ["login"]
    page = auditor.get("/logs/app", params={"kind": "admin"})
    assert page.status_code == 200 and "settings.edit" in page.text
    assert 'href="/logs/app"' in page.text
    # Day-to-day operators run the mail flow; the log of the administrators is not theirs.
    operator, _ = web.login("operator")
    assert operator.get("/api/logs/app").status_code == 403
    assert operator.get("/logs/app").status_code == 403
    assert 'href="/logs/app"' not in operator.get("/quarantine").text
    assert auditor.get("/api/logs/app", params={"hours": "soon"}).status_code == 400


def test_the_authentication_log_shows_every_attempt_with_its_address(web: Web) -> None:
    outside = TestClient(web.app, base_url="https://testserver", client=("203.0.113.7", 4000))
    for _ in range(2):
        answer = outside.post("/api/login", json={"name": "operator", "password": "guess"})
        assert answer.status_code == 401
    assert outside.post("/api/login", json={"name": "operator", "password": PASSWORD}).is_success
    for reader in ("auditor", "security-officer"):
        client, _ = web.login(reader)
        attempts = client.get("/api/logs/auth", params={"user": "operator"}).json()
        assert [(a["success"], a["client_address"]) for a in attempts] == [
            (True, "203.0.113.7"),
            (False, "203.0.113.7"),
            (False, "203.0.113.7"),
        ]
        page = client.get("/logs/auth", params={"client": "203.0.113.7"})
        assert page.status_code == 200
        assert page.text.count("203.0.113.7") >= 3 and "failed" in page.text
    operator, _ = web.login("operator")
    assert operator.get("/api/logs/auth").status_code == 403
    assert operator.get("/logs/auth").status_code == 403

"""Web acts reach the application event log and logins the auth log (issue 10's stores)."""

from __future__ import annotations

from tests.web.conftest import PASSWORD, Web


def test_logins_go_to_the_auth_log_and_acts_to_the_application_log(web: Web) -> None:
    client = web.client()
    assert client.post("/api/login", json={"name": "auditor", "password": "no"}).status_code == 401
    assert (
        client.post("/api/login", json={"name": "auditor", "password": PASSWORD}).status_code == 200
    )
    stores = web.gateway.stores
    attempts = stores.auth_log.search(user="auditor")
    assert [a.success for a in attempts] == [True, False]
    assert attempts[0].client_address == attempts[1].client_address != ""
    acts = stores.app_log.search(actor="auditor")
    assert [(a.kind, a.action) for a in acts] == [("login", "login"), ("login", "login.failed")]
    assert stores.app_log.verify() == [] and stores.auth_log.verify() == []


def test_every_quarantine_store_is_listed_with_where_it_is_managed(web: Web) -> None:
    web.hold()
    client, _ = web.login("operator")
    stores = {q["name"]: q for q in client.get("/api/quarantines").json()}
    assert stores["quarantine"]["in_web"] is True and stores["quarantine"]["messages"] == 1
    # A plugin quarantine offered through mailwarden_quarantines has its own page; one whose
    # plugin offers none here (the sandbox is off) is named with its command.
    assert stores["spam quarantine"]["owner"] == "antispam"
    assert stores["spam quarantine"]["in_web"] is True
    assert stores["spam quarantine"]["manage"] == "/quarantines/spam"
    assert stores["sandbox quarantine"]["in_web"] is False
    assert stores["sandbox quarantine"]["manage"].startswith("mailwarden sandbox")
    assert all("path" not in q for q in stores.values())
    page = client.get("/quarantine").text
    assert 'id="plugin-quarantines"' in page and 'href="/quarantines/spam"' in page
    assert "mailwarden sandbox" in page
    assert web.client().get("/api/quarantines").status_code == 401

"""CSRF, session fixation, path traversal, hostile subjects and names, login throttling."""

from __future__ import annotations

import json

import pytest

from tests.web.conftest import PASSWORD, Web


def test_a_change_without_the_csrf_token_is_refused(web: Web) -> None:
    held = web.hold()
    client, csrf = web.login("operator")
    # A form posted from another site carries the cookie but cannot know the token.
    assert client.post(f"/quarantine/{held}/release", data={}).status_code == 403
    assert client.post(f"/api/quarantine/{held}/release").status_code == 403
    assert (
        client.post(
            f"/api/quarantine/{held}/release", headers={"x-csrf-token": "0" * 32}
        ).status_code
        == 403
    )
    assert [h.id for h in web.gateway.quarantine.held()] == [held]  # still held
    done = client.post(f"/api/quarantine/{held}/release", headers={"x-csrf-token": csrf})
    assert done.status_code == 200 and web.gateway.quarantine.held() == []


def test_login_makes_a_new_session_whatever_cookie_came_before(web: Web) -> None:
    client = web.client()
    # An attacker plants a session cookie of their own before the victim logs in...
    attacker, _ = web.login("auditor")
    planted = attacker.cookies.get("mw_session")
    client.cookies.set("mw_session", planted or "")
    answer = client.post("/api/login", json={"name": "operator", "password": PASSWORD})
    fresh = answer.cookies.get("mw_session")
    # ...the login answers with a session of its own, and the planted one stays the attacker's.
    assert fresh and fresh != planted
    assert attacker.get("/api/me").json()["name"] == "auditor"
    client.cookies.set("mw_session", fresh)
    assert client.get("/api/me").json()["name"] == "operator"
    cookie_header = answer.headers["set-cookie"].lower()
    assert (
        "httponly" in cookie_header
        and "secure" in cookie_header
        and "samesite=strict" in cookie_header
    )


@pytest.mark.parametrize(
    "held_id",
    [
        "../../mailwarden.toml",
        "..%2F..%2Fmailwarden.toml",
        "%2e%2e/web/users.json",
        "new",
        "..",
        "a/b",
    ],
)
def test_path_traversal_in_downloads_reaches_nothing(web: Web, held_id: str) -> None:
    web.hold()
    client, _ = web.login("administrator")
    answer = client.get(f"/api/quarantine/{held_id}/raw")
    assert answer.status_code == 404
    assert b"[web]" not in answer.content and b"scrypt" not in answer.content


def test_html_and_script_in_a_subject_and_file_name_are_shown_as_text(web: Web) -> None:
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    held = web.hold(subject=payload)
    client, _ = web.login("operator")
    for path in ("/quarantine", f"/quarantine/{held}", "/events"):
        page = client.get(path)
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert" in page.text
        # And no script could run anyway: the pages forbid all of it.
        assert "default-src 'none'" in page.headers["content-security-policy"]
    # The API hands it back as data, with a JSON content type browsers do not render.
    api = client.get(f"/api/quarantine/{held}")
    assert api.headers["content-type"].startswith("application/json")
    assert api.json()["subject"] == payload


def test_a_hostile_attachment_name_is_text_too(web: Web) -> None:
    held = web.hold(subject="named", filename='"><svg onload=alert(1)>.com')
    client, _ = web.login("operator")
    page = client.get(f"/quarantine/{held}")
    assert "<svg onload" not in page.text and "&lt;svg onload=alert(1)&gt;" in page.text


def test_failed_logins_are_throttled_per_account_and_recorded(web: Web) -> None:
    client = web.client()
    for _ in range(5):
        assert (
            client.post("/api/login", json={"name": "operator", "password": "nope"}).status_code
            == 401
        )
    blocked = client.post("/api/login", json={"name": "operator", "password": PASSWORD})
    assert blocked.status_code == 429 and "try again" in blocked.json()["error"]
    acts = [r["act"] for r in web.state.audit.records()]
    assert acts.count("login.failed") == 5


def test_redirect_after_login_stays_on_this_site(web: Web) -> None:
    client = web.client()
    csrf = web.login_form_token(client)
    answer = client.post(
        "/login",
        data={"name": "operator", "password": PASSWORD, "next": "//evil.example/x", "csrf": csrf},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_settings_never_show_secrets(web: Web) -> None:
    client, _ = web.login("administrator")
    text = json.dumps(client.get("/api/settings").json())
    assert "scrypt$" not in text and "PRIVATE KEY" not in text

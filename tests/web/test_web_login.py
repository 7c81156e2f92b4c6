"""Logins under attack (issue 25): lockout per address, not per account; sessions that end when
the password or the roles change; no login from another site (login CSRF); an unknown name
costs the same password-hash work as a known one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.web.conftest import PASSWORD, Web


def _from(web: Web, address: str) -> TestClient:
    return TestClient(web.app, base_url="https://testserver", client=(address, 50000))


def _login(client: TestClient, name: str, password: str) -> int:
    return client.post("/api/login", json={"name": name, "password": password}).status_code


def test_wrong_passwords_from_one_address_do_not_lock_the_account_out_elsewhere(
    web: Web,
) -> None:
    attacker = _from(web, "203.0.113.9")
    for _ in range(5):
        assert _login(attacker, "administrator", "guess") == 401
    # The guessing address waits, even with the right password...
    assert _login(attacker, "administrator", PASSWORD) == 429
    assert _login(attacker, "operator", PASSWORD) == 429
    # ...while the account's owner, elsewhere, logs in.
    assert _login(_from(web, "198.51.100.20"), "administrator", PASSWORD) == 200


def test_an_ipv6_attacker_cannot_rotate_addresses_inside_its_64(web: Web) -> None:
    for host in range(1, 6):
        assert _login(_from(web, f"2001:db8:1:2::{host}"), "administrator", "guess") == 401
    assert _login(_from(web, "2001:db8:1:2::99"), "administrator", PASSWORD) == 429
    assert _login(_from(web, "2001:db8:1:3::1"), "administrator", PASSWORD) == 200


def _cli(web: Web, *args: str) -> None:
    command = [sys.executable, "-m", "mailwarden", "web", "password"]
    subprocess.run(
        [*command, "--config", str(web.config_path), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "MAILWARDEN_HOME": str(web.home)},
        timeout=120,
    )


def test_a_password_change_ends_the_sessions_of_the_account(web: Web) -> None:
    operator, _ = web.login("operator")
    other, _ = web.login("auditor")
    _cli(web, "--user", "operator", "--password", "a brand new secret")
    assert operator.get("/api/me").status_code == 401
    assert other.get("/api/me").status_code == 200  # other accounts keep theirs
    assert _login(web.client(), "operator", "a brand new secret") == 200


def test_a_demotion_ends_the_sessions_of_the_account(web: Web) -> None:
    held = web.hold()
    operator, _ = web.login("operator")
    assert operator.get(f"/api/quarantine/{held}").status_code == 200
    _cli(web, "--user", "operator", "--role", "Auditor", "--password", "a brand new secret")
    answer = operator.get(f"/api/quarantine/{held}")
    assert answer.status_code == 401 and "held one" not in answer.text
    demoted = web.client()
    answer = demoted.post("/api/login", json={"name": "operator", "password": "a brand new secret"})
    assert answer.json()["roles"] == ["Auditor"]
    assert demoted.get(f"/api/quarantine/{held}").status_code == 403


def test_a_login_form_posted_from_another_site_is_refused(web: Web) -> None:
    # The attacker's page posts the form with its own account: no token, no session.
    victim = web.client()
    answer = victim.post(
        "/login",
        data={"name": "auditor", "password": PASSWORD},
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and "mw_session" not in answer.headers.get("set-cookie", "")
    assert victim.get("/api/me").status_code == 401
    # A token taken from the form by the attacker does not help either: the browser says
    # where the post comes from, and the victim's browser holds no nonce of the attacker's.
    attacker = web.client()
    token = web.login_form_token(attacker)
    for headers in (
        {"sec-fetch-site": "cross-site"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
    ):
        answer = attacker.post(
            "/login",
            data={"name": "auditor", "password": PASSWORD, "csrf": token},
            headers=headers,
            follow_redirects=False,
        )
        assert answer.status_code == 403, headers
    answer = victim.post(
        "/login",
        data={"name": "auditor", "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    # The form as this site shows it logs in.
    mine = web.client()
    answer = mine.post(
        "/login",
        data={"name": "auditor", "password": PASSWORD, "csrf": web.login_form_token(mine)},
        headers={"origin": "https://testserver", "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and mine.get("/api/me").json()["name"] == "auditor"


def test_the_login_api_takes_json_from_this_site_only(web: Web) -> None:
    # A form of another site can post text/plain that looks like JSON; browsers send
    # application/json across sites only after a preflight this site never allows.
    client = web.client()
    body = '{"name": "auditor", "password": "' + PASSWORD + '", "x": "="}'
    answer = client.post("/api/login", content=body, headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and client.get("/api/me").status_code == 401
    answer = client.post(
        "/api/login",
        json={"name": "auditor", "password": PASSWORD},
        headers={"origin": "https://evil.example"},
    )
    assert answer.status_code == 403 and client.get("/api/me").status_code == 401
    assert _login(client, "auditor", PASSWORD) == 200


def test_an_unknown_name_costs_the_same_password_hash_work(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counted(password: bytes, **kwargs: Any) -> bytes:
        calls.append({k: v for k, v in kwargs.items() if k != "salt"})
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    client = web.client()
    # (The first unknown name may also make the decoy hash once.)
    assert _login(client, "nobody-warm-up", "whatever it is") == 401
    calls.clear()
    assert _login(client, "operator", "not the password") == 401
    known = list(calls)
    calls.clear()
    assert _login(client, "no-such-user", "not the password") == 401
    unknown = list(calls)
    assert known and unknown == known

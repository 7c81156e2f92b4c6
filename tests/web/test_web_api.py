"""The REST API as automation and operators use it: rules, events, quarantine, directory logins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from tests.services.slapd import BASE_DN, Slapd, directory_section, running_slapd
from tests.web.conftest import PASSWORD, Web


def test_rules_edited_through_the_api_are_validated_kept_and_swapped(web: Web) -> None:
    client, csrf = web.login("security-officer")
    headers = {"x-csrf-token": csrf}
    new = [
        {"name": "lab", "recipients": ["@lab.example"], "detectors": ["-antivirus"]},
        {"name": "default", "actions": {"infected": "reject"}},
    ]
    answer = client.put("/api/rules", json={"rules": new}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert [r["name"] for r in answer.json()["rules"]] == ["lab", "default"]
    # Swapped in the running gateway, and written to the file with its comment kept.
    assert [r.name for r in web.gateway.config.rules] == ["lab", "default"]
    text = web.config_path.read_text()
    assert text.startswith("# hand-written comment") and "@lab.example" in text
    # A bad rule is refused with the key, and nothing changes.
    bad = client.put(
        "/api/rules", json={"rules": [{"name": "x", "recipients": ["re:("]}]}, headers=headers
    )
    assert bad.status_code == 422 and "rules[0].recipients[0]" in bad.json()["error"]
    assert [r.name for r in web.gateway.config.rules] == ["lab", "default"]
    assert web.config_path.read_text() == text
    assert "rules.edit" in [r["act"] for r in web.state.audit.records()]


def test_events_search_by_subject_and_status(web: Web) -> None:
    web.hold(subject="quarterly numbers")
    web.hold(subject="holiday photos")
    client, _ = web.login("auditor")
    found = client.get("/api/events", params={"subject": "quarterly", "status": "infected"})
    assert [e["subject"] for e in found.json()] == ["quarterly numbers"]
    assert client.get("/api/events", params={"since": "not a time"}).status_code == 400


def test_a_token_for_automation_gets_only_its_roles(web: Web) -> None:
    admin, csrf = web.login("administrator")
    token = admin.post(
        "/api/tokens", json={"name": "siem", "roles": ["Auditor"]}, headers={"x-csrf-token": csrf}
    ).json()["token"]
    bearer = {"authorization": f"Bearer {token}"}
    robot = web.client()
    assert robot.get("/api/events", headers=bearer).status_code == 200
    assert (
        robot.put("/api/rules", json={"rules": [{"name": "d"}]}, headers=bearer).status_code == 403
    )
    assert (
        robot.get("/api/events", headers={"authorization": "Bearer mwt_forged"}).status_code == 401
    )


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        server.ldapadd(
            f"dn: cn=Bob Jones,ou=Users,{BASE_DN}\nchangetype: modify\n"
            f"replace: userPassword\nuserPassword: {PASSWORD}\n"
        )
        yield server


def test_a_directory_operator_views_and_releases_but_cannot_change_settings(
    tmp_path: Path, slapd: Slapd
) -> None:
    web = Web(
        tmp_path / "home",
        extra_config='[web.groups]\n"group:Staff" = ["Operator"]\n' + directory_section(slapd),
    )
    try:
        _operator_walk(web, slapd)
    finally:
        web.close()


def _operator_walk(web: Web, slapd: Slapd) -> None:
    held = web.hold()
    client = web.client()
    # Bob is in Staff directly; his password is checked by a bind as him.
    assert (
        client.post(
            "/api/login", json={"name": "bob@example.test", "password": "wrong"}
        ).status_code
        == 401
    )
    answer = client.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    assert answer.json()["roles"] == ["Operator"]
    csrf = {"x-csrf-token": answer.json()["csrf"]}
    assert client.get("/api/quarantine").json()[0]["id"] == held
    assert client.get(f"/api/quarantine/{held}").status_code == 200
    assert (
        client.put("/api/rules", json={"rules": [{"name": "default"}]}, headers=csrf).status_code
        == 403
    )
    assert client.get("/api/settings").status_code == 403
    released = client.post(f"/api/quarantine/{held}/release", headers=csrf)
    assert released.status_code == 200
    delivered = web.gateway.maildir.messages()
    assert len(delivered) == 1 and b"held one" in delivered[0].read_bytes()
    # Alice is in Sales, which is in Staff: nested membership makes her an Operator too.
    # Carol is in Finance only: she logs in and may do nothing.
    for cn in ("Alice Smith", "Carol White"):
        slapd.ldapadd(
            f"dn: cn={cn},ou=Users,{BASE_DN}\nchangetype: modify\n"
            f"replace: userPassword\nuserPassword: {PASSWORD}\n"
        )
    alice = web.client().post(
        "/api/login", json={"name": "alice@example.test", "password": PASSWORD}
    )
    assert alice.json()["roles"] == ["Operator"]
    carol = web.client()
    assert (
        carol.post("/api/login", json={"name": "carol@example.test", "password": PASSWORD}).json()[
            "roles"
        ]
        == []
    )
    assert carol.get("/api/quarantine").status_code == 403


def test_password_and_token_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from mailwarden.cli import cli
    from mailwarden.web.auth import WebAuth

    monkeypatch.setenv("MAILWARDEN_HOME", str(tmp_path))
    runner = CliRunner()
    short = runner.invoke(cli, ["web", "password", "--password", "short"])
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    done = runner.invoke(cli, ["web", "password", "--password", "a long enough one"])
    assert done.exit_code == 0, done.output
    auth = WebAuth(tmp_path / "web", session_seconds=60, custom_roles={}, login_attempts=5)
    assert auth.local_login("admin", "a long enough one") is not None
    assert (tmp_path / "web" / "users.json").stat().st_mode & 0o777 == 0o600
    token = runner.invoke(cli, ["web", "token", "siem", "--role", "Auditor"]).output.strip()
    identity = auth.token_identity(token)
    assert identity is not None and identity.roles == ("Auditor",)
    assert b"mwt_" not in (tmp_path / "web" / "tokens.json").read_bytes()  # only hashes kept


def test_settings_sections_are_validated_written_and_split_by_permission(web: Web) -> None:
    officer, csrf = web.login("security-officer")
    headers = {"x-csrf-token": csrf}
    done = officer.put("/api/settings/events", json={"retention_days": 2.0}, headers=headers)
    assert done.status_code == 200 and done.json() == {"section": "events", "restart_needed": True}
    assert "retention_days = 2.0" in web.config_path.read_text()
    bad = officer.put("/api/settings/events", json={"retention_days": -1}, headers=headers)
    assert bad.status_code == 422 and "events.retention_days" in bad.json()["error"]
    # Listeners and delivery belong to mta.edit, which a security officer lacks.
    wrong_door = officer.put("/api/settings/smtp", json={"port": 2526}, headers=headers)
    assert wrong_door.status_code == 404 and "/api/mta/smtp" in wrong_door.json()["error"]
    assert officer.put("/api/mta/smtp", json={"port": 2526}, headers=headers).status_code == 403
    admin, admin_csrf = web.login("administrator")
    moved = admin.put("/api/mta/smtp", json={"port": 2526}, headers={"x-csrf-token": admin_csrf})
    assert moved.status_code == 200 and moved.json()["restart_needed"] is True
    assert [r["act"] for r in web.state.audit.records()].count("settings.edit") == 2


def _directory_web(tmp_path: Path, slapd: Slapd, web_lines: str) -> Web:
    return Web(
        tmp_path / "home",
        extra_config=web_lines
        + '[web.groups]\n"group:Staff" = ["Operator"]\n'
        + directory_section(slapd),
    )


def test_auto_bind_reads_the_root_dse_and_uses_a_simple_bind_on_openldap(
    tmp_path: Path, slapd: Slapd
) -> None:
    from mailwarden.directory.login import server_offers_ntlm

    web = _directory_web(tmp_path, slapd, 'login_bind = "auto"\nntlm_domain = "EXAMPLE"\n')
    try:
        # slapd with Cyrus SASL may list a SASL "NTLM" mechanism in its root DSE, but never
        # the Sicily NTLM bind of Active Directory that ldap3 speaks: auto sees no NTLM.
        dse = ldap3.Server(slapd.url, get_info=ldap3.DSA)
        ldap3.Connection(dse).open()
        assert dse.info is not None and dse.info.supported_sasl_mechanisms is not None
        assert server_offers_ntlm(web.gateway.config.directory) is False
        client = web.client()
        answer = client.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        assert answer.json()["roles"] == ["Operator"]
        wrong = web.client().post(
            "/api/login", json={"name": "bob@example.test", "password": "not his"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "wrong name or password"
    finally:
        web.close()


def test_forcing_ntlm_against_a_server_without_it_is_a_clear_login_failure(
    tmp_path: Path, slapd: Slapd
) -> None:
    web = _directory_web(tmp_path, slapd, 'login_bind = "ntlm"\nntlm_domain = "EXAMPLE"\n')
    try:
        client = web.client()
        answer = client.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
        assert answer.status_code == 401, answer.text
        error = answer.json()["error"]
        assert "does not offer NTLM" in error or "refused the NTLM bind" in error, error
        assert client.get("/api/me").status_code == 401
        # The login page says the same, as a page, not an error 500.
        browser = web.client()
        page = browser.post(
            "/login",
            data={
                "name": "bob@example.test",
                "password": PASSWORD,
                "csrf": web.login_form_token(browser),
            },
        )
        assert page.status_code == 401 and "NTLM" in page.text
        failed = [r for r in web.state.audit.records() if r["act"] == "login.failed"]
        assert failed and "NTLM" in failed[0]["problem"]
    finally:
        web.close()
    # Without a domain there is no NTLM user name to bind as: said so, too.
    web = _directory_web(tmp_path / "2", slapd, 'login_bind = "ntlm"\n')
    try:
        answer = web.client().post(
            "/api/login", json={"name": "bob@example.test", "password": PASSWORD}
        )
        assert answer.status_code == 401 and "ntlm_domain" in answer.json()["error"]
    finally:
        web.close()


def test_a_new_group_mapping_ends_the_directory_users_sessions(
    tmp_path: Path, slapd: Slapd
) -> None:
    web = _directory_web(tmp_path, slapd, "")
    try:
        held = web.hold()
        bob = web.client()
        answer = bob.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
        assert answer.json()["roles"] == ["Operator"]
        assert bob.get(f"/api/quarantine/{held}").status_code == 200
        # Staff is demoted to Auditor: Bob's Operator session does not outlive the change.
        admin, csrf = web.login("administrator")
        demoted = admin.put(
            "/api/users/groups",
            json={"group:Staff": ["Auditor"]},
            headers={"x-csrf-token": csrf},
        )
        assert demoted.status_code == 200, demoted.text
        assert bob.get(f"/api/quarantine/{held}").status_code == 401
        again = bob.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
        assert again.json()["roles"] == ["Auditor"]
        assert bob.get(f"/api/quarantine/{held}").status_code == 403
        assert admin.get("/api/me").status_code == 200  # local sessions are not touched
    finally:
        web.close()


def test_a_directory_user_taken_out_of_the_group_loses_the_session(
    tmp_path: Path, slapd: Slapd
) -> None:
    web = _directory_web(tmp_path, slapd, "")
    member = f"member: cn=Bob Jones,ou=Users,{BASE_DN}\n"
    staff = f"dn: cn=Staff,ou=Groups,{BASE_DN}\nchangetype: modify\n"
    try:
        held = web.hold()
        bob = web.client()
        answer = bob.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
        assert answer.json()["roles"] == ["Operator"]
        # Asked again at every request here (every 5 minutes by default).
        web.state.directory_recheck = 0.0
        assert bob.get(f"/api/quarantine/{held}").status_code == 200
        slapd.ldapadd(staff + "delete: member\n" + member)
        try:
            assert bob.get(f"/api/quarantine/{held}").status_code == 401
            again = bob.post("/api/login", json={"name": "bob@example.test", "password": PASSWORD})
            assert again.json()["roles"] == []
        finally:
            slapd.ldapadd(staff + "add: member\n" + member)
    finally:
        web.close()

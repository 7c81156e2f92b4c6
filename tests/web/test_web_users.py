"""Users and roles: custom roles created, changed and deleted through the validated config
path (built-in ones read-only), group mappings, tokens listed with scopes and revoked; every
change in the application event log."""

from __future__ import annotations

from tests.web.conftest import PASSWORD, Web


def test_a_custom_role_is_created_used_changed_and_deleted(web: Web) -> None:
    admin, csrf = web.login("administrator")
    headers = {"x-csrf-token": csrf}
    made = admin.put(
        "/api/roles/Mail desk",
        json={"permissions": ["queues.view", "reports.view"]},
        headers=headers,
    )
    assert made.status_code == 200, made.text
    roles = {r["name"]: r for r in admin.get("/api/roles").json()}
    assert roles["Mail desk"] == {
        "name": "Mail desk",
        "builtin": False,
        "permissions": ["queues.view", "reports.view"],
    }
    assert roles["Administrator"]["builtin"] is True
    # Written to the config file through the validated path, comments kept.
    text = web.config_path.read_text()
    assert text.startswith("# hand-written comment") and "Mail desk" in text
    # In force at once: an account with the role gets exactly its permissions.
    web.state.auth.set_password("desk", PASSWORD, roles=["Mail desk"])
    desk, _ = web.login("desk")
    assert desk.get("/api/quarantine").status_code == 200
    assert desk.get("/api/events").status_code == 403
    changed = admin.put(
        "/api/roles/Mail desk", json={"permissions": ["events.messages.view"]}, headers=headers
    )
    assert changed.status_code == 200
    assert desk.get("/api/events").status_code == 200
    assert desk.get("/api/quarantine").status_code == 403
    assert admin.delete("/api/roles/Mail desk", headers=headers).status_code == 200
    assert desk.get("/api/events").status_code == 403
    assert "Mail desk" not in web.config_path.read_text()
    assert admin.delete("/api/roles/Mail desk", headers=headers).status_code == 404
    acts = [a.action for a in web.gateway.stores.app_log.search(actor="administrator")]
    assert {"role.create", "role.edit", "role.delete"} <= set(acts)


def test_roles_are_validated_and_built_in_ones_read_only(web: Web) -> None:
    admin, csrf = web.login("administrator")
    headers = {"x-csrf-token": csrf}
    before = web.config_path.read_text()
    unknown = admin.put(
        "/api/roles/Desk", json={"permissions": ["queues.view", "root.everything"]}, headers=headers
    )
    assert unknown.status_code == 422 and "root.everything" in unknown.json()["error"]
    builtin = admin.put("/api/roles/Operator", json={"permissions": []}, headers=headers)
    assert builtin.status_code == 403 and "built-in" in builtin.json()["error"]
    assert admin.delete("/api/roles/Auditor", headers=headers).status_code == 403
    assert (
        admin.put("/api/roles/Desk", json={"permissions": "all"}, headers=headers).status_code
        == 422
    )
    assert admin.put("/api/roles/Desk", json={}, headers=headers).status_code == 400
    assert web.config_path.read_text() == before
    # A role a directory group maps to cannot go: the config would not load.
    assert (
        admin.put(
            "/api/roles/Desk", json={"permissions": ["queues.view"]}, headers=headers
        ).status_code
        == 200
    )
    mapped = admin.put("/api/users/groups", json={"group:Staff": ["Desk"]}, headers=headers)
    assert mapped.status_code == 200 and mapped.json() == {"group:Staff": ["Desk"]}
    refused = admin.delete("/api/roles/Desk", headers=headers)
    assert refused.status_code == 422 and "Desk" in refused.json()["error"]
    bad_group = admin.put("/api/users/groups", json={"Staff": ["Desk"]}, headers=headers)
    assert bad_group.status_code == 422 and "group:NAME" in bad_group.json()["error"]
    # Only users.manage changes roles: not the security officer, not through the settings.
    officer, officer_csrf = web.login("security-officer")
    oh = {"x-csrf-token": officer_csrf}
    assert officer.put("/api/roles/Mine", json={"permissions": []}, headers=oh).status_code == 403
    sneaky = officer.put(
        "/api/settings/web",
        json={"enabled": True, "groups": {"group:Staff": ["Administrator"]}},
        headers=oh,
    )
    assert sneaky.status_code == 403 and "users.manage" in sneaky.json()["error"]
    # A settings edit of [web] keeps the roles and mappings it does not mention.
    kept = officer.put(
        "/api/settings/web", json={"enabled": True, "session_hours": 4.0}, headers=oh
    )
    assert kept.status_code == 200, kept.text
    assert admin.get("/api/users").json()["groups"] == {"group:Staff": ["Desk"]}
    assert "Desk" in {r["name"] for r in admin.get("/api/roles").json()}


def test_users_list_shows_accounts_groups_and_tokens_and_tokens_are_revoked(web: Web) -> None:
    admin, csrf = web.login("administrator")
    headers = {"x-csrf-token": csrf}
    token = admin.post(
        "/api/tokens", json={"name": "siem", "roles": ["Auditor"]}, headers=headers
    ).json()["token"]
    users = admin.get("/api/users").json()
    assert {"name": "operator", "roles": ["Operator"]} in users["local"]
    assert users["directory"]["enabled"] is False
    (listed,) = users["tokens"]
    assert listed["name"] == "siem" and listed["roles"] == ["Auditor"]
    assert "events.app.view" in listed["scopes"] and "queues.manage" not in listed["scopes"]
    assert token not in admin.get("/api/users").text and token not in admin.get("/users").text
    assert "hash" not in str(users["local"]) and "scrypt" not in admin.get("/users").text
    bearer = {"authorization": f"Bearer {token}"}
    robot = web.client()
    assert robot.get("/api/events", headers=bearer).status_code == 200
    revoked = admin.delete(f"/api/tokens/{listed['id']}", headers=headers)
    assert revoked.status_code == 200 and revoked.json()["name"] == "siem"
    assert robot.get("/api/events", headers=bearer).status_code == 401
    assert admin.get("/api/tokens").json() == []
    assert admin.delete(f"/api/tokens/{listed['id']}", headers=headers).status_code == 404
    acts = [a.action for a in web.gateway.stores.app_log.search(actor="administrator")]
    assert "token.create" in acts and "token.revoke" in acts
    # Not for anyone without users.manage.
    officer, _ = web.login("security-officer")
    assert officer.get("/api/users").status_code == 403
    assert officer.get("/users").status_code == 403


def test_the_users_page_creates_and_deletes_roles_and_revokes_tokens(web: Web) -> None:
    admin, csrf = web.login("administrator")
    web.state.auth.create_token("<b>ci</b>", ["Operator"])
    page = admin.get("/users")
    assert page.status_code == 200
    assert "&lt;b&gt;ci&lt;/b&gt;" in page.text and "<b>ci</b>" not in page.text
    for name in ("Administrator", "Security officer", "Operator", "Auditor"):
        assert name in page.text
    made = admin.post(
        "/users/roles",
        data={"csrf": csrf, "name": "Night shift", "permission": ["queues.view", "queues.manage"]},
        follow_redirects=False,
    )
    assert made.status_code == 303
    assert web.state.file_config.web.roles == {"Night shift": ["queues.manage", "queues.view"]}
    bad = admin.post("/users/roles", data={"csrf": csrf, "name": "X", "permission": ["nope.nope"]})
    assert bad.status_code == 422 and "nope.nope" in bad.text
    builtin = admin.post("/users/roles/Operator/delete", data={"csrf": csrf})
    assert builtin.status_code == 403
    gone = admin.post(
        "/users/roles/Night shift/delete", data={"csrf": csrf}, follow_redirects=False
    )
    assert gone.status_code == 303 and web.state.file_config.web.roles == {}
    (token,) = web.state.auth.tokens()
    assert admin.post(f"/users/tokens/{token['id']}/revoke", data={}).status_code == 403
    revoked = admin.post(
        f"/users/tokens/{token['id']}/revoke", data={"csrf": csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303 and web.state.auth.tokens() == []

"""Every route with every built-in role and with no session: 200/401/403 as declared."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Route

from mailwarden.web.permissions import AUTHENTICATED, BUILTIN_ROLES, PUBLIC, RouteSpec
from mailwarden.web.permissions import ROUTES as DECLARED
from mailwarden.web.routes import ROUTES as TABLE
from tests.web.conftest import Web

# Every route the application mounts, each with the permission it declares (most in
# permissions.ROUTES, a module's own in its route table).
ROUTES = tuple(route.spec for route in TABLE)


def _request(web: Web, spec: RouteSpec, method: str, client: Any, csrf: str) -> Any:
    path = spec.path.replace("{name}", "app.css").replace("{quarantine}", "spam")
    if "{entry_id}" in path:
        path = path.replace("{entry_id}", web.spam())
    path = path.replace("{section}", "smtp" if "/mta/" in path else "events")
    if "{held_id}" in path:
        path = path.replace("{held_id}", web.hold())
    if "{backup_id}" in path:
        path = path.replace("{backup_id}", web.backup())
    path = path.replace("{role}", "Walk role").replace("{token_id}", "0" * 16)
    body: dict[str, Any] = {}
    if spec.handler == "api_login":
        body = {"json": {"name": "administrator", "password": "wrong"}}
    elif spec.handler == "login_form":
        token = web.login_form_token(client)
        body = {"data": {"name": "administrator", "password": "wrong", "csrf": token}}
    elif spec.handler == "api_rules_put":
        body = {"json": {"rules": [{"name": "default"}]}}
    elif spec.handler == "api_settings_put":
        body = {"json": {"retention_days": 2.0}}
    elif spec.handler == "api_mta_put":
        body = {"json": {"max_recipients": 500}}
    elif spec.handler == "api_token_create":
        body = {"json": {"name": "ci", "roles": ["Auditor"]}}
    elif spec.handler == "api_role_put":
        body = {"json": {"permissions": ["reports.view"]}}
    elif spec.handler == "api_groups_put":
        body = {"json": {"group:Staff": ["Operator"]}}
    elif spec.handler == "role_form":
        body = {"data": {"csrf": csrf, "name": "Walk role", "permission": "reports.view"}}
    elif method == "POST" and not spec.path.startswith("/api/"):
        body = {"data": {"csrf": csrf}}
    headers = {"x-csrf-token": csrf} if csrf else {}
    return client.request(method, path, headers=headers, follow_redirects=False, **body)


def test_the_app_has_exactly_the_declared_routes(web: Web) -> None:
    mounted = {
        (route.path, method)
        for route in web.app.routes
        if isinstance(route, Route)
        for method in (route.methods or ()) - {"HEAD"}
    }
    declared = {(spec.path, method) for spec in ROUTES for method in spec.methods}
    assert mounted == declared
    assert {(spec.path, method) for spec in DECLARED for method in spec.methods} <= mounted
    assert len(ROUTES) == len({(spec.path, spec.methods) for spec in ROUTES})


@pytest.mark.parametrize("role", [None, *BUILTIN_ROLES])
def test_every_route_answers_as_its_permission_says(web: Web, role: str | None) -> None:
    if role is None:
        client, csrf, granted = web.client(), "", frozenset[str]()
    else:
        client, csrf = web.login(role.lower().replace(" ", "-"))
        granted = BUILTIN_ROLES[role]
    for spec in ROUTES:
        if spec.handler == "logout":
            continue  # ends the session the rest of the walk uses; tested on its own
        for method in spec.methods:
            status = _request(web, spec, method, client, csrf).status_code
            where = f"{method} {spec.path} as {role}"
            if spec.handler in ("api_login", "login_form"):
                assert status == 401, where  # the walk sends a wrong password
            elif spec.permission == PUBLIC:
                assert status not in (401, 403), where
            elif role is None:
                expected = 401 if spec.path.startswith("/api/") else 303
                assert status == expected, where
            elif spec.permission == AUTHENTICATED or set(spec.needs) <= granted:
                assert status not in (401, 403), f"{where}: {status}"
            else:
                assert status == 403, f"{where}: {status}"


def test_logout_ends_the_session_everywhere(web: Web) -> None:
    client, csrf = web.login("operator")
    cookie = client.cookies.get("mw_session")
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    # The old cookie, replayed (as a stolen one would be), is refused.
    replay = web.client()
    replay.cookies.set("mw_session", cookie or "")
    assert replay.get("/api/me").status_code == 401

"""Local accounts, directory group mappings, custom roles and API tokens."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from .. import api_types as T
from ..api_types import api
from ..auth import Identity
from ..config_edit import ConfigRefused, config_table, rewrite_config, write_config
from ..permissions import BUILTIN_ROLES, PERMISSIONS
from ..respond import render
from ..route import declared
from ..state import WebState


def _roles(state: WebState) -> list[dict[str, Any]]:
    builtin = [
        {"name": name, "builtin": True, "permissions": sorted(perms)}
        for name, perms in BUILTIN_ROLES.items()
    ]
    custom = [
        {"name": name, "builtin": False, "permissions": sorted(perms)}
        for name, perms in sorted(state.file_config.web.roles.items())
    ]
    return builtin + custom


def _users(state: WebState) -> dict[str, Any]:
    directory = state.file_config.directory
    return {
        "local": state.auth.users(),
        "directory": {
            "enabled": directory.enabled,
            "url": directory.url if directory.enabled else None,
            "login_bind": state.file_config.web.login_bind,
        },
        "groups": state.file_config.web.groups,
        "tokens": state.auth.tokens(),
    }


@api(T.Users)
async def api_users(request: Request) -> Response:
    """Who may log in: local accounts with their roles, the directory and its group-to-role
    mapping, and the API tokens with their roles and scopes (never the tokens themselves)."""
    return JSONResponse(_users(request.state.web))


@api(list[T.Role])
async def api_roles(request: Request) -> Response:
    """Every role with its permissions; built-in ones are marked and cannot be changed."""
    return JSONResponse(_roles(request.state.web))


def _check_role(name: str, permissions: Any) -> str | None:
    if not name.strip() or len(name) > 64 or name != name.strip() or "/" in name:
        return "a role name is 1 to 64 characters, no '/', no leading or trailing spaces"
    if name in BUILTIN_ROLES:
        return f"{name!r} is a built-in role and cannot be changed"
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        return "permissions are a list of permission names"
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        return f"unknown permissions {unknown}; known: {list(PERMISSIONS)}"
    return None


def _set_role(state: WebState, who: str, name: str, permissions: list[str] | None) -> None:
    """Create, change (a list) or delete (``None``) the custom role ``name`` in the config;
    raises :class:`ConfigRefused`."""
    roles = dict(config_table(state, "web").get("roles", {}))
    existed = name in roles
    if permissions is None:
        if not existed:
            raise ConfigRefused(f"no custom role {name!r}", 404)
        del roles[name]
    else:
        roles[name] = sorted(set(permissions))
    write_config(state, ("web", "roles"), roles)
    act = "role.delete" if permissions is None else "role.edit" if existed else "role.create"
    state.audit.write(act, who, role=name, permissions=permissions)


@api(T.RoleSaved, body=T.RolePermissions)
async def api_role_put(request: Request) -> Response:
    """Create or change the custom role in the path with ``{"permissions": [...]}``."""
    state: WebState = request.state.web
    name = request.path_params["role"]
    try:
        permissions = json.loads(await request.body())["permissions"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'send {"permissions": [...]}'}, status_code=400)
    problem = _check_role(name, permissions)
    if problem:
        status = 403 if name in BUILTIN_ROLES else 422
        return JSONResponse({"error": problem}, status_code=status)
    identity: Identity = request.state.identity
    try:
        await asyncio.to_thread(_set_role, state, identity.name, name, permissions)
    except ConfigRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"name": name, "permissions": sorted(set(permissions))})


@api(T.Deleted)
async def api_role_delete(request: Request) -> Response:
    """Delete a custom role (refused while a directory group still maps to it)."""
    state: WebState = request.state.web
    name = request.path_params["role"]
    if name in BUILTIN_ROLES:
        return JSONResponse({"error": f"{name!r} is a built-in role"}, status_code=403)
    identity: Identity = request.state.identity
    try:
        await asyncio.to_thread(_set_role, state, identity.name, name, None)
    except ConfigRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse({"deleted": name})


@api(dict[str, list[str]], body=dict[str, list[str]])
async def api_groups_put(request: Request) -> Response:
    """Replace the directory group-to-role mapping: ``{"group:NAME": ["Role", ...], ...}``."""
    state: WebState = request.state.web
    try:
        groups = json.loads(await request.body())
        if not isinstance(groups, dict):
            raise TypeError
    except (ValueError, TypeError):
        return JSONResponse({"error": 'send {"group:NAME": ["Role"], ...}'}, status_code=400)
    result = await asyncio.to_thread(rewrite_config, state, ("web", "groups"), groups)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("groups.edit", identity.name, groups=groups)
    return JSONResponse(state.file_config.web.groups)


@api(list[T.Token])
async def api_tokens(request: Request) -> Response:
    """API tokens: id, name, roles, scopes (the permissions the roles grant), created."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(state.auth.tokens))


@api(T.TokenCreated, body=T.NewToken, status=201)
async def api_token_create(request: Request) -> Response:
    """A new API token ``{"name", "roles"}``; shown once."""
    state: WebState = request.state.web
    try:
        body = json.loads(await request.body())
        token = state.auth.create_token(str(body["name"]), [str(r) for r in body["roles"]])
    except (ValueError, KeyError, TypeError) as exc:
        return JSONResponse({"error": f"bad token request: {exc}"}, status_code=400)
    identity: Identity = request.state.identity
    state.audit.write("token.create", identity.name, token_name=body["name"], roles=body["roles"])
    return JSONResponse({"token": token}, status_code=201)


def _revoke_token(request: Request) -> str | None:
    state: WebState = request.state.web
    token_id = request.path_params["token_id"]
    name = state.auth.revoke_token(token_id)
    if name is not None:
        identity: Identity = request.state.identity
        state.audit.write("token.revoke", identity.name, token_id=token_id, token_name=name)
    return name


@api(T.TokenRevoked)
async def api_token_revoke(request: Request) -> Response:
    """Revoke an API token by its id: it stops working at once, in every worker."""
    name = await asyncio.to_thread(_revoke_token, request)
    if name is None:
        return JSONResponse({"error": "no such token"}, status_code=404)
    return JSONResponse({"revoked": request.path_params["token_id"], "name": name})


def _users_page(request: Request, *, status: int = 200, **messages: str) -> HTMLResponse:
    state: WebState = request.state.web
    page = render(
        request,
        "users.html",
        users=_users(state),
        roles=_roles(state),
        permissions=PERMISSIONS,
        time=time,
        **messages,
    )
    page.status_code = status
    return page


async def users_page(request: Request) -> Response:
    """Local accounts, directory group mappings, API tokens, and the roles with their
    permissions (custom ones editable)."""
    return _users_page(request)


async def role_form(request: Request) -> Response:
    """Create or change a custom role from the page (name, permission checkboxes)."""
    state: WebState = request.state.web
    body = (await request.body()).decode("utf-8", "replace")
    fields = parse_qs(body)
    name = (fields.get("name") or [""])[0]
    permissions = fields.get("permission", [])
    problem = _check_role(name, permissions)
    if problem:
        return _users_page(request, status=422, error=problem)
    identity: Identity = request.state.identity
    try:
        await asyncio.to_thread(_set_role, state, identity.name, name, permissions)
    except ConfigRefused as exc:
        return _users_page(request, status=exc.status, error=str(exc))
    return RedirectResponse("/users", 303)


async def role_delete_form(request: Request) -> Response:
    """Delete a custom role from the page."""
    state: WebState = request.state.web
    name = request.path_params["role"]
    if name in BUILTIN_ROLES:
        return _users_page(request, status=403, error=f"{name!r} is a built-in role")
    identity: Identity = request.state.identity
    try:
        await asyncio.to_thread(_set_role, state, identity.name, name, None)
    except ConfigRefused as exc:
        return _users_page(request, status=exc.status, error=str(exc))
    return RedirectResponse("/users", 303)


async def token_revoke_form(request: Request) -> Response:
    """Revoke an API token from the page."""
    name = await asyncio.to_thread(_revoke_token, request)
    if name is None:
        return _users_page(request, status=404, error="no such token")
    return RedirectResponse("/users", 303)


ROUTES = declared(
    users_page,
    role_form,
    role_delete_form,
    token_revoke_form,
    api_users,
    api_groups_put,
    api_roles,
    api_role_put,
    api_role_delete,
    api_tokens,
    api_token_create,
    api_token_revoke,
)

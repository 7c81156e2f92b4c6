"""Logging in and out (form and API), who is asking, and the health check."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .. import api_types as T
from ..api_types import api
from ..auth import Identity, client_key
from ..respond import LOGIN_COOKIE, SESSION_COOKIE, peer, read_form, render, set_cookie
from ..route import declared
from ..state import WebState

log = logging.getLogger(__name__)

# Names longer than this are cut in the audit records (a login may send anything).
_NAME_CHARS = 256


async def _login(state: WebState, name: str, password: str, client: str) -> Identity | str:
    """The identity for ``name``/``password``, or why not."""
    # Per address, not per account: failures from one place must not lock the account out
    # for its owner elsewhere.
    keys = (client_key(client),)
    wait = state.auth.throttle.retry_after(*keys)
    if wait > 0:
        return f"too many failed logins; try again in {int(wait) + 1} s"
    identity: Identity | str | None = await asyncio.to_thread(
        state.auth.local_login, name, password
    )
    if identity is None and "@" in name:
        identity = await asyncio.to_thread(_directory_login, state, name, password)
    if not isinstance(identity, Identity):
        state.auth.throttle.failed(*keys)
        problem = identity or ""
        state.audit.write(
            "login.failed", name[:_NAME_CHARS], client=client, problem=problem or None
        )
        return f"directory login failed: {problem}" if problem else "wrong name or password"
    state.auth.throttle.succeeded(*keys)
    state.audit.write("login", identity.name, client=client, source=identity.source)
    return identity


def _directory_login(state: WebState, address: str, password: str) -> Identity | str | None:
    """The directory user's identity; ``None`` for a wrong name or password, or what kept the
    password from being checked (a bind method the server does not offer)."""
    from ...directory.login import login_directory_user

    directory = state.gateway.directory
    if directory is None:
        return None
    web = state.file_config.web
    found = login_directory_user(directory, web, state.gateway.config.directory, address, password)
    if found is None:
        return None
    entry, checked = found
    if checked.problem:
        log.warning("directory login for %s: %s", address, checked.problem)
        return checked.problem
    if not checked.ok:
        return None
    return state.auth.identity_for(address, _group_roles(state, entry), "directory")


def _group_roles(state: WebState, entry: Any) -> tuple[str, ...]:
    """The roles ``[web] groups`` gives a directory entry through its groups."""
    from ...directory.names import group_key

    keys = entry.group_keys()
    return tuple(
        sorted(
            {
                role
                for pattern, mapped in state.file_config.web.groups.items()
                if group_key(pattern.removeprefix("group:")) in keys
                for role in mapped
            }
        )
    )


def still_in_groups(state: WebState, identity: Identity) -> bool:
    """Whether a directory user still exists and their groups still give the session's
    roles; asked of the server at most every ``directory_recheck`` seconds per session."""
    from ...directory.model import DirectoryError

    now = time.monotonic()
    checked = state.directory_checked
    last = checked.get(identity.session)
    if last is not None and now - last < state.directory_recheck:
        return True
    directory = state.gateway.directory
    if directory is None:
        return False
    try:
        entry = directory.client.lookup(identity.name)
    except DirectoryError as exc:
        # The server being down is not a demotion: the session stays, asked again later.
        log.warning("directory check of %s's session failed: %s", identity.name, exc)
        checked[identity.session] = now
        return True
    if entry is None or _group_roles(state, entry) != tuple(sorted(identity.roles)):
        checked.pop(identity.session, None)
        return False
    checked[identity.session] = now
    if len(checked) > 10_000:
        for sid in sorted(checked, key=checked.__getitem__)[:1000]:
            del checked[sid]
    return True


def _session_response(state: WebState, identity: Identity, response: Response) -> Response:
    return set_cookie(state, response, SESSION_COOKIE, state.auth.new_session(identity))


def _cross_site(request: Request) -> bool:
    """Whether a browser says the request comes from another site (``Sec-Fetch-Site``) or
    from another origin than this one (``Origin``, for browsers without the former)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin == "null" or origin.partition("://")[2].rstrip("/") != host


def _login_page(request: Request, error: str, target: str, status: int = 200) -> Response:
    """The login form with its anti-CSRF token: the nonce cookie the browser brought, or a
    new one."""
    state: WebState = request.state.web
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    fresh = not (0 < len(nonce) <= 64)
    if fresh:
        nonce = secrets.token_urlsafe(18)
    page = render(
        request,
        "login.html",
        error=error,
        next=target,
        login_csrf=state.auth.login_csrf(nonce),
    )
    page.status_code = status
    if fresh:
        set_cookie(state, page, LOGIN_COOKIE, nonce, path="/login")
    return page


async def login_page(request: Request) -> Response:
    """The login form."""
    return _login_page(request, "", request.query_params.get("next", "/"))


def _local_target(target: str) -> str:
    # Only paths of this site: "//evil.example" and "https://..." would leave it.
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def login_form(request: Request) -> Response:
    """Log in from the form; a fresh session cookie on success."""
    state: WebState = request.state.web
    form = await read_form(request)
    target = _local_target(form.get("next", "/"))
    # Login CSRF: another site could log the browser into an account of its choosing.
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if _cross_site(request) or not state.auth.check_login_csrf(nonce, form.get("csrf", "")):
        problem = "this login form expired or came from another site; log in again"
        return _login_page(request, problem, target, status=403)
    result = await _login(state, form.get("name", ""), form.get("password", ""), peer(request))
    if isinstance(result, str):
        status = 429 if result.startswith("too many") else 401
        return _login_page(request, result, target, status=status)
    if target == "/" and result.source == "directory" and not result.may("reports.view"):
        # A mail user with no role of this interface: their own quarantine, not a 403.
        target = "/my/quarantine"
    return _session_response(state, result, RedirectResponse(target, status_code=303))


@api(T.Session, body=T.Login)
async def api_login(request: Request) -> Response:
    """Log in with ``{"name", "password"}``; the session cookie and the CSRF token."""
    state: WebState = request.state.web
    # JSON only: a page of another site cannot send that without asking first (CORS), while
    # a form it posts (text/plain) could carry a JSON-looking body.
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        return JSONResponse({"error": "send application/json"}, status_code=415)
    if _cross_site(request):
        return JSONResponse({"error": "cross-site login refused"}, status_code=403)
    try:
        body = json.loads(await request.body())
        name, password = str(body["name"]), str(body["password"])
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'send {"name": ..., "password": ...}'}, status_code=400)
    result = await _login(state, name, password, peer(request))
    if isinstance(result, str):
        status = 429 if result.startswith("too many") else 401
        return JSONResponse({"error": result}, status_code=status)
    cookie = state.auth.new_session(result)
    identity = state.auth.session_identity(cookie)
    assert identity is not None
    response = JSONResponse(
        {
            "name": result.name,
            "roles": list(result.roles),
            "csrf": state.auth.csrf_token(identity),
        }
    )
    return set_cookie(state, response, SESSION_COOKIE, cookie)


async def logout(request: Request) -> Response:
    """End this session everywhere."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    state.auth.revoke(identity)
    state.audit.write("logout", identity.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@api(T.Me)
async def api_me(request: Request) -> Response:
    """Who is asking, with roles, permissions and (for sessions) the CSRF token."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    return JSONResponse(
        {
            "name": identity.name,
            "roles": list(identity.roles),
            "permissions": sorted(identity.permissions),
            "source": identity.source,
            "csrf": state.auth.csrf_token(identity) if identity.session else None,
        }
    )


@api(T.Health)
async def api_health(request: Request) -> Response:
    """Liveness for load balancers and monitoring (no details)."""
    return JSONResponse({"status": "ok"})


ROUTES = declared(
    login_page,
    login_form,
    logout,
    api_health,
    api_login,
    api_me,
)

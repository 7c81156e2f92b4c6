"""The starlette application: pages and REST API over one gateway, guarded by permissions.

Every route comes from :data:`~.permissions.ROUTES`; :func:`create_app` wraps each handler in
the guard that authenticates (bearer token or session cookie), checks the declared permission
and, for anything that changes state, the CSRF token. Pages are rendered on the server with
Jinja2 (autoescaping on) and need no JavaScript; a message's own HTML is never rendered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

import msgspec
import tomlkit
from jinja2 import Environment, select_autoescape
from jinja2.loaders import DictLoader
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mailwarden_native import decode_header, parse
from mailwarden_sdk import (
    QUARANTINE_ID,
    Envelope,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
)

from ..cluster.console import Console, redis_status
from ..config import Config, load_config, parse_config
from ..errors import ConfigError
from ..events import EventQuery
from ..quarantine import QuarantineBusy as HeldBusy
from ..quarantine import QuarantineError as HeldError
from ..quarantine import ReleaseFailed
from .audit import AuditLog
from .auth import Identity, WebAuth, client_key
from .backups import BackupNotFound, backup_entry, backup_list, backup_raw, release_backup
from .digest import DigestDone, DigestLink, DigestSigner
from .forms import FormError, changed_values, form_fields, masked
from .permissions import BUILTIN_ROLES, PERMISSIONS, PUBLIC, ROUTES, RouteSpec
from .routes_cluster import (  # noqa: F401 - handlers of ROUTES, found in globals()
    api_cluster_config,
    api_cluster_config_push,
    api_cluster_delete,
    api_cluster_events,
    api_cluster_quarantine,
    api_cluster_release,
    cluster_page,
    cluster_release_form,
    node_config,
    node_config_push,
    node_delete,
    node_events,
    node_quarantine,
    node_release,
)
from .signatures import SignatureInfo
from .ui import (
    ACTIONS,
    EXPORT_LIMIT,
    PERIODS,
    STATUSES,
    EventFilter,
    bar_chart,
    event_csv,
    field_unit,
    human_bytes,
    parse_when,
    rest_text,
    trends,
)

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = ["SESSION_COOKIE", "WebState", "create_app"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "mw_session"
# The login form's anti-CSRF nonce, set when the form is shown and sent back with it only.
LOGIN_COOKIE = "mw_login"
# Names longer than this are cut in the audit records (a login may send anything).
_NAME_CHARS = 256
_SAFE_METHODS = ("GET", "HEAD")
_SECURITY_HEADERS = {
    # No script at all, no framing, nothing sniffed: a message's subject or file name shown
    # on a page can at worst be text.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[Request], Awaitable[Response]]


def web_auth(gateway: Gateway) -> WebAuth:
    """The gateway's web accounts and session keys (``<home>/web``); creates the session
    secret on first use."""
    cfg = gateway.config.web
    return WebAuth(
        gateway.config.home / "web",
        session_seconds=cfg.session_hours * 3600,
        custom_roles=cfg.roles,
        login_attempts=cfg.login_attempts,
        groups=cfg.groups,
    )


class WebState:
    """What the handlers share: the gateway, accounts and sessions, the audit log."""

    def __init__(self, gateway: Gateway, *, secure_cookies: bool) -> None:
        self.gateway = gateway
        self.auth = web_auth(gateway)
        self.audit = AuditLog(
            gateway.config.home / "web" / "audit.jsonl",
            app_log=gateway.stores.app_log,
            auth_log=gateway.stores.auth_log,
            max_bytes=gateway.config.stores.audit_max_bytes,
        )
        self.secure_cookies = secure_cookies
        # Directory sessions: when each was last found still backed by its groups (per
        # worker; monotonic seconds by session id), and how often that is asked again.
        self.directory_checked: dict[str, float] = {}
        self.directory_recheck = 300.0
        self.templates = _templates()
        self.templates.globals["cluster_nodes"] = bool(gateway.config.cluster.nodes)
        self.cluster_console = Console(gateway.config)
        self.signatures = SignatureInfo(gateway)
        self.digest = DigestSigner(gateway.config.home / "web")
        self.digest_task: asyncio.Task[None] | None = None
        # The config as its file says now: roles and group mappings apply at once (in every
        # worker, which each see the file change), other sections at the next start.
        self.file_config: Config = gateway.config
        self._config_mtime = self._mtime()

    def start_digests(self) -> asyncio.Task[None] | None:
        """Send the end users' quarantine digests every ``[web] digest_hours`` from now on
        (each worker asks; one sends, see :meth:`send_due_digests`)."""
        if not self.gateway.config.web.digest_hours:
            return None
        self.digest_task = asyncio.create_task(self._digest_loop())
        return self.digest_task

    async def _digest_loop(self) -> None:
        while True:
            try:
                await self.send_due_digests()
            except Exception:
                log.exception("sending the quarantine digests failed; trying again later")
            await asyncio.sleep(60)

    async def send_due_digests(self, now: float | None = None) -> dict[str, str] | None:
        """Send the digests if ``digest_hours`` have passed since the last were sent (by any
        worker: a locked stamp file under ``web/``); ``None`` when not due or another worker
        is sending, else where each recipient's went."""
        import fcntl

        from .digest import send_digests

        cfg = self.gateway.config.web
        now = time.time() if now is None else now
        stamp = self.gateway.config.home / "web" / "digest-sent"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            last = float(text) if text.replace(".", "", 1).isdigit() else 0.0
            period = cfg.digest_hours * 3600
            if now - last < period:
                return None
            hostname = self.gateway.config.gateway.hostname
            sent = await send_digests(
                self.gateway,
                self.digest,
                base_url=cfg.digest_url,
                sender=cfg.digest_from or f"postmaster@{hostname}",
                since=last or now - period,
                days=cfg.digest_link_days,
            )
            os.ftruncate(fd, 0)
            # repr: the exact float, so "due" compares the very time written (3 decimals
            # rounded up made a digest a day later look not due yet).
            os.pwrite(fd, f"{now!r}\n".encode("ascii"), 0)
            self.audit.write("digest.sent", "mailwarden", recipients=len(sent))
            return sent
        finally:
            os.close(fd)

    def _mtime(self) -> int | None:
        source = self.gateway.config.source
        try:
            return os.stat(source).st_mtime_ns if source else None
        except OSError:
            return None

    def refresh(self) -> None:
        """Re-read the config file if it changed: custom roles and group mappings."""
        mtime = self._mtime()
        if mtime is None or mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        source = self.gateway.config.source
        try:
            config = load_config(source, self.gateway.plugins.config_schemas())
        except ConfigError as exc:
            log.warning("config file changed but does not load; keeping roles: %s", exc)
            return
        self.file_config = config
        self.auth.custom_roles = config.web.roles
        self.auth.groups = dict(config.web.groups)


def _templates() -> Environment:
    folder = files("mailwarden.web").joinpath("templates")
    sources = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".html")
    }
    return Environment(loader=DictLoader(sources), autoescape=select_autoescape(default=True))


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _identify(state: WebState, request: Request) -> Identity | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return state.auth.token_identity(header[7:].strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    return state.auth.session_identity(cookie) if cookie else None


async def _form(request: Request) -> dict[str, str]:
    # URL-encoded forms only (no uploads here), parsed without an extra dependency; the body
    # is capped by the route's max_body.
    body = (await request.body()).decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}


class _BodyTooLarge(Exception):
    """The request body went past its route's cap while it was read."""


def _cap_body(request: Request, limit: int) -> bool:
    """Let the handlers read at most ``limit`` bytes of body: ``False`` when the declared
    length is more already; past the cap while streaming, reading raises
    :class:`_BodyTooLarge` (nothing more is read or kept)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        return False
    receive = request.receive
    seen = 0

    async def capped() -> Any:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _BodyTooLarge
        return message

    request._receive = capped
    return True


def _too_large(request: Request, limit: int) -> Response:
    response = _error(request, 413, f"the request body is limited to {limit} bytes here")
    # The rest of the body is not read: the connection cannot carry another request.
    response.headers["Connection"] = "close"
    return response


def _guard(state: WebState, spec: RouteSpec, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        request.state.identity = None
        request.state.web = state
        if not _cap_body(request, spec.max_body):
            return _too_large(request, spec.max_body)
        try:
            response = await checked(request)
        except _BodyTooLarge:
            return _too_large(request, spec.max_body)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    async def checked(request: Request) -> Response:
        await asyncio.to_thread(state.refresh)
        identity = _identify(state, request)
        if identity is not None and identity.source == "directory":
            # Removed from a group (or from the directory): the session does not outlive it.
            if not await asyncio.to_thread(_still_in_groups, state, identity):
                state.auth.revoke(identity)
                identity = None
        request.state.identity = identity
        if spec.permission != PUBLIC:
            if identity is None:
                if _wants_json(request):
                    return JSONResponse({"error": "authentication required"}, status_code=401)
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            for permission in spec.needs:
                if not identity.may(permission):
                    return _error(request, 403, f"this needs the {permission} permission")
            if request.method not in _SAFE_METHODS:
                token = request.headers.get("x-csrf-token", "")
                if not token and not _wants_json(request):
                    token = (await _form(request)).get("csrf", "")
                if not state.auth.check_csrf(identity, token):
                    return _error(request, 403, "missing or wrong CSRF token")
        return await handler(request)

    endpoint.__name__ = spec.handler
    return endpoint


def _error(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    state: WebState = request.state.web
    page = state.templates.get_template("error.html").render(
        status=status, message=message, identity=request.state.identity
    )
    return HTMLResponse(page, status_code=status)


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    state: WebState = request.state.web
    identity: Identity | None = request.state.identity
    csrf = state.auth.csrf_token(identity) if identity is not None else ""
    body = state.templates.get_template(template).render(identity=identity, csrf=csrf, **context)
    return HTMLResponse(body)


# -- authentication --------------------------------------------------------------------------


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
    from .directory_login import login_directory_user

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
    from ..directory.names import group_key

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


def _still_in_groups(state: WebState, identity: Identity) -> bool:
    """Whether a directory user still exists and their groups still give the session's
    roles; asked of the server at most every ``directory_recheck`` seconds per session."""
    from ..directory.model import DirectoryError

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


def _set_cookie(
    state: WebState, response: Response, name: str, value: str, path: str = "/"
) -> Response:
    response.set_cookie(
        name,
        value,
        max_age=int(state.auth.session_seconds),
        httponly=True,
        secure=state.secure_cookies,
        samesite="strict",
        path=path,
    )
    return response


def _session_response(state: WebState, identity: Identity, response: Response) -> Response:
    return _set_cookie(state, response, SESSION_COOKIE, state.auth.new_session(identity))


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
    page = _page(
        request,
        "login.html",
        error=error,
        next=target,
        login_csrf=state.auth.login_csrf(nonce),
    )
    page.status_code = status
    if fresh:
        _set_cookie(state, page, LOGIN_COOKIE, nonce, path="/login")
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
    form = await _form(request)
    target = _local_target(form.get("next", "/"))
    # Login CSRF: another site could log the browser into an account of its choosing.
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if _cross_site(request) or not state.auth.check_login_csrf(nonce, form.get("csrf", "")):
        problem = "this login form expired or came from another site; log in again"
        return _login_page(request, problem, target, status=403)
    result = await _login(state, form.get("name", ""), form.get("password", ""), _client(request))
    if isinstance(result, str):
        status = 429 if result.startswith("too many") else 401
        return _login_page(request, result, target, status=status)
    return _session_response(state, result, RedirectResponse(target, status_code=303))


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
    result = await _login(state, name, password, _client(request))
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
    return _set_cookie(state, response, SESSION_COOKIE, cookie)


async def logout(request: Request) -> Response:
    """End this session everywhere."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    state.auth.revoke(identity)
    state.audit.write("logout", identity.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


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


async def api_health(request: Request) -> Response:
    """Liveness for load balancers and monitoring (no details)."""
    return JSONResponse({"status": "ok"})


# -- events and statistics -------------------------------------------------------------------


def _query(params: Any) -> EventQuery:
    def number(name: str) -> float | None:
        value = params.get(name)
        return float(value) if value not in (None, "") else None

    def text(name: str) -> str | None:
        value = params.get(name)
        return str(value) if value else None

    hours = number("hours")
    return EventQuery(
        # The events page's grammar: 2h, 7d, a local date and time, or a Unix time.
        since=time.time() - hours * 3600 if hours else parse_when(params.get("since") or ""),
        until=parse_when(params.get("until") or ""),
        sender=text("sender"),
        recipient=text("recipient"),
        subject=text("subject"),
        action=text("action"),
        status=text("status"),
        message_id=text("message_id"),
        client_address=text("client"),
        limit=min(int(params.get("limit") or 100), 1000),
    )


async def api_events(request: Request) -> Response:
    """Search the message event log: ``sender``, ``recipient``, ``subject``, ``status``,
    ``action``, ``message_id``, ``client``, ``since``/``until`` (``2h``, ``7d``,
    ``2026-12-06T14:30`` or a Unix time) or ``hours``."""
    state: WebState = request.state.web
    try:
        query = _query(request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    events = await asyncio.to_thread(state.gateway.events.search, query)
    return Response(msgspec.json.encode(events), media_type="application/json")


def _stats(state: WebState, hours: int = 24) -> dict[str, Any]:
    now = time.time()
    events = state.gateway.events.search(EventQuery(since=now - hours * 3600, limit=1_000_000))
    by_hour: dict[int, Counter[str]] = {h: Counter() for h in range(hours)}
    for event in events:
        slot = int((now - event.time) // 3600)
        if 0 <= slot < hours:
            by_hour[hours - 1 - slot][str(event.action)] += 1
    return {
        "hours": hours,
        "messages": len(events),
        "actions": dict(Counter(str(e.action) for e in events)),
        "by_hour": [dict(by_hour[h]) for h in range(hours)],
    }


async def api_stats(request: Request) -> Response:
    """Messages and actions over the last 24 hours, by hour."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(_stats, state))


# -- application and authentication logs ----------------------------------------------------


def _log_since(params: Any) -> float | None:
    hours = params.get("hours")
    if hours not in (None, ""):
        return time.time() - float(hours) * 3600
    since = params.get("since")
    return float(since) if since not in (None, "") else None


def _log_limit(params: Any) -> int:
    return max(1, min(int(params.get("limit") or 200), 1000))


def _app_log(state: WebState, params: Any) -> list[Any]:
    return state.gateway.stores.app_log.search(
        since=_log_since(params),
        kind=str(params.get("kind") or "") or None,
        actor=str(params.get("actor") or "")[:400] or None,
        limit=_log_limit(params),
    )


def _auth_log(state: WebState, params: Any) -> list[Any]:
    return state.gateway.stores.auth_log.search(
        since=_log_since(params),
        user=str(params.get("user") or "")[:400] or None,
        client_address=str(params.get("client") or "")[:100] or None,
        limit=_log_limit(params),
    )


async def _log_records(
    request: Request, read: Callable[[WebState, Any], list[Any]]
) -> list[Any] | Response:
    try:
        return await asyncio.to_thread(read, request.state.web, request.query_params)
    except ValueError as exc:
        return _error(request, 400, f"bad query: {exc}")


async def api_app_log(request: Request) -> Response:
    """The application event log, newest first: ``kind`` (admin, login, update, error, start,
    stop), ``actor``, ``hours`` or ``since`` (Unix time), ``limit`` (up to 1000)."""
    found = await _log_records(request, _app_log)
    if isinstance(found, Response):
        return found
    return Response(msgspec.json.encode(found), media_type="application/json")


async def api_auth_log(request: Request) -> Response:
    """The authentication log (every login attempt), newest first: ``user``, ``client``,
    ``hours`` or ``since`` (Unix time), ``limit`` (up to 1000)."""
    found = await _log_records(request, _auth_log)
    if isinstance(found, Response):
        return found
    return Response(msgspec.json.encode(found), media_type="application/json")


def _when(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


# What each log page shows: its title, search fields, columns and a row per record.
_LOG_PAGES: dict[str, dict[str, Any]] = {
    "app": {
        "title": "Application log",
        "fields": [("kind", "kind (admin, login, error...)"), ("actor", "who"), ("hours", "hours")],
        "columns": ["time", "kind", "action", "who", "from", "detail"],
        "row": lambda e: [
            _when(e.time),
            e.kind,
            e.action,
            e.actor,
            e.client_address or "",
            e.detail,
        ],
        "read": _app_log,
    },
    "auth": {
        "title": "Authentication log",
        "fields": [("user", "account"), ("client", "client address"), ("hours", "hours")],
        "columns": ["time", "account", "from", "result", "method"],
        "row": lambda e: [
            _when(e.time),
            e.user,
            e.client_address,
            "ok" if e.success else "failed",
            e.method,
        ],
        "read": _auth_log,
    },
}


async def _log_page(request: Request, log: str) -> Response:
    shape = _LOG_PAGES[log]
    found = await _log_records(request, shape["read"])
    if isinstance(found, Response):
        return found
    return _page(
        request,
        "log.html",
        title=shape["title"],
        action=f"/logs/{log}",
        fields=shape["fields"],
        params=request.query_params,
        columns=shape["columns"],
        rows=[shape["row"](record) for record in found],
    )


async def app_log_page(request: Request) -> Response:
    """The application event log: what administrators did, logins, updates, errors."""
    return await _log_page(request, "app")


async def auth_log_page(request: Request) -> Response:
    """The authentication log: every login attempt with account, address and outcome."""
    return await _log_page(request, "auth")


# -- quarantine ------------------------------------------------------------------------------


def _message_view(original: bytes) -> dict[str, Any]:
    """A held message as the pages and the API show it: decoded headers, the text of its
    text parts (HTML as its text, never rendered), and its attachments' names, detected types
    and sizes. Every value is data for an autoescaping template or JSON, never markup."""
    message = parse(original)
    headers = [(name, decode_header(value)) for name, value in message.headers]
    texts = [part.text() for part in message.leaves() if part.content_type.startswith("text/")]
    attachments = [
        {"name": part.filename, "type": part.detected_type, "size": len(part.decoded())}
        for part in message.attachments()
    ]
    return {
        "headers": headers,
        # Text only: HTML parts are shown as their text, never rendered.
        "text": "\n\n".join(texts)[:200_000],
        "attachments": attachments,
    }


def _held_view(state: WebState, held_id: str) -> dict[str, Any]:
    held = state.gateway.quarantine.get(held_id)
    original, _ = state.gateway.quarantine.original(held_id)
    return {
        "id": held.id,
        "held_at": held.held_at,
        "size": held.size,
        "sender": held.envelope.mail_from,
        "recipients": held.envelope.rcpt_to,
        "rule": held.rule,
        "reason": held.reason,
        "subject": held.subject,
        **_message_view(original),
    }


def _held_list(state: WebState) -> list[dict[str, Any]]:
    return [
        {
            "id": h.id,
            "held_at": h.held_at,
            "sender": h.envelope.mail_from,
            "recipients": h.envelope.rcpt_to,
            "subject": h.subject,
            "rule": h.rule,
            "reason": h.reason,
            "size": h.size,
        }
        for h in state.gateway.quarantine.held()
    ]


# Where a plugin's quarantine is worked with when the plugin offers it to the web interface
# through no ``mailwarden_quarantines`` provider (it is off, or a plugin for an older SDK).
_PLUGIN_QUARANTINE_COMMANDS = {
    "antispam": "mailwarden antispam quarantine list|release [--learn-ham]|delete",
    "sandbox": "mailwarden sandbox list|release|delete",
}


def _quarantines(state: WebState) -> list[dict[str, Any]]:
    """Every declared quarantine store (the core's and the plugins'), with what it holds now
    and where it is managed: a page of this interface for the core's and for every plugin
    quarantine offered through ``mailwarden_quarantines``; no paths (settings.view's)."""
    providers = state.gateway.plugin_quarantines()
    offered: dict[str, list[tuple[str, Quarantine]]] = {}
    for name, (plugin, quarantine) in providers.items():
        offered.setdefault(plugin, []).append((name, quarantine))
    linked: set[str] = set()
    result = []
    for store in _inventory(state):
        descriptor = store["store"]
        if "quarantine" not in descriptor["name"]:
            continue
        owner = store["owner"]
        pages = offered.get(owner, [])
        in_web = owner == "core" or len(pages) == 1
        if owner == "core":
            manage = "/quarantine"
        elif len(pages) == 1:
            manage = f"/quarantines/{pages[0][0]}"
            linked.add(pages[0][0])
        else:
            manage = _PLUGIN_QUARANTINE_COMMANDS.get(owner, f"mailwarden {owner}")
        result.append(
            {
                "name": descriptor["name"],
                "owner": owner,
                "messages": store["records"],
                "bytes": store["bytes"],
                "max_bytes": descriptor["max_bytes"],
                "max_entries": descriptor["max_entries"],
                "in_web": in_web,
                "quarantine": pages[0][0] if owner != "core" and len(pages) == 1 else None,
                "title": pages[0][1].title if owner != "core" and len(pages) == 1 else None,
                "manage": manage,
            }
        )
    # Offered quarantines no declared store could be matched with: listed all the same.
    for name, (plugin, quarantine) in providers.items():
        if name not in linked:
            result.append(
                {
                    "name": quarantine.title,
                    "owner": plugin,
                    "messages": None,
                    "bytes": None,
                    "max_bytes": None,
                    "max_entries": None,
                    "in_web": True,
                    "quarantine": name,
                    "title": quarantine.title,
                    "manage": f"/quarantines/{name}",
                }
            )
    return result


async def api_quarantines(request: Request) -> Response:
    """Every quarantine store, the core's and the plugins', with how many messages it holds
    and where it is managed (``/quarantines/{name}`` for a plugin's that the web offers)."""
    return JSONResponse(await asyncio.to_thread(_quarantines, request.state.web))


# -- plugin quarantines (mailwarden_quarantines, SDK 1.7) ------------------------------------


def _plugin_quarantine(state: WebState, name: str) -> Quarantine:
    """The plugin quarantine called ``name``; :class:`QuarantineNotFound` otherwise."""
    found = state.gateway.plugin_quarantines().get(name) if QUARANTINE_ID.match(name) else None
    if found is None:
        raise QuarantineNotFound(f"no quarantine {name!r}")
    return found[1]


def _entry_id(request: Request) -> str:
    # Checked before any plugin sees it: letters, digits, "_" and "-" only, so never a path.
    entry_id: str = request.path_params["entry_id"]
    if not QUARANTINE_ID.match(entry_id):
        raise QuarantineNotFound(f"no held message {entry_id!r}")
    return entry_id


def _entry_json(quarantine: Quarantine, entry: QuarantineEntry) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(entry)
    view["quarantine"] = quarantine.name
    view["why"] = _why(entry)
    return view


def _why(entry: QuarantineEntry) -> str:
    score = f", score {entry.score:.1f}" if entry.score is not None else ""
    details = ", ".join(f"{k} {v}" for k, v in sorted(entry.details.items()))
    return entry.reason + score + (f" ({details})" if details else "")


def _plugin_list(state: WebState, name: str, params: Any) -> tuple[Quarantine, list[Any]]:
    quarantine = _plugin_quarantine(state, name)
    query = str(params.get("q") or "")[:200]
    limit = max(1, min(int(params.get("limit") or 100), 1000))
    offset = max(0, int(params.get("offset") or 0))
    entries = quarantine.search(query, limit=limit, offset=offset)
    return quarantine, [_entry_json(quarantine, e) for e in entries]


def _plugin_view(state: WebState, name: str, entry_id: str) -> dict[str, Any]:
    quarantine = _plugin_quarantine(state, name)
    entry = quarantine.get(entry_id)
    return {
        **_entry_json(quarantine, entry),
        "title": quarantine.title,
        "can_learn": bool(quarantine.can_learn),
        **_message_view(quarantine.raw(entry_id)),
    }


def _quarantine_problem(request: Request, exc: QuarantineError) -> Response:
    return _error(request, 404 if isinstance(exc, QuarantineNotFound) else 409, str(exc))


# What each change does: (learn first, then release or delete).
_PLUGIN_ACTS: dict[str, tuple[str | None, str]] = {
    "release": (None, "release"),
    "delete": (None, "delete"),
    "release-as-ham": ("ham", "release"),
    "delete-as-spam": ("spam", "delete"),
}


async def _plugin_act(
    state: WebState, identity: Identity, name: str, entry_id: str, act: str
) -> dict[str, Any]:
    """Carry out ``act`` on one entry of the plugin quarantine ``name``, audited; what was
    done. Raises :class:`QuarantineError` (audited too when the classifier already learned)."""
    label, then = _PLUGIN_ACTS[act]
    learned: str | None = None
    try:
        quarantine = await asyncio.to_thread(_plugin_quarantine, state, name)
        if not QUARANTINE_ID.match(entry_id):
            raise QuarantineNotFound(f"no held message {entry_id!r}")
        entry = await asyncio.to_thread(quarantine.get, entry_id)
        if label is not None:
            if not quarantine.can_learn:
                raise QuarantineError(f"the {quarantine.title} cannot learn")
            learned = await quarantine.learn(
                entry_id, "ham" if label == "ham" else "spam", by=identity.name
            )
        if then == "release":
            done = await quarantine.release(entry_id)
        else:
            done = await quarantine.delete(entry_id)
    except QuarantineError as exc:
        if learned is not None:
            # The classifier changed even though the release or delete did not happen.
            state.audit.write(
                f"quarantine.{act}",
                identity.name,
                quarantine=name,
                id=entry_id,
                learned=learned,
                result=f"failed: {exc}",
            )
        raise
    state.audit.write(
        f"quarantine.{act}",
        identity.name,
        quarantine=name,
        id=entry_id,
        sender=entry.sender,
        recipients=entry.recipients,
        learned=learned,
        result=done,
    )
    return {"quarantine": name, "id": entry_id, "act": act, "learned": learned, "result": done}


async def _plugin_change(request: Request, act: str) -> dict[str, Any] | Response:
    """Carry out ``act`` on the entry in the path; what was done, or the error answer."""
    try:
        return await _plugin_act(
            request.state.web,
            request.state.identity,
            request.path_params["quarantine"],
            request.path_params["entry_id"],
            act,
        )
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)


async def api_plugin_quarantine(request: Request) -> Response:
    """A plugin quarantine's held messages, newest first: ``q`` (sender, recipient, subject
    or id contains it), ``limit`` (up to 1000), ``offset``."""
    state: WebState = request.state.web
    try:
        _, entries = await asyncio.to_thread(
            _plugin_list, state, request.path_params["quarantine"], request.query_params
        )
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    return JSONResponse(entries)


async def api_plugin_entry(request: Request) -> Response:
    """One message of a plugin quarantine: envelope, why it is held, decoded headers, text
    and attachments (never its HTML)."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(
            _plugin_view, state, request.path_params["quarantine"], _entry_id(request)
        )
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    return JSONResponse(view)


async def api_plugin_entry_raw(request: Request) -> Response:
    """A plugin quarantine's message as held, as a download (never shown inline)."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    try:
        entry_id = _entry_id(request)
        quarantine = await asyncio.to_thread(_plugin_quarantine, state, name)
        data = await asyncio.to_thread(quarantine.raw, entry_id)
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    identity: Identity = request.state.identity
    state.audit.write("quarantine.download", identity.name, quarantine=name, id=entry_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="quarantined-message.eml"'},
    )


def _api_change(act: str) -> Handler:
    async def handler(request: Request) -> Response:
        result = await _plugin_change(request, act)
        return result if isinstance(result, Response) else JSONResponse(result)

    return handler


def _form_change(act: str) -> Handler:
    async def handler(request: Request) -> Response:
        name = request.path_params["quarantine"]
        if act in _DELETES and (await _form_lists(request)).get("confirm") != ["yes"]:
            return await _confirm_page(
                request, f"/quarantines/{name}", [request.path_params["entry_id"]], act
            )
        result = await _plugin_change(request, act)
        if isinstance(result, Response):
            return result
        return _with_notice(
            request, RedirectResponse(f"/quarantines/{result['quarantine']}", 303), act, 1
        )

    return handler


api_plugin_release = _api_change("release")
api_plugin_release.__doc__ = """Send a plugin quarantine's message on to its original
recipients (the plugin's release: the gateway's delivery path, or a resubmission)."""
api_plugin_release_ham = _api_change("release-as-ham")
api_plugin_release_ham.__doc__ = """Teach the plugin's classifier the message is ham, then
release it (quarantines that can learn)."""
api_plugin_delete = _api_change("delete")
api_plugin_delete.__doc__ = """Delete a plugin quarantine's message for good."""
api_plugin_delete_spam = _api_change("delete-as-spam")
api_plugin_delete_spam.__doc__ = """Teach the plugin's classifier the message is spam, then
delete it (quarantines that can learn)."""
plugin_release_form = _form_change("release")
plugin_release_form.__doc__ = "Release from the page, then back to the list."
plugin_release_ham_form = _form_change("release-as-ham")
plugin_release_ham_form.__doc__ = "Learn as ham and release from the page."
plugin_delete_form = _form_change("delete")
plugin_delete_form.__doc__ = "Delete from the page, then back to the list."
plugin_delete_spam_form = _form_change("delete-as-spam")
plugin_delete_spam_form.__doc__ = "Learn as spam and delete from the page."


async def api_quarantine(request: Request) -> Response:
    """Held messages, newest first."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(_held_list, state))


async def api_held(request: Request) -> Response:
    """One held message: envelope, decoded headers, text, attachments (never its HTML)."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except HeldError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(view)


async def api_held_raw(request: Request) -> Response:
    """The held message as it arrived, as a download (never shown inline)."""
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        data, _ = await asyncio.to_thread(state.gateway.quarantine.original, held_id)
    except HeldError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    identity: Identity = request.state.identity
    state.audit.write("quarantine.download", identity.name, id=held_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="held-message.eml"'},
    )


async def _send_on(
    request: Request,
    param: str,
    audit: str,
    send: Callable[[WebState, str], Awaitable[str]],
    missing: type[Exception],
    conflict: tuple[type[Exception], ...] = (),
) -> str | Response:
    """Send a kept message (held, backed up) on to its recipients, audited; where it went, or
    the 404 when ``send`` says there is no such message, the 409 when it raises one of
    ``conflict`` (another release has it, or the delivery failed and it stays held)."""
    state: WebState = request.state.web
    key = request.path_params[param]
    try:
        where = await send(state, key)
    except conflict as exc:
        return _error(request, 409, str(exc))
    except missing as exc:
        return _error(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write(audit, identity.name, id=key, where=where)
    return where


async def _release(request: Request) -> str | Response:
    return await _send_on(
        request,
        "held_id",
        "quarantine.release",
        lambda state, key: state.gateway.release(key),
        HeldError,
        (HeldBusy, ReleaseFailed),
    )


async def api_release(request: Request) -> Response:
    """Send a held message on to its recipients."""
    result = await _release(request)
    return result if isinstance(result, Response) else JSONResponse({"released": result})


async def release_form(request: Request) -> Response:
    """Release from the page, then back to the list with a notice."""
    result = await _release(request)
    if isinstance(result, Response):
        return result
    return _with_notice(request, RedirectResponse("/quarantine", 303), "release", 1)


async def _delete(request: Request) -> Response | None:
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        await asyncio.to_thread(state.gateway.quarantine.delete, held_id)
    except HeldBusy as exc:
        return _error(request, 409, str(exc))
    except HeldError as exc:
        return _error(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write("quarantine.delete", identity.name, id=held_id)
    return None


async def api_delete(request: Request) -> Response:
    """Delete a held message for good."""
    return await _delete(request) or JSONResponse({"deleted": request.path_params["held_id"]})


async def delete_form(request: Request) -> Response:
    """Delete from the page once confirmed (``confirm=yes``; without it, the confirmation
    page), then back to the list with a notice."""
    if (await _form_lists(request)).get("confirm") != ["yes"]:
        return await _confirm_page(
            request, "/quarantine", [request.path_params["held_id"]], "delete"
        )
    failed = await _delete(request)
    return failed or _with_notice(request, RedirectResponse("/quarantine", 303), "delete", 1)


# -- bulk actions, confirmations, notices ----------------------------------------------------

# Acts that lose the message: a page form must confirm them (``confirm=yes``) first.
_DELETES = frozenset({"delete", "delete-as-spam"})
_BULK_MAX = 500
NOTICE_COOKIE = "mw_notice"
_NOTICES = {
    "release": "Released {n}.",
    "release-as-ham": "Released {n} and learned {them} as not spam.",
    "delete": "Deleted {n}.",
    "delete-as-spam": "Learned {n} as spam and deleted {them}.",
}


async def _form_lists(request: Request) -> dict[str, list[str]]:
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qs(body, keep_blank_values=True)


def _with_notice(
    request: Request, response: Response, act: str, done: int, failed: int = 0
) -> Response:
    """``response`` (a redirect) carrying what was done to the next page in a short-lived
    cookie: codes and counts only, so no text of a request is ever shown back."""
    response.set_cookie(
        NOTICE_COOKIE,
        f"{act}.{done}.{failed}",
        max_age=60,
        httponly=True,
        samesite="strict",
        secure=request.state.web.secure_cookies,
        path="/",
    )
    return response


def _notice(request: Request) -> tuple[str, str]:
    """The notice and error of the last act (from its cookie), ``("", "")`` when none."""
    raw = request.cookies.get(NOTICE_COOKIE, "")
    act, _, counts = raw.partition(".")
    done_text, _, failed_text = counts.partition(".")
    if act not in _NOTICES or not done_text.isdigit() or not failed_text.isdigit():
        return "", ""
    done, failed = int(done_text), int(failed_text)
    words = f"{done} message" + ("" if done == 1 else "s")
    notice = _NOTICES[act].format(n=words, them="it" if done == 1 else "them") if done else ""
    error = (
        f"{failed} message{'' if failed == 1 else 's'} could not be changed "
        "(see the application log)"
        if failed
        else ""
    )
    return notice, error


def _page_with_notice(request: Request, template: str, **context: Any) -> Response:
    notice, error = _notice(request)
    page = _page(request, template, notice=notice, error=error, **context)
    if request.cookies.get(NOTICE_COOKIE):
        page.delete_cookie(NOTICE_COOKIE, path="/")
    return page


def _entry_summaries(state: WebState, back: str, ids: list[str]) -> list[dict[str, Any]]:
    """Sender, recipients and subject of the messages a confirmation names (what the list
    already shows: never their text)."""
    found = []
    for key in ids:
        try:
            if back == "/quarantine":
                held = state.gateway.quarantine.get(key)
                found.append(
                    {
                        "id": key,
                        "sender": held.envelope.mail_from,
                        "recipients": held.envelope.rcpt_to,
                        "subject": held.subject,
                    }
                )
            else:
                quarantine = _plugin_quarantine(state, back.rsplit("/", 1)[-1])
                if not QUARANTINE_ID.match(key):
                    continue
                entry = quarantine.get(key)
                found.append(
                    {
                        "id": key,
                        "sender": entry.sender,
                        "recipients": entry.recipients,
                        "subject": entry.subject,
                    }
                )
        except (HeldError, QuarantineError):
            continue
    return found


async def _confirm_page(request: Request, back: str, ids: list[str], act: str) -> Response:
    """The step before a delete: what would go, and a button that confirms."""
    state: WebState = request.state.web
    entries = await asyncio.to_thread(_entry_summaries, state, back, ids)
    if not entries:
        return _error(request, 404, "none of the selected messages is held any more")
    action = f"{back}/bulk"
    return _page(request, "confirm.html", entries=entries, act=act, action=action, back=back)


async def _bulk(request: Request, back: str, acts: frozenset[str]) -> Response:
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    fields = await _form_lists(request)
    act = (fields.get("act") or [""])[0]
    ids = list(dict.fromkeys(fields.get("id", [])))[:_BULK_MAX]
    if act not in acts:
        return _error(request, 400, f"act is one of {', '.join(sorted(acts))}")
    if not ids:
        return _with_notice(request, RedirectResponse(back, 303), act, 0)
    if act in _DELETES and fields.get("confirm") != ["yes"]:
        return await _confirm_page(request, back, ids, act)
    done = failed = 0
    for key in ids:
        try:
            if back == "/quarantine":
                if act == "release":
                    where = await state.gateway.release(key)
                    state.audit.write("quarantine.release", identity.name, id=key, where=where)
                else:
                    await asyncio.to_thread(state.gateway.quarantine.delete, key)
                    state.audit.write("quarantine.delete", identity.name, id=key)
            else:
                await _plugin_act(state, identity, back.rsplit("/", 1)[-1], key, act)
            done += 1
        except (HeldError, QuarantineError) as exc:
            failed += 1
            state.audit.write(f"quarantine.{act}", identity.name, id=key, result=f"failed: {exc}")
    return _with_notice(request, RedirectResponse(back, 303), act, done, failed)


async def bulk_form(request: Request) -> Response:
    """Release or delete the held messages ticked on the list (``id`` repeated, ``act``);
    a delete shows a confirmation first."""
    return await _bulk(request, "/quarantine", frozenset({"release", "delete"}))


async def plugin_bulk_form(request: Request) -> Response:
    """The same for a plugin quarantine, with its learning acts."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    try:
        quarantine = await asyncio.to_thread(_plugin_quarantine, state, name)
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    acts = set(_PLUGIN_ACTS) if quarantine.can_learn else {"release", "delete"}
    return await _bulk(request, f"/quarantines/{name}", frozenset(acts))


# -- rules, settings, inventory, users -------------------------------------------------------


def _rules(state: WebState) -> list[Any]:
    return [msgspec.to_builtins(rule) for rule in state.gateway.config.rules]


async def api_rules(request: Request) -> Response:
    """The rules in order, as the config holds them: ``{"rules": [...]}``, the shape a PUT
    sends back."""
    return JSONResponse({"rules": _rules(request.state.web)})


class ConfigRefused(Exception):
    """A config change that was not written: why, and the HTTP status that says so."""

    def __init__(self, message: str, status: int, key: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key = key


def _config_table(state: WebState, section: str) -> dict[str, Any]:
    """What the config file itself holds for ``section`` (not the defaults filled in)."""
    source = state.gateway.config.source
    if not source:
        return {}
    document = tomlkit.parse(Path(source).read_text(encoding="utf-8"))
    table = document.get(section)
    value = table.unwrap() if table is not None else {}
    return value if isinstance(value, dict) else {}


def _write_config(state: WebState, key: str | tuple[str, str], value: Any) -> list[str]:
    """Set ``key`` (a section, or a section's key) of the config file to ``value``: validated
    whole, written atomically with the file's comments and other sections kept, then reloaded
    (rules swap at once). Returns the sections that need a restart; raises
    :class:`ConfigRefused` with the key named when the result would not load."""
    gateway = state.gateway
    source = gateway.config.source
    if not source:
        raise ConfigRefused("the gateway runs without a config file", 409)
    path = Path(source)
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    if key == "rules":
        table = tomlkit.aot()
        for rule in value:
            table.append(tomlkit.item(rule))
        document["rules"] = table
    elif isinstance(key, tuple):
        section, name = key
        if section not in document:
            document[section] = tomlkit.table()
        holder: Any = document[section]
        if value is None or value == {}:
            holder.pop(name, None)
        else:
            holder[name] = tomlkit.item(value)
    else:
        document[key] = tomlkit.item({k: v for k, v in value.items() if v is not None})
    text = tomlkit.dumps(document)
    try:
        parse_config(text, gateway.plugins.config_schemas(), source=source)
    except ConfigError as exc:
        raise ConfigRefused(str(exc), 422, exc.key) from exc
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    changed = gateway.reload_config()
    if os.environ.get("MAILWARDEN_WORKER") == "1":
        # The other workers reload when the supervisor passes SIGHUP on to them.
        os.kill(os.getppid(), signal.SIGHUP)
    state.refresh()
    return changed


def _rewrite_config(
    state: WebState, key: str | tuple[str, str], value: Any
) -> Response | list[str]:
    """:func:`_write_config` for the API: the refusal as a JSON answer."""
    try:
        return _write_config(state, key, value)
    except ConfigRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def api_rules_put(request: Request) -> Response:
    """Replace the rules with ``{"rules": [...]}`` (what GET returns; a bare list is taken
    too): validated whole, written to the config file (its comments and other sections kept),
    then swapped in without dropping connections; answers the new rules as GET does."""
    state: WebState = request.state.web
    try:
        body = json.loads(await request.body())
        rules = body if isinstance(body, list) else body["rules"]
        if not isinstance(rules, list) or not rules:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'send {"rules": [ {...}, ... ]}'}, status_code=400)
    result = _rewrite_config(state, "rules", rules)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("rules.edit", identity.name, rules=[r.get("name") for r in rules])
    return JSONResponse({"rules": _rules(state)})


# Sections of the mail transport (listeners, delivery, keys): ``mta.edit``, not
# ``settings.edit``, may change them.
_MTA_SECTIONS = frozenset({"smtp", "delivery", "spool", "tls", "dkim"})


def _sections(state: WebState) -> dict[str, type[msgspec.Struct]]:
    """Every section the web interface edits, with its schema, in page order."""
    from ..config import _CORE_SECTIONS

    core = ("gateway", "detectors", "events", "directory", "web", *sorted(_MTA_SECTIONS))
    schemas: dict[str, type[msgspec.Struct]] = {name: _CORE_SECTIONS[name] for name in core}
    schemas.update(sorted(state.gateway.plugins.config_schemas().items()))
    return schemas


def _section_value(config: Config, section: str) -> Any:
    return (
        getattr(config, section)
        if section in config.__struct_fields__
        else (config.plugins.get(section))
    )


# Who may give which roles is users.manage's business: a settings edit keeps these as they are.
_ACCESS_KEYS = ("roles", "groups")


def _keep_access(state: WebState, section: str, value: dict[str, Any]) -> str | None:
    """Carry ``[web] roles`` and ``groups`` over unchanged into a new ``web`` section, or say
    why not (the section tried to change them)."""
    if section != "web":
        return None
    current = _config_table(state, "web")
    for key in _ACCESS_KEYS:
        if key in value and value[key] != current.get(key, {}):
            return (
                f"web.{key} is changed under /api/roles and /api/users/groups "
                "(users.manage), not with the settings"
            )
        if key in current:
            value[key] = current[key]
    return None


async def _put_section(request: Request, *, mta: bool) -> Response:
    state: WebState = request.state.web
    section = request.path_params["section"]
    known = set(_sections(state))
    if section not in known or (section in _MTA_SECTIONS) != mta:
        where = "/api/mta/" if section in _MTA_SECTIONS else "/api/settings/"
        return JSONResponse(
            {
                "error": f"no section {section!r} here"
                + (f"; use {where}{section}" if section in known else "")
            },
            status_code=404,
        )
    try:
        value = json.loads(await request.body())
        if not isinstance(value, dict):
            raise TypeError
    except (ValueError, TypeError):
        return JSONResponse({"error": "send the section as a JSON object"}, status_code=400)
    refused = _keep_access(state, section, value)
    if refused:
        return JSONResponse({"error": refused}, status_code=403)
    result = _rewrite_config(state, section, value)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("settings.edit", identity.name, section=section, keys=sorted(value))
    return JSONResponse({"section": section, "restart_needed": section in result})


async def api_settings_put(request: Request) -> Response:
    """Replace one settings section (``gateway``, ``detectors``, ``events``, ``directory``,
    ``web`` or a plugin's, e.g. ``reputation`` for consent); validated like a config file.
    Rules apply at once; other sections at the next start (``restart_needed``)."""
    return await _put_section(request, mta=False)


async def api_mta_put(request: Request) -> Response:
    """Replace one mail-transport section (``smtp``, ``delivery``, ``spool``, ``tls``,
    ``dkim``); validated like a config file; applied at the next start."""
    return await _put_section(request, mta=True)


async def api_settings(request: Request) -> Response:
    """Every section of the running config; passwords and secrets masked, key files by path
    only (a private key is never shown)."""
    state: WebState = request.state.web
    data = msgspec.to_builtins(state.gateway.config)
    data.pop("rules", None)
    return JSONResponse(masked(data))


def _inventory(state: WebState) -> Any:
    from ..inventory import inventory

    return msgspec.to_builtins(inventory(state.gateway.config, state.gateway.plugins))


async def api_inventory(request: Request) -> Response:
    """The data inventory: every store of user data with its limits and current size."""
    return JSONResponse(await asyncio.to_thread(_inventory, request.state.web))


# -- users, roles, tokens --------------------------------------------------------------------


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


async def api_users(request: Request) -> Response:
    """Who may log in: local accounts with their roles, the directory and its group-to-role
    mapping, and the API tokens with their roles and scopes (never the tokens themselves)."""
    return JSONResponse(_users(request.state.web))


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
    roles = dict(_config_table(state, "web").get("roles", {}))
    existed = name in roles
    if permissions is None:
        if not existed:
            raise ConfigRefused(f"no custom role {name!r}", 404)
        del roles[name]
    else:
        roles[name] = sorted(set(permissions))
    _write_config(state, ("web", "roles"), roles)
    act = "role.delete" if permissions is None else "role.edit" if existed else "role.create"
    state.audit.write(act, who, role=name, permissions=permissions)


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


async def api_groups_put(request: Request) -> Response:
    """Replace the directory group-to-role mapping: ``{"group:NAME": ["Role", ...], ...}``."""
    state: WebState = request.state.web
    try:
        groups = json.loads(await request.body())
        if not isinstance(groups, dict):
            raise TypeError
    except (ValueError, TypeError):
        return JSONResponse({"error": 'send {"group:NAME": ["Role"], ...}'}, status_code=400)
    result = await asyncio.to_thread(_rewrite_config, state, ("web", "groups"), groups)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("groups.edit", identity.name, groups=groups)
    return JSONResponse(state.file_config.web.groups)


async def api_tokens(request: Request) -> Response:
    """API tokens: id, name, roles, scopes (the permissions the roles grant), created."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(state.auth.tokens))


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


async def api_token_revoke(request: Request) -> Response:
    """Revoke an API token by its id: it stops working at once, in every worker."""
    name = await asyncio.to_thread(_revoke_token, request)
    if name is None:
        return JSONResponse({"error": "no such token"}, status_code=404)
    return JSONResponse({"revoked": request.path_params["token_id"], "name": name})


# -- backup ----------------------------------------------------------------------------------


async def api_backups(request: Request) -> Response:
    """Backed-up messages, newest first: metadata only."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(backup_list, state.gateway))


async def api_backup(request: Request) -> Response:
    """One backup's metadata: time, reason, sender, recipients, subject, size, hash."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(
            backup_entry, state.gateway, request.path_params["backup_id"]
        )
    except BackupNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(view)


async def api_backup_raw(request: Request) -> Response:
    """The backed-up message as a download (never shown inline)."""
    state: WebState = request.state.web
    backup_id = request.path_params["backup_id"]
    try:
        data = await asyncio.to_thread(backup_raw, state.gateway, backup_id)
    except BackupNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    identity: Identity = request.state.identity
    state.audit.write("backup.download", identity.name, id=backup_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="backup-message.eml"'},
    )


async def _backup_release(request: Request) -> str | Response:
    return await _send_on(
        request,
        "backup_id",
        "backup.release",
        lambda state, key: release_backup(state.gateway, key),
        BackupNotFound,
    )


async def api_backup_release(request: Request) -> Response:
    """Send a backed-up copy to its recorded recipients (the copy stays in the backup)."""
    result = await _backup_release(request)
    return result if isinstance(result, Response) else JSONResponse({"released": result})


# -- signatures ------------------------------------------------------------------------------


async def api_signatures(request: Request) -> Response:
    """Signature databases and rule sets the detectors load, with their versions, as each
    plugin's ``mailwarden <group> info --json`` reports them."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(state.signatures.get))


async def api_openapi(request: Request) -> Response:
    """This API as an OpenAPI 3.1 document, with each operation's permission."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        if not spec.path.startswith("/api/"):
            continue
        handler = HANDLERS[spec.handler]
        for method in spec.methods:
            paths.setdefault(spec.path, {})[method.lower()] = {
                "operationId": spec.handler,
                "summary": (handler.__doc__ or "").strip().split("\n")[0],
                "x-permission": spec.permission,
                "x-permissions": list(spec.needs),
                "x-max-body": spec.max_body,
                "security": [] if spec.permission == PUBLIC else [{"bearer": []}, {"cookie": []}],
            }
    return JSONResponse(
        {
            "openapi": "3.1.0",
            "info": {"title": "mailwarden", "version": "1"},
            "paths": paths,
            "components": {
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "cookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
                }
            },
        }
    )


# -- pages -----------------------------------------------------------------------------------


def _dashboard(state: WebState, period: str) -> dict[str, Any]:
    now = time.time()
    buckets, width, _ = PERIODS[period]
    query = EventQuery(since=now - buckets * width, limit=1_000_000)
    stats = trends(state.gateway.events.search(query), period, now)
    actions = tuple(a for a in ACTIONS if any(a in row for row in stats["by_bucket"]))
    stats["actions_chart"] = Markup(
        bar_chart(stats, stats["by_bucket"], actions or ("deliver",), "messages by action")
    )
    stats["kinds_chart"] = Markup(
        bar_chart(stats, stats["kinds"], ("virus", "spam"), "spam and virus messages")
    )
    stats["legend"] = actions
    stats["spool"] = len(state.gateway.spool.ids())
    stats["held"] = len(state.gateway.quarantine)
    stats["redis"] = redis_status(state.gateway)
    return stats


async def dashboard_page(request: Request) -> Response:
    """Trends over 24 hours, 7 or 30 days (``period``): messages by action, spam and
    viruses, top senders, viruses and rule hits, the spool and the quarantine, signatures."""
    state: WebState = request.state.web
    period = request.query_params.get("period", "24h")
    if period not in PERIODS:
        period = "24h"
    stats = await asyncio.to_thread(_dashboard, state, period)
    signatures = await asyncio.to_thread(state.signatures.get)
    return _page(request, "dashboard.html", stats=stats, periods=PERIODS, signatures=signatures)


async def events_page(request: Request) -> Response:
    """Filters for every indexed field, a page of results, and export links."""
    state: WebState = request.state.web
    wanted = EventFilter(request.query_params)
    page, per_page = wanted.page, wanted.per_page
    offset = (page - 1) * per_page
    query = wanted.query(offset + per_page + 1)
    found = await asyncio.to_thread(state.gateway.events.search, query)
    events = found[offset : offset + per_page]
    return _page(
        request,
        "events.html",
        events=events,
        params=request.query_params,
        errors=wanted.errors,
        actions=ACTIONS,
        statuses=STATUSES,
        page=page,
        newer=wanted.link(page=page - 1) if page > 1 else None,
        older=wanted.link(page=page + 1) if len(found) > offset + per_page else None,
        export=wanted.link(page=None, per_page=None),
        first=offset + 1,
        time=time,
    )


async def events_export(request: Request) -> Response:
    """The events the filters match (up to 10,000, newest first) as a CSV or JSON download
    (``format=csv|json``)."""
    state: WebState = request.state.web
    wanted = EventFilter(request.query_params)
    shape = request.query_params.get("format", "csv")
    if shape not in ("csv", "json"):
        return _error(request, 400, "format is csv or json")
    query = wanted.query(EXPORT_LIMIT)
    if wanted.errors:
        return _error(request, 400, "; ".join(wanted.errors.values()))
    events = await asyncio.to_thread(state.gateway.events.search, query)
    identity: Identity = request.state.identity
    state.audit.write("events.export", identity.name, format=shape, records=len(events))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    disposition = {"Content-Disposition": f'attachment; filename="events-{stamp}.{shape}"'}
    if shape == "json":
        body = msgspec.json.encode(events)
        return Response(body, media_type="application/json", headers=disposition)
    return Response(event_csv(events), media_type="text/csv; charset=utf-8", headers=disposition)


def _find_event(state: WebState, event_id: str, hint: str | None) -> Any:
    store = state.gateway.events.store
    try:
        moment = float(hint) if hint else None
    except ValueError:
        moment = None
    if moment is not None:
        # The list links carry the event's time: a walk of a two-second window.
        near = store.select(
            since=moment - 1, until=moment + 1, predicate=lambda e: e.id == event_id, limit=1
        )
        if near:
            return near[0]
    found = store.select(predicate=lambda e: e.id == event_id, limit=1)
    return found[0] if found else None


async def event_page(request: Request) -> Response:
    """One message event: envelope, verdict, every finding with its score, the detectors'
    timings and the SMTP reply sent (never the message's text)."""
    state: WebState = request.state.web
    event_id = request.path_params["event_id"][:200]
    event = await asyncio.to_thread(_find_event, state, event_id, request.query_params.get("t"))
    if event is None:
        return _error(request, 404, f"no message event {event_id!r} (it may have aged out)")
    timings = sorted(event.timings_ms.items(), key=lambda item: -item[1])
    longest = max((ms for _, ms in timings), default=0.0) or 1.0
    return _page(
        request,
        "event.html",
        e=event,
        timings=[(name, ms, 100.0 * ms / longest) for name, ms in timings],
        human_bytes=human_bytes,
        time=time,
    )


def _matches(entry: dict[str, Any], query: str) -> bool:
    words = query.lower().split()
    fields = [entry["id"], entry["sender"] or "", entry["subject"] or "", entry["reason"]]
    text = " ".join([*fields, entry["rule"], *entry["recipients"]]).lower()
    return all(word in text for word in words)


async def quarantine_page(request: Request) -> Response:
    """Held messages with a search box and bulk release/delete."""
    query = str(request.query_params.get("q") or "")[:200]
    held = await asyncio.to_thread(_held_list, request.state.web)
    total = len(held)
    if query:
        held = [h for h in held if _matches(h, query)]
    stores = await asyncio.to_thread(_quarantines, request.state.web)
    plugins = [s for s in stores if s["owner"] != "core"]
    return _page_with_notice(
        request,
        "quarantine.html",
        held=held,
        total=total,
        query=query,
        others=plugins,
        human_bytes=human_bytes,
        time=time,
    )


async def held_page(request: Request) -> Response:
    """One held message, shown as text."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except HeldError as exc:
        return _error(request, 404, str(exc))
    held_id = quote(view["id"], safe="")
    view["why"] = f"{view['reason']} (rule {view['rule']})"
    return _page(
        request,
        "held.html",
        held=view,
        base=f"/quarantine/{held_id}",
        raw=f"/api/quarantine/{held_id}/raw",
        back="/quarantine",
        can_learn=False,
        time=time,
    )


async def plugin_quarantine_page(request: Request) -> Response:
    """A plugin quarantine's held messages, with a search box."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    params = request.query_params
    try:
        quarantine, entries = await asyncio.to_thread(_plugin_list, state, name, params)
    except ValueError as exc:
        return _error(request, 400, f"bad query: {exc}")
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    return _page_with_notice(
        request,
        "plugin_quarantine.html",
        quarantine=quarantine,
        entries=entries,
        human_bytes=human_bytes,
        query=params.get("q") or "",
        offset=int(params.get("offset") or 0),
        time=time,
    )


async def plugin_entry_page(request: Request) -> Response:
    """One message of a plugin quarantine, shown as text, with its actions."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    try:
        view = await asyncio.to_thread(_plugin_view, state, name, _entry_id(request))
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    view["held_at"] = view["stored_at"]
    return _page(
        request,
        "held.html",
        held=view,
        base=f"/quarantines/{name}/{view['id']}",
        raw=f"/api/quarantines/{name}/{view['id']}/raw",
        back=f"/quarantines/{name}",
        can_learn=view["can_learn"],
        time=time,
    )


async def rules_page(request: Request) -> Response:
    """The rules in order."""
    return _page(request, "rules.html", rules=_rules(request.state.web))


async def inventory_page(request: Request) -> Response:
    """The data inventory."""
    stores = await asyncio.to_thread(_inventory, request.state.web)
    return _page(request, "inventory.html", stores=stores)


async def backup_page(request: Request) -> Response:
    """Backed-up messages."""
    state: WebState = request.state.web
    entries = await asyncio.to_thread(backup_list, state.gateway)
    return _page(request, "backup.html", entries=entries, time=time)


async def backup_entry_page(request: Request) -> Response:
    """One backup's metadata, with release and download for backup.manage."""
    state: WebState = request.state.web
    try:
        entry = await asyncio.to_thread(
            backup_entry, state.gateway, request.path_params["backup_id"]
        )
    except BackupNotFound as exc:
        return _error(request, 404, str(exc))
    return _page(request, "backup_entry.html", entry=entry, time=time)


async def backup_release_form(request: Request) -> Response:
    """Release a backup from the page, then back to the list."""
    result = await _backup_release(request)
    return result if isinstance(result, Response) else RedirectResponse("/backup", 303)


def _forms(state: WebState, *, mta: bool, open_section: str | None = None) -> list[dict[str, Any]]:
    running = state.gateway.config
    forms = []
    for section, schema in _sections(state).items():
        if (section in _MTA_SECTIONS) != mta:
            continue
        current = _section_value(state.file_config, section)
        if current is None:
            current = msgspec.convert({}, schema)
        forms.append(
            {
                "section": section,
                "doc": Markup(rest_text(_section_doc(section, schema.__doc__ or ""))),
                "open": section == open_section,
                "fields": form_fields(schema, current),
                # Saved but not in force until the next start.
                "pending": msgspec.to_builtins(current)
                != msgspec.to_builtins(_section_value(running, section) or current),
            }
        )
    return forms


def _section_doc(section: str, doc: str) -> str:
    # The docstrings start with "``[section]``: " for the configuration reference; the page
    # already heads each form with the section's name.
    text = doc.strip().removeprefix(f"``[{section}]``:").strip()
    return text[:1].upper() + text[1:]


def _field_error(section: str, message: str, key: str | None) -> dict[str, str]:
    """The field of ``section`` an error is about (from the config error's key, or the
    ``section.key`` it names), so the page shows the message beside that input."""
    found = re.search(rf"\b{re.escape(section)}\.(\w+)", key or message)
    if not found:
        return {}
    # Beside the field, the file and line add nothing, and msgspec's `type` quoting would
    # read as stray markup.
    text = re.sub(r"^\S+:\d+: ", "", message).replace("`", "")
    text = re.sub(r"^\[([\w.\[\]]+)\] ", r"\1: ", text)
    return {found.group(1): text[:1].lower() + text[1:] if text[:1].isupper() else text}


def _settings_page(
    request: Request,
    *,
    mta: bool,
    status: int = 200,
    field_errors: dict[str, str] | None = None,
    submitted: dict[str, str] | None = None,
    **messages: str,
) -> HTMLResponse:
    state: WebState = request.state.web
    wanted = request.query_params.get("section") or messages.get("failed") or messages.get("saved")
    page = _page(
        request,
        "settings.html",
        forms=_forms(state, mta=mta, open_section=wanted),
        field_errors=field_errors or {},
        submitted=submitted or {},
        field_unit=field_unit,
        mta=mta,
        action="/mta" if mta else "/settings",
        permission="mta.edit" if mta else "settings.edit",
        **messages,
    )
    page.status_code = status
    return page


async def settings_page(request: Request) -> Response:
    """A form per settings section (the core's and each plugin's), from its config schema;
    secrets are never shown."""
    return _settings_page(request, mta=False)


async def mta_page(request: Request) -> Response:
    """A form per mail-transport section (listeners, delivery, spool, TLS, DKIM); private
    keys are named by their file only."""
    return _settings_page(request, mta=True)


def _consent(section: str, changed: dict[str, Any], current: Any, who: str) -> None:
    # Consent records who agreed and when: the form fills both in when they are left empty.
    if section == "reputation" and changed.get("consent") is True:
        if not (changed.get("consent_by") or getattr(current, "consent_by", "")):
            changed["consent_by"] = who
        if not (changed.get("consent_at") or getattr(current, "consent_at", "")):
            changed["consent_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _section_form(request: Request, *, mta: bool) -> Response:
    state: WebState = request.state.web
    section = request.path_params["section"]
    schemas = _sections(state)
    if section not in schemas or (section in _MTA_SECTIONS) != mta:
        return _error(request, 404, f"no section {section!r} here")
    form = await _form(request)
    schema = schemas[section]
    current = _section_value(state.file_config, section) or msgspec.convert({}, schema)
    identity: Identity = request.state.identity
    try:
        changed = changed_values(section, schema, current, form)
    except FormError as exc:
        errors = _field_error(section, str(exc), None)
        return _settings_page(
            request,
            mta=mta,
            status=422,
            error=str(exc),
            failed=section,
            field_errors=errors,
            submitted=form,
        )
    if not changed:
        return _settings_page(
            request, mta=mta, notice=f"[{section}]: nothing changed", saved=section
        )
    _consent(section, changed, current, identity.name)
    value = {**_config_table(state, section), **changed}
    refused = _keep_access(state, section, value)
    if refused:
        return _settings_page(request, mta=mta, status=403, error=refused, failed=section)
    try:
        restart = await asyncio.to_thread(_write_config, state, section, value)
    except ConfigRefused as exc:
        errors = _field_error(section, str(exc), exc.key)
        return _settings_page(
            request,
            mta=mta,
            status=exc.status,
            error=str(exc),
            failed=section,
            field_errors=errors,
            submitted=form,
        )
    state.audit.write("settings.edit", identity.name, section=section, keys=sorted(changed))
    notice = f"[{section}] saved: {', '.join(sorted(changed))}"
    if section in restart:
        notice += " (applies at the next start)"
    return _settings_page(request, mta=mta, notice=notice, saved=section)


async def settings_form(request: Request) -> Response:
    """Save one settings section from its form: validated like a config file."""
    return await _section_form(request, mta=False)


async def mta_form(request: Request) -> Response:
    """Save one mail-transport section from its form."""
    return await _section_form(request, mta=True)


def _users_page(request: Request, *, status: int = 200, **messages: str) -> HTMLResponse:
    state: WebState = request.state.web
    page = _page(
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


# -- the end user's digest links (no login: the signed token is the permission) -------------


async def _digest_target(
    request: Request,
) -> tuple[DigestLink, Quarantine, QuarantineEntry] | Response:
    state: WebState = request.state.web
    link = await asyncio.to_thread(state.digest.check, request.path_params["token"])
    if isinstance(link, str):
        # Not a permission refused: a link that names nothing (any more).
        return _error(request, 410 if "expired" in link else 404, link)
    try:
        quarantine = await asyncio.to_thread(_plugin_quarantine, state, link.quarantine)
        entry = await asyncio.to_thread(quarantine.get, link.entry_id)
    except QuarantineError:
        return _error(request, 404, "this message is no longer held (released, deleted or expired)")
    if link.recipient not in (r.lower() for r in entry.recipients):
        return _error(request, 404, "this message is not held for you")
    if link.recipient in await asyncio.to_thread(_digest_done(state).recipients, *_key(link)):
        return _error(request, 404, "you have already released or deleted this message")
    return link, quarantine, entry


def _digest_done(state: WebState) -> DigestDone:
    return DigestDone(state.digest.path.parent)


def _key(link: DigestLink) -> tuple[str, str]:
    return link.quarantine, link.entry_id


async def digest_page(request: Request) -> Response:
    """What a digest link would do, with the button that does it (opening the link alone
    changes nothing: link scanners open every link)."""
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, _, entry = found
    return _page(request, "digest.html", link=link, entry=entry, done=None, time=time)


async def digest_form(request: Request) -> Response:
    """Carry out a digest link: release the message to that recipient alone, or delete it
    (for a message held for others too, it stays held for them)."""
    state: WebState = request.state.web
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, quarantine, entry = found
    done_by = _digest_done(state)
    where = ""
    try:
        if link.act == "release":
            raw = await asyncio.to_thread(quarantine.raw, entry.id)
            envelope = Envelope(mail_from=entry.sender, rcpt_to=[link.recipient])
            where = await state.gateway.deliver_released(raw, envelope)
        acted = await asyncio.to_thread(done_by.mark, *_key(link), link.recipient)
        if {r.lower() for r in entry.recipients} <= acted:
            # The last recipient has acted: the message leaves the quarantine.
            await quarantine.delete(entry.id)
            await asyncio.to_thread(done_by.forget, *_key(link))
    except QuarantineError as exc:
        return _quarantine_problem(request, exc)
    done = "released to you" if link.act == "release" else "deleted"
    state.audit.write(
        f"digest.{link.act}",
        link.recipient,
        quarantine=link.quarantine,
        id=entry.id,
        sender=entry.sender,
        where=where or None,
        client=_client(request),
    )
    return _page(request, "digest.html", link=link, entry=entry, done=done, time=time)


async def static_file(request: Request) -> Response:
    """The stylesheet (served locally: no CDN)."""
    name = request.path_params["name"]
    if name != "app.css":
        return Response("not found", status_code=404)
    css = files("mailwarden.web").joinpath("static", "app.css").read_text(encoding="utf-8")
    return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


HANDLERS: dict[str, Handler] = {
    name: value
    for name, value in dict(globals()).items()
    if callable(value) and any(spec.handler == name for spec in ROUTES)
}


def create_app(state: WebState) -> Starlette:
    """The application for ``state``'s gateway; every route from the permission table."""
    missing = sorted({spec.handler for spec in ROUTES} - set(HANDLERS))
    if missing:
        raise RuntimeError(f"routes without handlers: {missing}")
    routes = [
        Route(
            spec.path,
            _guard(state, spec, HANDLERS[spec.handler]),
            methods=list(spec.methods),
            name=f"{spec.handler}",
        )
        for spec in ROUTES
    ]
    return Starlette(routes=routes)

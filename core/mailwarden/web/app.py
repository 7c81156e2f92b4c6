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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mailwarden_native import decode_header, parse

from ..config import parse_config
from ..errors import ConfigError
from ..events import EventQuery
from ..quarantine import QuarantineError
from .audit import AuditLog
from .auth import Identity, WebAuth
from .permissions import AUTHENTICATED, PUBLIC, ROUTES, RouteSpec

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = ["SESSION_COOKIE", "WebState", "create_app"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "mw_session"
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
_SECRET_KEYS = {"bind_password", "password", "token", "secret"}

Handler = Callable[[Request], Awaitable[Response]]


class WebState:
    """What the handlers share: the gateway, accounts and sessions, the audit log."""

    def __init__(self, gateway: Gateway, *, secure_cookies: bool) -> None:
        self.gateway = gateway
        cfg = gateway.config.web
        self.auth = WebAuth(
            gateway.config.home / "web",
            session_seconds=cfg.session_hours * 3600,
            custom_roles=cfg.roles,
            login_attempts=cfg.login_attempts,
        )
        self.audit = AuditLog(
            gateway.config.home / "web" / "audit.jsonl",
            app_log=gateway.stores.app_log,
            auth_log=gateway.stores.auth_log,
        )
        self.secure_cookies = secure_cookies
        self.templates = _templates()


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
    # URL-encoded forms only (no uploads here), parsed without an extra dependency.
    body = (await request.body())[:65536].decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(body).items()}


def _guard(state: WebState, spec: RouteSpec, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        identity = _identify(state, request)
        request.state.identity = identity
        request.state.web = state
        if spec.permission != PUBLIC:
            if identity is None:
                if _wants_json(request):
                    return JSONResponse({"error": "authentication required"}, status_code=401)
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            if spec.permission != AUTHENTICATED and not identity.may(spec.permission):
                return _error(request, 403, f"this needs the {spec.permission} permission")
            if request.method not in _SAFE_METHODS:
                token = request.headers.get("x-csrf-token", "")
                if not token and not _wants_json(request):
                    token = (await _form(request)).get("csrf", "")
                if not state.auth.check_csrf(identity, token):
                    return _error(request, 403, "missing or wrong CSRF token")
        response = await handler(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

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
    keys = (f"user:{name.lower()}", f"client:{client}")
    wait = state.auth.throttle.retry_after(*keys)
    if wait > 0:
        return f"too many failed logins; try again in {int(wait) + 1} s"
    identity = await asyncio.to_thread(state.auth.local_login, name, password)
    if identity is None and "@" in name:
        identity = await asyncio.to_thread(_directory_login, state, name, password)
    if identity is None:
        state.auth.throttle.failed(*keys)
        state.audit.write("login.failed", name, client=client)
        return "wrong name or password"
    state.auth.throttle.succeeded(*keys)
    state.audit.write("login", identity.name, client=client, source=identity.source)
    return identity


def _directory_login(state: WebState, address: str, password: str) -> Identity | None:
    from ..directory.model import DirectoryError
    from ..directory.names import group_key

    directory = state.gateway.directory
    if directory is None:
        return None
    try:
        entry = directory.client.lookup(address)
        if entry is None or not directory.client.check_password(entry, password):
            return None
    except DirectoryError as exc:
        log.warning("directory login for %s failed: %s", address, exc)
        return None
    keys = entry.group_keys()
    roles = sorted(
        {
            role
            for pattern, mapped in state.gateway.config.web.groups.items()
            if group_key(pattern.removeprefix("group:")) in keys
            for role in mapped
        }
    )
    return state.auth.identity_for(address, tuple(roles), "directory")


def _session_response(state: WebState, identity: Identity, response: Response) -> Response:
    response.set_cookie(
        SESSION_COOKIE,
        state.auth.new_session(identity),
        max_age=int(state.auth.session_seconds),
        httponly=True,
        secure=state.secure_cookies,
        samesite="strict",
        path="/",
    )
    return response


async def login_page(request: Request) -> Response:
    """The login form."""
    return _page(request, "login.html", error="", next=request.query_params.get("next", "/"))


def _local_target(target: str) -> str:
    # Only paths of this site: "//evil.example" and "https://..." would leave it.
    return target if target.startswith("/") and not target.startswith("//") else "/"


async def login_form(request: Request) -> Response:
    """Log in from the form; a fresh session cookie on success."""
    state: WebState = request.state.web
    form = await _form(request)
    target = _local_target(form.get("next", "/"))
    result = await _login(state, form.get("name", ""), form.get("password", ""), _client(request))
    if isinstance(result, str):
        page = _page(request, "login.html", error=result, next=target)
        page.status_code = 429 if result.startswith("too many") else 401
        return page
    return _session_response(state, result, RedirectResponse(target, status_code=303))


async def api_login(request: Request) -> Response:
    """Log in with ``{"name", "password"}``; the session cookie and the CSRF token."""
    state: WebState = request.state.web
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
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(state.auth.session_seconds),
        httponly=True,
        secure=state.secure_cookies,
        samesite="strict",
        path="/",
    )
    return response


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
        since=time.time() - hours * 3600 if hours else number("since"),
        until=number("until"),
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
    ``action``, ``message_id``, ``client``, ``since``/``until`` (Unix time) or ``hours``."""
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


# -- quarantine ------------------------------------------------------------------------------


def _held_view(state: WebState, held_id: str) -> dict[str, Any]:
    held = state.gateway.quarantine.get(held_id)
    original, _ = state.gateway.quarantine.original(held_id)
    message = parse(original)
    headers = [(name, decode_header(value)) for name, value in message.headers]
    texts = [part.text() for part in message.leaves() if part.content_type.startswith("text/")]
    attachments = [
        {"name": part.filename, "type": part.detected_type, "size": len(part.decoded())}
        for part in message.attachments()
    ]
    return {
        "id": held.id,
        "held_at": held.held_at,
        "size": held.size,
        "sender": held.envelope.mail_from,
        "recipients": held.envelope.rcpt_to,
        "rule": held.rule,
        "reason": held.reason,
        "subject": held.subject,
        "headers": headers,
        # Text only: HTML parts are shown as their text, never rendered.
        "text": "\n\n".join(texts)[:200_000],
        "attachments": attachments,
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


async def api_quarantine(request: Request) -> Response:
    """Held messages, newest first."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(_held_list, state))


async def api_held(request: Request) -> Response:
    """One held message: envelope, decoded headers, text, attachments (never its HTML)."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except QuarantineError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(view)


async def api_held_raw(request: Request) -> Response:
    """The held message as it arrived, as a download (never shown inline)."""
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        data, _ = await asyncio.to_thread(state.gateway.quarantine.original, held_id)
    except QuarantineError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    identity: Identity = request.state.identity
    state.audit.write("quarantine.download", identity.name, id=held_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="held-message.eml"'},
    )


async def _release(request: Request) -> str | Response:
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        where = await state.gateway.release(held_id)
    except QuarantineError as exc:
        return _error(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write("quarantine.release", identity.name, id=held_id, where=where)
    return where


async def api_release(request: Request) -> Response:
    """Send a held message on to its recipients."""
    result = await _release(request)
    return result if isinstance(result, Response) else JSONResponse({"released": result})


async def release_form(request: Request) -> Response:
    """Release from the page, then back to the list."""
    result = await _release(request)
    return result if isinstance(result, Response) else RedirectResponse("/quarantine", 303)


async def _delete(request: Request) -> Response | None:
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        await asyncio.to_thread(state.gateway.quarantine.delete, held_id)
    except QuarantineError as exc:
        return _error(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write("quarantine.delete", identity.name, id=held_id)
    return None


async def api_delete(request: Request) -> Response:
    """Delete a held message for good."""
    return await _delete(request) or JSONResponse({"deleted": request.path_params["held_id"]})


async def delete_form(request: Request) -> Response:
    """Delete from the page, then back to the list."""
    return await _delete(request) or RedirectResponse("/quarantine", 303)


# -- rules, settings, inventory, users -------------------------------------------------------


def _rules(state: WebState) -> list[Any]:
    return [msgspec.to_builtins(rule) for rule in state.gateway.config.rules]


async def api_rules(request: Request) -> Response:
    """The rules in order, as the config holds them."""
    return JSONResponse(_rules(request.state.web))


def _rewrite_config(state: WebState, key: str, value: Any) -> Response | list[str]:
    """Set ``key`` of the config file to ``value``: validated whole, written atomically with
    the file's comments and other sections kept, then reloaded (rules swap at once). Returns
    the sections that need a restart, or the refusal."""
    gateway = state.gateway
    source = gateway.config.source
    if not source:
        return JSONResponse({"error": "the gateway runs without a config file"}, status_code=409)
    path = Path(source)
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    if key == "rules":
        table = tomlkit.aot()
        for rule in value:
            table.append(tomlkit.item(rule))
        document["rules"] = table
    else:
        document[key] = tomlkit.item(value)
    text = tomlkit.dumps(document)
    try:
        parse_config(text, gateway.plugins.config_schemas(), source=source)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    changed = gateway.reload_config()
    if os.environ.get("MAILWARDEN_WORKER") == "1":
        # The other workers reload when the supervisor passes SIGHUP on to them.
        os.kill(os.getppid(), signal.SIGHUP)
    return changed


async def api_rules_put(request: Request) -> Response:
    """Replace the rules with ``{"rules": [...]}``: validated whole, written to the config file
    (its comments and other sections kept), then swapped in without dropping connections."""
    state: WebState = request.state.web
    try:
        rules = json.loads(await request.body())["rules"]
        if not isinstance(rules, list) or not rules:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'send {"rules": [ {...}, ... ]}'}, status_code=400)
    result = _rewrite_config(state, "rules", rules)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("rules.edit", identity.name, rules=[r.get("name") for r in rules])
    return JSONResponse(_rules(state))


# Sections of the mail transport (listeners, delivery, keys): ``mta.edit``, not
# ``settings.edit``, may change them.
_MTA_SECTIONS = frozenset({"smtp", "delivery", "spool", "tls", "dkim"})


async def _put_section(request: Request, *, mta: bool) -> Response:
    state: WebState = request.state.web
    section = request.path_params["section"]
    known = set(state.gateway.plugins.config_schemas()) | {
        "gateway",
        "detectors",
        "events",
        "directory",
        "web",
        *_MTA_SECTIONS,
    }
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


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("********" if k in _SECRET_KEYS and v else _masked(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


async def api_settings(request: Request) -> Response:
    """Every section of the running config; passwords and secrets masked, key files by path
    only (a private key is never shown)."""
    state: WebState = request.state.web
    data = msgspec.to_builtins(state.gateway.config)
    data.pop("rules", None)
    return JSONResponse(_masked(data))


def _inventory(state: WebState) -> Any:
    from ..inventory import inventory

    return msgspec.to_builtins(inventory(state.gateway.config, state.gateway.plugins))


async def api_inventory(request: Request) -> Response:
    """The data inventory: every store of user data with its limits and current size."""
    return JSONResponse(await asyncio.to_thread(_inventory, request.state.web))


async def api_users(request: Request) -> Response:
    """Local accounts with their roles, and the directory group mapping."""
    state: WebState = request.state.web
    return JSONResponse({"local": state.auth.users(), "groups": state.gateway.config.web.groups})


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


def _chart(stats: dict[str, Any]) -> str:
    """Messages per hour as an inline SVG (server-side: the pages run no script)."""
    hours = stats["by_hour"]
    top = max((sum(h.values()) for h in hours), default=0) or 1
    colours = {"deliver": "#4a7bb7", "quarantine": "#d9a030", "reject": "#c0392b"}
    bars = []
    for i, hour in enumerate(hours):
        y = 120.0
        for action, count in sorted(hour.items()):
            height = 110.0 * count / top
            y -= height
            colour = colours.get(action, "#888888")
            bars.append(
                f'<rect x="{10 + i * 24}" y="{y:.1f}" width="20" height="{height:.1f}" '
                f'fill="{colour}"><title>{count} {action}</title></rect>'
            )
    axis = (
        '<line x1="8" y1="121" x2="586" y2="121" stroke="#999"/>'
        '<text x="8" y="138" font-size="11">24 h ago</text>'
        '<text x="556" y="138" font-size="11">now</text>'
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="600" height="142" role="img" '
        'aria-label="messages per hour">' + "".join(bars) + axis + "</svg>"
    )


async def dashboard_page(request: Request) -> Response:
    """Traffic and verdicts of the last 24 hours."""
    state: WebState = request.state.web
    stats = await asyncio.to_thread(_stats, state)
    held = await asyncio.to_thread(len, state.gateway.quarantine)
    return _page(request, "dashboard.html", stats=stats, chart=_chart(stats), held=held)


async def events_page(request: Request) -> Response:
    """Search form and results."""
    state: WebState = request.state.web
    params = request.query_params
    try:
        query = _query({**params, "limit": params.get("limit") or "200"})
    except ValueError:
        query = EventQuery(limit=200)
    events = await asyncio.to_thread(state.gateway.events.search, query)
    return _page(request, "events.html", events=events, params=params, time=time)


async def quarantine_page(request: Request) -> Response:
    """Held messages."""
    held = await asyncio.to_thread(_held_list, request.state.web)
    return _page(request, "quarantine.html", held=held, time=time)


async def held_page(request: Request) -> Response:
    """One held message, shown as text."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except QuarantineError as exc:
        return _error(request, 404, str(exc))
    return _page(request, "held.html", held=view, time=time)


async def rules_page(request: Request) -> Response:
    """The rules in order."""
    return _page(request, "rules.html", rules=_rules(request.state.web))


async def inventory_page(request: Request) -> Response:
    """The data inventory."""
    stores = await asyncio.to_thread(_inventory, request.state.web)
    return _page(request, "inventory.html", stores=stores)


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

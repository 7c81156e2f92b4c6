"""The application and authentication logs, as pages and through the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .. import api_types as T
from ..api_types import api
from ..respond import error_response, render
from ..route import declared
from ..state import WebState


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
        return error_response(request, 400, f"bad query: {exc}")


@api(T.APP_LOG, query=T.AppLogQuery)
async def api_app_log(request: Request) -> Response:
    """The application event log, newest first: ``kind`` (admin, login, update, error, start,
    stop), ``actor``, ``hours`` or ``since`` (Unix time), ``limit`` (up to 1000)."""
    found = await _log_records(request, _app_log)
    if isinstance(found, Response):
        return found
    return Response(msgspec.json.encode(found), media_type="application/json")


@api(T.AUTH_LOG, query=T.AuthLogQuery)
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
    return render(
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


ROUTES = declared(
    app_log_page,
    auth_log_page,
    api_app_log,
    api_auth_log,
)

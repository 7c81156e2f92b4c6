"""The starlette application: pages and REST API over one gateway, guarded by permissions.

Every route comes from the route table (:data:`.routes.ROUTES`: each area's handlers under
``routes/``, with the permission :data:`~.permissions.ROUTES` declares for each);
:func:`create_app` wraps each handler in the guard that authenticates (bearer token or session
cookie), checks the declared permission and, for anything that changes state, the CSRF token.
Pages are rendered on the server with Jinja2 (autoescaping on) and need no JavaScript; a
message's own HTML is never rendered.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route as Mounted

from .auth import Identity
from .permissions import PUBLIC, RouteSpec
from .permissions import ROUTES as DECLARED
from .respond import SESSION_COOKIE, error_response, read_form, wants_json
from .route import Handler
from .routes import ROUTES, Route
from .routes.auth import still_in_groups
from .state import WebState, web_auth

__all__ = ["SESSION_COOKIE", "WebState", "create_app", "web_auth"]

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


def _identify(state: WebState, request: Request) -> Identity | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return state.auth.token_identity(header[7:].strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    return state.auth.session_identity(cookie) if cookie else None


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
    response = error_response(request, 413, f"the request body is limited to {limit} bytes here")
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
            if not await asyncio.to_thread(still_in_groups, state, identity):
                state.auth.revoke(identity)
                identity = None
        request.state.identity = identity
        if spec.permission != PUBLIC:
            if identity is None:
                if wants_json(request):
                    return JSONResponse({"error": "authentication required"}, status_code=401)
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            for permission in spec.needs:
                if not identity.may(permission):
                    return error_response(request, 403, f"this needs the {permission} permission")
            if request.method not in _SAFE_METHODS:
                token = request.headers.get("x-csrf-token", "")
                if not token and not wants_json(request):
                    token = (await read_form(request)).get("csrf", "")
                if not state.auth.check_csrf(identity, token):
                    return error_response(request, 403, "missing or wrong CSRF token")
        return await handler(request)

    endpoint.__name__ = spec.handler
    return endpoint


def create_app(state: WebState, routes: tuple[Route, ...] = ROUTES) -> Starlette:
    """The application for ``state``'s gateway: every route of the route table, each behind
    the guard of its declared permission."""
    mounted = {(route.spec.path, method) for route in routes for method in route.spec.methods}
    missing = sorted(
        f"{method} {spec.path}"
        for spec in DECLARED
        for method in spec.methods
        if (spec.path, method) not in mounted
    )
    if missing:
        raise RuntimeError(f"declared routes without handlers: {missing}")
    state.routes = routes
    return Starlette(
        routes=[
            Mounted(
                route.spec.path,
                _guard(state, route.spec, route.handler),
                methods=list(route.spec.methods),
                name=route.spec.handler,
            )
            for route in routes
        ]
    )

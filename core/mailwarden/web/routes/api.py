"""The API's own description (OpenAPI)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..permissions import PUBLIC
from ..respond import SESSION_COOKIE
from .base import declared


async def api_openapi(request: Request) -> Response:
    """This API as an OpenAPI 3.1 document, with each operation's permission."""
    paths: dict[str, dict[str, Any]] = {}
    for route in request.state.web.routes:
        spec, handler = route.spec, route.handler
        if not spec.path.startswith("/api/"):
            continue
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


ROUTES = declared(
    api_openapi,
)

"""The API's own description (OpenAPI)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..api_types import api
from ..openapi import openapi_document
from ..route import declared


@api(dict[str, Any])
async def api_openapi(request: Request) -> Response:
    """This API as an OpenAPI 3.1 document: each operation's parameters, request body,
    answers and permission."""
    routes = request.state.web.routes
    return JSONResponse(await asyncio.to_thread(openapi_document, routes))


ROUTES = declared(
    api_openapi,
)

"""The signature databases and rule sets the detectors load."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import api_types as T
from ..api_types import api
from ..route import declared
from ..state import WebState


@api(list[T.Signatures])
async def api_signatures(request: Request) -> Response:
    """Signature databases and rule sets the detectors load, with their versions, as each
    plugin's ``mailwarden <group> info --json`` reports them."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(state.signatures.get))


ROUTES = declared(
    api_signatures,
)

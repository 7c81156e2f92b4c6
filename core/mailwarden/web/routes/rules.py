"""The rules: shown, and replaced whole through the API."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..auth import Identity
from ..config_edit import rewrite_config
from ..respond import render
from ..state import WebState
from .base import declared


def _rules(state: WebState) -> list[Any]:
    return [msgspec.to_builtins(rule) for rule in state.gateway.config.rules]


async def api_rules(request: Request) -> Response:
    """The rules in order, as the config holds them: ``{"rules": [...]}``, the shape a PUT
    sends back."""
    return JSONResponse({"rules": _rules(request.state.web)})


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
    result = rewrite_config(state, "rules", rules)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("rules.edit", identity.name, rules=[r.get("name") for r in rules])
    return JSONResponse({"rules": _rules(state)})


async def rules_page(request: Request) -> Response:
    """The rules in order."""
    return render(request, "rules.html", rules=_rules(request.state.web))


ROUTES = declared(
    rules_page,
    api_rules,
    api_rules_put,
)

"""The rules: shown, edited on the page as TOML with a dry run over recent messages, and
replaced whole through the API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ...config import RuleConfig
from ...errors import ConfigError
from ...events import EventQuery
from .. import api_types as T
from ..api_types import api
from ..auth import Identity
from ..config_edit import ConfigRefused, file_rules, rewrite_config, write_config
from ..permissions import RULES_BODY, RouteSpec
from ..respond import read_form, render
from ..route import Route, declared
from ..rules_edit import DryRunRow, dry_run, parse_rules, rules_text
from ..state import WebState


def _rules(state: WebState) -> list[Any]:
    return [msgspec.to_builtins(rule) for rule in state.gateway.config.rules]


@api(T.Rules)
async def api_rules(request: Request) -> Response:
    """The rules in order, as the config holds them: ``{"rules": [...]}``, the shape a PUT
    sends back."""
    return JSONResponse({"rules": _rules(request.state.web)})


@api(T.Rules, body=T.Rules)
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


# How many recent message events a dry run looks at, unless the form says (at most _MAX).
DRY_RUN_EVENTS = 1000
_MAX_EVENTS = 20_000


def _rules_page(
    request: Request,
    *,
    text: str | None = None,
    status: int = 200,
    error: str = "",
    changes: list[DryRunRow] | None = None,
    checked: int = 0,
    events: int = DRY_RUN_EVENTS,
) -> Response:
    state: WebState = request.state.web
    if text is None:
        text = rules_text(file_rules(state))
    saved = request.query_params.get("saved", "")
    page = render(
        request,
        "rules.html",
        rules=_rules(state),
        text=text,
        error=error,
        changes=changes,
        checked=checked,
        events=events,
        notice=f"Saved {saved} rules; they apply now." if saved.isdigit() else "",
        time=time,
    )
    page.status_code = status
    return page


async def rules_page(request: Request) -> Response:
    """The rules in order, and (for rules.edit) an editor with a dry run beside it."""
    return _rules_page(request)


async def _submitted(
    request: Request,
) -> tuple[str, int, tuple[list[dict[str, Any]], list[RuleConfig]] | ConfigError]:
    state: WebState = request.state.web
    form = await read_form(request)
    text = form.get("rules", "").replace("\r\n", "\n")
    wanted = form.get("events", "")
    events = min(int(wanted), _MAX_EVENTS) if wanted.isdigit() else DRY_RUN_EVENTS
    config = state.gateway.config
    try:
        parsed = parse_rules(
            text, state.gateway.plugins.config_schemas(), config.gateway.local_domains
        )
    except ConfigError as exc:
        return text, events, exc
    return text, events, parsed


def _refused(
    request: Request, text: str, events: int, exc: ConfigError | ConfigRefused
) -> Response:
    # "rules:LINE: [KEY] what": the line is of the text in the editor.
    status = 422 if isinstance(exc, ConfigError) else exc.status
    return _rules_page(request, text=text, status=status, error=str(exc), events=events)


async def rules_test_form(request: Request) -> Response:
    """Dry run: which of the last ``events`` messages the submitted rules would treat
    differently from the rules in force (on each message's recorded verdict); changes
    nothing."""
    state: WebState = request.state.web
    text, events, parsed = await _submitted(request)
    if isinstance(parsed, ConfigError):
        return _refused(request, text, events, parsed)
    gateway = state.gateway
    recent = await asyncio.to_thread(gateway.events.search, EventQuery(limit=events))
    changes = await asyncio.to_thread(
        dry_run,
        recent,
        gateway.config.rules,
        parsed[1],
        gateway.config.gateway.local_domains,
        gateway.directory,
    )
    return _rules_page(request, text=text, changes=changes, checked=len(recent), events=events)


async def rules_form(request: Request) -> Response:
    """Save the submitted rules: checked like a config file, written to it (its comments and
    other sections kept) and swapped in at once."""
    state: WebState = request.state.web
    text, events, parsed = await _submitted(request)
    if isinstance(parsed, ConfigError):
        return _refused(request, text, events, parsed)
    try:
        await asyncio.to_thread(write_config, state, "rules", parsed[0])
    except ConfigRefused as exc:
        return _refused(request, text, events, exc)
    identity: Identity = request.state.identity
    state.audit.write("rules.edit", identity.name, rules=[r.get("name") for r in parsed[0]])
    return RedirectResponse(f"/rules?saved={len(parsed[0])}", status_code=303)


ROUTES = (
    *declared(rules_page, api_rules, api_rules_put),
    # The page's editor; declared here (the permission table above predates it).
    Route(
        RouteSpec("/rules", ("POST",), "rules_form", "rules.edit", max_body=RULES_BODY),
        rules_form,
    ),
    Route(
        RouteSpec("/rules/test", ("POST",), "rules_test_form", "rules.view", max_body=RULES_BODY),
        rules_test_form,
    ),
)

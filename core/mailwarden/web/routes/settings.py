"""Settings and mail-transport sections as forms and JSON, edited through
:mod:`..config_edit`; the data inventory."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import msgspec
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ...config import Config
from .. import api_types as T
from ..api_types import api
from ..auth import Identity
from ..config_edit import ConfigRefused, config_table, rewrite_config, write_config
from ..forms import FormError, changed_values, form_fields, masked, unmasked
from ..permissions import RouteSpec
from ..respond import error_response, read_form, render
from ..route import Route, declared
from ..state import WebState, inventory_view
from ..ui import field_unit, rest_text

# Sections of the mail transport (listeners, delivery, keys): ``mta.edit``, not
# ``settings.edit``, may change them.
_MTA_SECTIONS = frozenset({"smtp", "delivery", "spool", "tls", "dkim"})


def _sections(state: WebState) -> dict[str, type[msgspec.Struct]]:
    """Every section the web interface edits, with its schema, in page order."""
    from ...config import CORE_SECTIONS

    core = ("gateway", "detectors", "events", "directory", "web", *sorted(_MTA_SECTIONS))
    schemas: dict[str, type[msgspec.Struct]] = {name: CORE_SECTIONS[name] for name in core}
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
    current = config_table(state, "web")
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
    # A section as GET answered it: its secrets are asterisks and stay what they are.
    value = unmasked(value, config_table(state, section))
    refused = _keep_access(state, section, value)
    if refused:
        return JSONResponse({"error": refused}, status_code=403)
    result = rewrite_config(state, section, value)
    if isinstance(result, Response):
        return result
    identity: Identity = request.state.identity
    state.audit.write("settings.edit", identity.name, section=section, keys=sorted(value))
    return JSONResponse({"section": section, "restart_needed": section in result})


@api(T.SectionSaved, body=dict[str, Any])
async def api_settings_put(request: Request) -> Response:
    """Replace one settings section (``gateway``, ``detectors``, ``events``, ``directory``,
    ``web`` or a plugin's, e.g. ``reputation`` for consent); validated like a config file.
    Rules apply at once; other sections at the next start (``restart_needed``)."""
    return await _put_section(request, mta=False)


@api(T.SectionSaved, body=dict[str, Any])
async def api_mta_put(request: Request) -> Response:
    """Replace one mail-transport section (``smtp``, ``delivery``, ``spool``, ``tls``,
    ``dkim``); validated like a config file; applied at the next start."""
    return await _put_section(request, mta=True)


@api(dict[str, Any])
async def api_settings(request: Request) -> Response:
    """Every section of the running config; passwords and secrets masked, key files by path
    only (a private key is never shown)."""
    state: WebState = request.state.web
    data = msgspec.to_builtins(state.gateway.config)
    data.pop("rules", None)
    return JSONResponse(masked(data))


@api(T.INVENTORY)
async def api_inventory(request: Request) -> Response:
    """The data inventory: every store of user data with its limits and current size."""
    return JSONResponse(await asyncio.to_thread(inventory_view, request.state.web))


async def inventory_page(request: Request) -> Response:
    """The data inventory."""
    stores = await asyncio.to_thread(inventory_view, request.state.web)
    return render(request, "inventory.html", stores=stores)


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
    page = render(
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
        return error_response(request, 404, f"no section {section!r} here")
    form = await read_form(request)
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
    value = {**config_table(state, section), **changed}
    refused = _keep_access(state, section, value)
    if refused:
        return _settings_page(request, mta=mta, status=403, error=refused, failed=section)
    try:
        restart = await asyncio.to_thread(write_config, state, section, value)
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


def _get_section(request: Request, *, mta: bool) -> Response:
    state: WebState = request.state.web
    section = request.path_params["section"]
    schemas = _sections(state)
    if section not in schemas or (section in _MTA_SECTIONS) != mta:
        return JSONResponse({"error": f"no section {section!r} here"}, status_code=404)
    current = _section_value(state.file_config, section) or msgspec.convert({}, schemas[section])
    return JSONResponse(masked(msgspec.to_builtins(current)))


@api(dict[str, Any])
async def api_settings_get(request: Request) -> Response:
    """One settings section as the config file sets it (defaults filled in, secrets masked):
    the shape ``PUT`` takes back (masked secrets then stay as they are)."""
    return _get_section(request, mta=False)


@api(dict[str, Any])
async def api_mta_get(request: Request) -> Response:
    """One mail-transport section, the shape ``PUT /api/mta/{section}`` takes back."""
    return _get_section(request, mta=True)


ROUTES = (
    *declared(
        inventory_page,
        settings_page,
        settings_form,
        mta_page,
        mta_form,
        api_settings,
        api_settings_put,
        api_mta_put,
        api_inventory,
    ),
    # One shape per resource: each section read as it is written (declared here, the
    # permission table above predates them).
    Route(
        RouteSpec("/api/settings/{section}", ("GET",), "api_settings_get", "settings.view"),
        api_settings_get,
    ),
    Route(RouteSpec("/api/mta/{section}", ("GET",), "api_mta_get", "mta.view"), api_mta_get),
)

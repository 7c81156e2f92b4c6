"""Plugin quarantines (``mailwarden_quarantines``, SDK 1.7): the spam quarantine, the
sandbox's, any third party's; list, view, release, delete, and learning for those that can."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from mailwarden_sdk import (
    QuarantineError,
)

from .. import api_types as T
from ..api_types import api
from ..quarantine_views import (
    PLUGIN_ACTS,
    path_entry_id,
    plugin_act,
    plugin_list,
    plugin_quarantine,
    plugin_view,
    quarantine_problem,
)
from ..respond import download, error_response, form_lists, render, render_with_notice, with_notice
from ..route import Handler, declared
from ..state import WebState
from ..ui import human_bytes
from .quarantines import DELETES, bulk, confirm_page


async def _plugin_change(request: Request, act: str) -> dict[str, Any] | Response:
    """Carry out ``act`` on the entry in the path; what was done, or the error answer."""
    try:
        return await plugin_act(
            request.state.web,
            request.state.identity,
            request.path_params["quarantine"],
            request.path_params["entry_id"],
            act,
        )
    except QuarantineError as exc:
        return quarantine_problem(request, exc)


@api(list[T.PluginEntry], query=T.PluginQuery)
async def api_plugin_quarantine(request: Request) -> Response:
    """A plugin quarantine's held messages, newest first: ``q`` (sender, recipient, subject
    or id contains it), ``limit`` (up to 1000), ``offset``."""
    state: WebState = request.state.web
    try:
        _, entries = await asyncio.to_thread(
            plugin_list, state, request.path_params["quarantine"], request.query_params
        )
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    return JSONResponse(entries)


@api(T.PluginMessage)
async def api_plugin_entry(request: Request) -> Response:
    """One message of a plugin quarantine: envelope, why it is held, decoded headers, text
    and attachments (never its HTML)."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(
            plugin_view, state, request.path_params["quarantine"], path_entry_id(request)
        )
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    return JSONResponse(view)


@api(bytes)
async def api_plugin_entry_raw(request: Request) -> Response:
    """A plugin quarantine's message as held, as a download (never shown inline)."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    try:
        entry_id = path_entry_id(request)
        quarantine = await asyncio.to_thread(plugin_quarantine, state, name)
        data = await asyncio.to_thread(quarantine.raw, entry_id)
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    return download(
        request,
        data,
        "quarantined-message.eml",
        "quarantine.download",
        quarantine=name,
        id=entry_id,
    )


def _named(handler: Handler, name: str, doc: str) -> Handler:
    # The route table finds a handler by its name, and the OpenAPI summary is its docstring.
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = doc
    return handler


def _api_change(act: str, name: str, doc: str) -> Handler:
    async def handler(request: Request) -> Response:
        result = await _plugin_change(request, act)
        return result if isinstance(result, Response) else JSONResponse(result)

    return api(T.PluginAct)(_named(handler, name, doc))


def _form_change(act: str, name: str, doc: str) -> Handler:
    async def handler(request: Request) -> Response:
        name = request.path_params["quarantine"]
        if act in DELETES and (await form_lists(request)).get("confirm") != ["yes"]:
            return await confirm_page(
                request, f"/quarantines/{name}", [request.path_params["entry_id"]], act
            )
        result = await _plugin_change(request, act)
        if isinstance(result, Response):
            return result
        return with_notice(
            request, RedirectResponse(f"/quarantines/{result['quarantine']}", 303), act, 1
        )

    return _named(handler, name, doc)


api_plugin_release = _api_change(
    "release",
    "api_plugin_release",
    """Send a plugin quarantine's message on to its original recipients (the plugin's
    release: the gateway's delivery path, or a resubmission).""",
)
api_plugin_release_ham = _api_change(
    "release-as-ham",
    "api_plugin_release_ham",
    """Teach the plugin's classifier the message is ham, then release it (quarantines that
    can learn).""",
)
api_plugin_delete = _api_change(
    "delete", "api_plugin_delete", "Delete a plugin quarantine's message for good."
)
api_plugin_delete_spam = _api_change(
    "delete-as-spam",
    "api_plugin_delete_spam",
    """Teach the plugin's classifier the message is spam, then delete it (quarantines that
    can learn).""",
)
plugin_release_form = _form_change(
    "release", "plugin_release_form", "Release from the page, then back to the list."
)
plugin_release_ham_form = _form_change(
    "release-as-ham", "plugin_release_ham_form", "Learn as ham and release from the page."
)
plugin_delete_form = _form_change(
    "delete", "plugin_delete_form", "Delete from the page, then back to the list."
)
plugin_delete_spam_form = _form_change(
    "delete-as-spam", "plugin_delete_spam_form", "Learn as spam and delete from the page."
)


async def plugin_bulk_form(request: Request) -> Response:
    """The same for a plugin quarantine, with its learning acts."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    try:
        quarantine = await asyncio.to_thread(plugin_quarantine, state, name)
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    acts = set(PLUGIN_ACTS) if quarantine.can_learn else {"release", "delete"}
    return await bulk(request, f"/quarantines/{name}", frozenset(acts))


async def plugin_quarantine_page(request: Request) -> Response:
    """A plugin quarantine's held messages, with a search box."""
    state: WebState = request.state.web
    name = request.path_params["quarantine"]
    params = request.query_params
    try:
        quarantine, entries = await asyncio.to_thread(plugin_list, state, name, params)
    except ValueError as exc:
        return error_response(request, 400, f"bad query: {exc}")
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    return render_with_notice(
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
        view = await asyncio.to_thread(plugin_view, state, name, path_entry_id(request))
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    view["held_at"] = view["stored_at"]
    return render(
        request,
        "held.html",
        held=view,
        base=f"/quarantines/{name}/{view['id']}",
        raw=f"/api/quarantines/{name}/{view['id']}/raw",
        back=f"/quarantines/{name}",
        can_learn=view["can_learn"],
        time=time,
    )


ROUTES = declared(
    plugin_quarantine_page,
    plugin_bulk_form,
    plugin_entry_page,
    plugin_release_form,
    plugin_release_ham_form,
    plugin_delete_form,
    plugin_delete_spam_form,
    api_plugin_quarantine,
    api_plugin_entry,
    api_plugin_entry_raw,
    api_plugin_release,
    api_plugin_release_ham,
    api_plugin_delete_spam,
    api_plugin_delete,
)

"""The core's quarantine (messages held by a rule): list, search, view, release, delete,
bulk acts with their confirmation, and the list of every quarantine store."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from mailwarden_sdk import (
    QUARANTINE_ID,
    Quarantine,
    QuarantineError,
)

from ...quarantine import QuarantineBusy as HeldBusy
from ...quarantine import QuarantineError as HeldError
from ...quarantine import ReleaseFailed
from .. import api_types as T
from ..api_types import api
from ..auth import Identity
from ..quarantine_views import message_view, plugin_act, plugin_quarantine, send_on
from ..respond import download, error_response, form_lists, render, render_with_notice, with_notice
from ..route import declared
from ..state import WebState, inventory_view
from ..ui import human_bytes


def _held_view(state: WebState, held_id: str) -> dict[str, Any]:
    held = state.gateway.quarantine.get(held_id)
    original, _ = state.gateway.quarantine.original(held_id)
    return {
        "id": held.id,
        "held_at": held.held_at,
        "size": held.size,
        "sender": held.envelope.mail_from,
        "recipients": held.envelope.rcpt_to,
        "rule": held.rule,
        "reason": held.reason,
        "subject": held.subject,
        **message_view(original),
    }


def held_list(state: WebState) -> list[dict[str, Any]]:
    """The messages held on this node as the API lists them (also to the cluster console)."""
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


# Where a plugin's quarantine is worked with when the plugin offers it to the web interface
# through no ``mailwarden_quarantines`` provider (it is off, or a plugin for an older SDK).
_PLUGIN_QUARANTINE_COMMANDS = {
    "antispam": "mailwarden antispam quarantine list|release [--learn-ham]|delete",
    "sandbox": "mailwarden sandbox list|release|delete",
}


def _quarantines(state: WebState) -> list[dict[str, Any]]:
    """Every declared quarantine store (the core's and the plugins'), with what it holds now
    and where it is managed: a page of this interface for the core's and for every plugin
    quarantine offered through ``mailwarden_quarantines``; no paths (settings.view's)."""
    providers = state.gateway.plugin_quarantines()
    offered: dict[str, list[tuple[str, Quarantine]]] = {}
    for name, (plugin, quarantine) in providers.items():
        offered.setdefault(plugin, []).append((name, quarantine))
    linked: set[str] = set()
    result = []
    for store in inventory_view(state):
        descriptor = store["store"]
        if "quarantine" not in descriptor["name"]:
            continue
        owner = store["owner"]
        pages = offered.get(owner, [])
        in_web = owner == "core" or len(pages) == 1
        if owner == "core":
            manage = "/quarantine"
        elif len(pages) == 1:
            manage = f"/quarantines/{pages[0][0]}"
            linked.add(pages[0][0])
        else:
            manage = _PLUGIN_QUARANTINE_COMMANDS.get(owner, f"mailwarden {owner}")
        result.append(
            {
                "name": descriptor["name"],
                "owner": owner,
                "messages": store["records"],
                "bytes": store["bytes"],
                "max_bytes": descriptor["max_bytes"],
                "max_entries": descriptor["max_entries"],
                "in_web": in_web,
                "quarantine": pages[0][0] if owner != "core" and len(pages) == 1 else None,
                "title": pages[0][1].title if owner != "core" and len(pages) == 1 else None,
                "manage": manage,
            }
        )
    # Offered quarantines no declared store could be matched with: listed all the same.
    for name, (plugin, quarantine) in providers.items():
        if name not in linked:
            result.append(
                {
                    "name": quarantine.title,
                    "owner": plugin,
                    "messages": None,
                    "bytes": None,
                    "max_bytes": None,
                    "max_entries": None,
                    "in_web": True,
                    "quarantine": name,
                    "title": quarantine.title,
                    "manage": f"/quarantines/{name}",
                }
            )
    return result


@api(list[T.QuarantineStore])
async def api_quarantines(request: Request) -> Response:
    """Every quarantine store, the core's and the plugins', with how many messages it holds
    and where it is managed (``/quarantines/{name}`` for a plugin's that the web offers)."""
    return JSONResponse(await asyncio.to_thread(_quarantines, request.state.web))


@api(list[T.Held])
async def api_quarantine(request: Request) -> Response:
    """Held messages, newest first."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(held_list, state))


@api(T.HeldMessage)
async def api_held(request: Request) -> Response:
    """One held message: envelope, decoded headers, text, attachments (never its HTML)."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except HeldError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(view)


@api(bytes)
async def api_held_raw(request: Request) -> Response:
    """The held message as it arrived, as a download (never shown inline)."""
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        data, _ = await asyncio.to_thread(state.gateway.quarantine.original, held_id)
    except HeldError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return download(request, data, "held-message.eml", "quarantine.download", id=held_id)


async def _release(request: Request) -> str | Response:
    return await send_on(
        request,
        "held_id",
        "quarantine.release",
        lambda state, key: state.gateway.release(key),
        HeldError,
        (HeldBusy, ReleaseFailed),
    )


@api(T.Released)
async def api_release(request: Request) -> Response:
    """Send a held message on to its recipients."""
    result = await _release(request)
    return result if isinstance(result, Response) else JSONResponse({"released": result})


async def release_form(request: Request) -> Response:
    """Release from the page, then back to the list with a notice."""
    result = await _release(request)
    if isinstance(result, Response):
        return result
    return with_notice(request, RedirectResponse("/quarantine", 303), "release", 1)


async def _delete(request: Request) -> Response | None:
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    try:
        await asyncio.to_thread(state.gateway.quarantine.delete, held_id)
    except HeldBusy as exc:
        return error_response(request, 409, str(exc))
    except HeldError as exc:
        return error_response(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write("quarantine.delete", identity.name, id=held_id)
    return None


@api(T.Deleted)
async def api_delete(request: Request) -> Response:
    """Delete a held message for good."""
    return await _delete(request) or JSONResponse({"deleted": request.path_params["held_id"]})


async def delete_form(request: Request) -> Response:
    """Delete from the page once confirmed (``confirm=yes``; without it, the confirmation
    page), then back to the list with a notice."""
    if (await form_lists(request)).get("confirm") != ["yes"]:
        return await confirm_page(
            request, "/quarantine", [request.path_params["held_id"]], "delete"
        )
    failed = await _delete(request)
    return failed or with_notice(request, RedirectResponse("/quarantine", 303), "delete", 1)


# Acts that lose the message: a page form must confirm them (``confirm=yes``) first.
DELETES = frozenset({"delete", "delete-as-spam"})


_BULK_MAX = 500


def _entry_summaries(state: WebState, back: str, ids: list[str]) -> list[dict[str, Any]]:
    """Sender, recipients and subject of the messages a confirmation names (what the list
    already shows: never their text)."""
    found = []
    for key in ids:
        try:
            if back == "/quarantine":
                held = state.gateway.quarantine.get(key)
                found.append(
                    {
                        "id": key,
                        "sender": held.envelope.mail_from,
                        "recipients": held.envelope.rcpt_to,
                        "subject": held.subject,
                    }
                )
            else:
                quarantine = plugin_quarantine(state, back.rsplit("/", 1)[-1])
                if not QUARANTINE_ID.match(key):
                    continue
                entry = quarantine.get(key)
                found.append(
                    {
                        "id": key,
                        "sender": entry.sender,
                        "recipients": entry.recipients,
                        "subject": entry.subject,
                    }
                )
        except (HeldError, QuarantineError):
            continue
    return found


async def confirm_page(request: Request, back: str, ids: list[str], act: str) -> Response:
    """The step before a delete: what would go, and a button that confirms."""
    state: WebState = request.state.web
    entries = await asyncio.to_thread(_entry_summaries, state, back, ids)
    if not entries:
        return error_response(request, 404, "none of the selected messages is held any more")
    action = f"{back}/bulk"
    return render(request, "confirm.html", entries=entries, act=act, action=action, back=back)


async def bulk(request: Request, back: str, acts: frozenset[str]) -> Response:
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    fields = await form_lists(request)
    act = (fields.get("act") or [""])[0]
    ids = list(dict.fromkeys(fields.get("id", [])))[:_BULK_MAX]
    if act not in acts:
        return error_response(request, 400, f"act is one of {', '.join(sorted(acts))}")
    if not ids:
        return with_notice(request, RedirectResponse(back, 303), act, 0)
    if act in DELETES and fields.get("confirm") != ["yes"]:
        return await confirm_page(request, back, ids, act)
    done = failed = 0
    for key in ids:
        try:
            if back == "/quarantine":
                if act == "release":
                    where = await state.gateway.release(key)
                    state.audit.write("quarantine.release", identity.name, id=key, where=where)
                else:
                    await asyncio.to_thread(state.gateway.quarantine.delete, key)
                    state.audit.write("quarantine.delete", identity.name, id=key)
            else:
                await plugin_act(state, identity, back.rsplit("/", 1)[-1], key, act)
            done += 1
        except (HeldError, QuarantineError) as exc:
            failed += 1
            state.audit.write(f"quarantine.{act}", identity.name, id=key, result=f"failed: {exc}")
    return with_notice(request, RedirectResponse(back, 303), act, done, failed)


async def bulk_form(request: Request) -> Response:
    """Release or delete the held messages ticked on the list (``id`` repeated, ``act``);
    a delete shows a confirmation first."""
    return await bulk(request, "/quarantine", frozenset({"release", "delete"}))


def _matches(entry: dict[str, Any], query: str) -> bool:
    words = query.lower().split()
    fields = [entry["id"], entry["sender"] or "", entry["subject"] or "", entry["reason"]]
    text = " ".join([*fields, entry["rule"], *entry["recipients"]]).lower()
    return all(word in text for word in words)


async def quarantine_page(request: Request) -> Response:
    """Held messages with a search box and bulk release/delete."""
    query = str(request.query_params.get("q") or "")[:200]
    held = await asyncio.to_thread(held_list, request.state.web)
    total = len(held)
    if query:
        held = [h for h in held if _matches(h, query)]
    stores = await asyncio.to_thread(_quarantines, request.state.web)
    plugins = [s for s in stores if s["owner"] != "core"]
    return render_with_notice(
        request,
        "quarantine.html",
        held=held,
        total=total,
        query=query,
        others=plugins,
        human_bytes=human_bytes,
        time=time,
    )


async def held_page(request: Request) -> Response:
    """One held message, shown as text."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(_held_view, state, request.path_params["held_id"])
    except HeldError as exc:
        return error_response(request, 404, str(exc))
    held_id = quote(view["id"], safe="")
    view["why"] = f"{view['reason']} (rule {view['rule']})"
    return render(
        request,
        "held.html",
        held=view,
        base=f"/quarantine/{held_id}",
        raw=f"/api/quarantine/{held_id}/raw",
        back="/quarantine",
        can_learn=False,
        time=time,
    )


ROUTES = declared(
    quarantine_page,
    bulk_form,
    held_page,
    release_form,
    delete_form,
    api_quarantine,
    api_quarantines,
    api_held,
    api_held_raw,
    api_release,
    api_delete,
)

"""The mail user's own quarantine: a user who logs in through the directory with their mail
address (no role needed) sees the spam held for that address and releases, deletes or always
allows it, as the digest links do, without seeing anyone else's mail."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailwarden_sdk import QuarantineEntry, QuarantineError

from ..auth import Identity
from ..config_edit import ConfigRefused
from ..digest import DigestDone
from ..permissions import AUTHENTICATED, RouteSpec
from ..quarantine_views import (
    RECIPIENT_DONE,
    act_for_recipient,
    plugin_quarantine,
    recipient_entry,
)
from ..respond import error_response, peer, read_form, render
from ..route import Route
from ..state import WebState
from ..ui import human_bytes

# The quarantine a mail user works with: the spam one (the sandbox's holds what only an
# administrator may judge).
QUARANTINE = "spam"
NOTICE_PARAM = "done"


def _mail_user(identity: Identity) -> bool:
    return identity.source == "directory" and "@" in identity.name


def _held_for(state: WebState, address: str) -> list[QuarantineEntry]:
    try:
        quarantine = plugin_quarantine(state, QUARANTINE)
    except QuarantineError:
        return []
    address = address.lower()
    done = DigestDone(state.digest.path.parent)
    return [
        entry
        for entry in quarantine.search(address, limit=1000)
        if address in (r.lower() for r in entry.recipients)
        and address not in done.recipients(QUARANTINE, entry.id)
    ]


async def my_quarantine_page(request: Request) -> Response:
    """The spam held for the logged-in mail user, with release, delete and always allow."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    mail_user = _mail_user(identity)
    entries = await asyncio.to_thread(_held_for, state, identity.name) if mail_user else []
    act = request.query_params.get(NOTICE_PARAM, "")
    return render(
        request,
        "my_quarantine.html",
        mail_user=mail_user,
        entries=entries,
        notice=f"The message was {RECIPIENT_DONE[act]}." if act in RECIPIENT_DONE else "",
        human_bytes=human_bytes,
        time=time,
    )


async def my_quarantine_form(request: Request) -> Response:
    """Release, delete or always allow one message held for the logged-in mail user."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    act = (await read_form(request)).get("act", "")
    if act not in RECIPIENT_DONE:
        return error_response(request, 400, f"act is one of {', '.join(RECIPIENT_DONE)}")
    if not _mail_user(identity):
        return error_response(request, 404, "nothing is held for this account")
    entry_id = request.path_params["entry_id"]
    found = await asyncio.to_thread(recipient_entry, state, QUARANTINE, entry_id, identity.name)
    if isinstance(found, str):
        return error_response(request, 404, found)
    quarantine, entry = found
    try:
        await act_for_recipient(
            state, quarantine, entry, identity.name.lower(), act, audit="self", client=peer(request)
        )
    except QuarantineError as exc:
        return error_response(request, 409, str(exc))
    except ConfigRefused as exc:
        return error_response(request, exc.status, str(exc))
    return RedirectResponse(f"/my/quarantine?{NOTICE_PARAM}={quote(act)}", status_code=303)


# Declared here rather than in permissions.ROUTES: any logged-in user, and the handler shows
# only what is held for that user's own address.
ROUTES = (
    Route(
        RouteSpec("/my/quarantine", ("GET",), "my_quarantine_page", AUTHENTICATED),
        my_quarantine_page,
    ),
    Route(
        RouteSpec("/my/quarantine/{entry_id}", ("POST",), "my_quarantine_form", AUTHENTICATED),
        my_quarantine_form,
    ),
)

"""The end user's digest links: no login, the signed and expiring token is the permission."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from mailwarden_sdk import (
    Quarantine,
    QuarantineEntry,
    QuarantineError,
)

from ..config_edit import ConfigRefused
from ..digest import DigestLink
from ..quarantine_views import act_for_recipient, quarantine_problem, recipient_entry
from ..respond import error_response, peer, render
from ..route import declared
from ..state import WebState


async def _digest_target(
    request: Request,
) -> tuple[DigestLink, Quarantine, QuarantineEntry] | Response:
    state: WebState = request.state.web
    link = await asyncio.to_thread(state.digest.check, request.path_params["token"])
    if isinstance(link, str):
        # Not a permission refused: a link that names nothing (any more).
        return error_response(request, 410 if "expired" in link else 404, link)
    found = await asyncio.to_thread(
        recipient_entry, state, link.quarantine, link.entry_id, link.recipient
    )
    if isinstance(found, str):
        return error_response(request, 404, found)
    return link, *found


async def digest_page(request: Request) -> Response:
    """What a digest link would do, with the button that does it (opening the link alone
    changes nothing: link scanners open every link)."""
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, _, entry = found
    return render(request, "digest.html", link=link, entry=entry, done=None, time=time)


async def digest_form(request: Request) -> Response:
    """Carry out a digest link: release the message to that recipient alone, delete it (for a
    message held for others too, it stays held for them), or release it and always allow its
    sender for that recipient."""
    state: WebState = request.state.web
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, quarantine, entry = found
    try:
        done = await act_for_recipient(
            state, quarantine, entry, link.recipient, link.act, audit="digest", client=peer(request)
        )
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    except ConfigRefused as exc:
        return error_response(request, exc.status, str(exc))
    return render(request, "digest.html", link=link, entry=entry, done=done, time=time)


ROUTES = declared(
    digest_page,
    digest_form,
)

"""The end user's digest links: no login, the signed and expiring token is the permission."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from mailwarden_sdk import (
    Envelope,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
)

from ..digest import DigestDone, DigestLink
from ..quarantine_views import plugin_quarantine, quarantine_problem
from ..respond import error_response, peer, render
from ..state import WebState
from .base import declared


async def _digest_target(
    request: Request,
) -> tuple[DigestLink, Quarantine, QuarantineEntry] | Response:
    state: WebState = request.state.web
    link = await asyncio.to_thread(state.digest.check, request.path_params["token"])
    if isinstance(link, str):
        # Not a permission refused: a link that names nothing (any more).
        return error_response(request, 410 if "expired" in link else 404, link)
    try:
        quarantine = await asyncio.to_thread(plugin_quarantine, state, link.quarantine)
        entry = await asyncio.to_thread(quarantine.get, link.entry_id)
    except QuarantineError:
        return error_response(
            request, 404, "this message is no longer held (released, deleted or expired)"
        )
    if link.recipient not in (r.lower() for r in entry.recipients):
        return error_response(request, 404, "this message is not held for you")
    if link.recipient in await asyncio.to_thread(_digest_done(state).recipients, *_key(link)):
        return error_response(request, 404, "you have already released or deleted this message")
    return link, quarantine, entry


def _digest_done(state: WebState) -> DigestDone:
    return DigestDone(state.digest.path.parent)


def _key(link: DigestLink) -> tuple[str, str]:
    return link.quarantine, link.entry_id


async def digest_page(request: Request) -> Response:
    """What a digest link would do, with the button that does it (opening the link alone
    changes nothing: link scanners open every link)."""
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, _, entry = found
    return render(request, "digest.html", link=link, entry=entry, done=None, time=time)


async def digest_form(request: Request) -> Response:
    """Carry out a digest link: release the message to that recipient alone, or delete it
    (for a message held for others too, it stays held for them)."""
    state: WebState = request.state.web
    found = await _digest_target(request)
    if isinstance(found, Response):
        return found
    link, quarantine, entry = found
    done_by = _digest_done(state)
    where = ""
    try:
        if link.act == "release":
            raw = await asyncio.to_thread(quarantine.raw, entry.id)
            envelope = Envelope(mail_from=entry.sender, rcpt_to=[link.recipient])
            where = await state.gateway.deliver_released(raw, envelope)
        acted = await asyncio.to_thread(done_by.mark, *_key(link), link.recipient)
        if {r.lower() for r in entry.recipients} <= acted:
            # The last recipient has acted: the message leaves the quarantine.
            await quarantine.delete(entry.id)
            await asyncio.to_thread(done_by.forget, *_key(link))
    except QuarantineError as exc:
        return quarantine_problem(request, exc)
    done = "released to you" if link.act == "release" else "deleted"
    state.audit.write(
        f"digest.{link.act}",
        link.recipient,
        quarantine=link.quarantine,
        id=entry.id,
        sender=entry.sender,
        where=where or None,
        client=peer(request),
    )
    return render(request, "digest.html", link=link, entry=entry, done=done, time=time)


ROUTES = declared(
    digest_page,
    digest_form,
)

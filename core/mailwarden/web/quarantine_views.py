"""What the quarantine routes share: a message shown as text, the plugin quarantines and
their acts (learn, release, delete) audited, and sending a kept message on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from mailwarden_native import decode_header, parse
from mailwarden_sdk import (
    QUARANTINE_ID,
    Envelope,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
)

from .auth import Identity
from .config_edit import allow_sender
from .digest import DigestDone
from .respond import error_response
from .state import WebState


def message_view(original: bytes) -> dict[str, Any]:
    """A held message as the pages and the API show it: decoded headers, the text of its
    text parts (HTML as its text, never rendered), and its attachments' names, detected types
    and sizes. Every value is data for an autoescaping template or JSON, never markup."""
    message = parse(original)
    headers = [(name, decode_header(value)) for name, value in message.headers]
    texts = [part.text() for part in message.leaves() if part.content_type.startswith("text/")]
    attachments = [
        {"name": part.filename, "type": part.detected_type, "size": len(part.decoded())}
        for part in message.attachments()
    ]
    return {
        "headers": headers,
        # Text only: HTML parts are shown as their text, never rendered.
        "text": "\n\n".join(texts)[:200_000],
        "attachments": attachments,
    }


def plugin_quarantine(state: WebState, name: str) -> Quarantine:
    """The plugin quarantine called ``name``; :class:`QuarantineNotFound` otherwise."""
    found = state.gateway.plugin_quarantines().get(name) if QUARANTINE_ID.match(name) else None
    if found is None:
        raise QuarantineNotFound(f"no quarantine {name!r}")
    return found[1]


def path_entry_id(request: Request) -> str:
    # Checked before any plugin sees it: letters, digits, "_" and "-" only, so never a path.
    entry_id: str = request.path_params["entry_id"]
    if not QUARANTINE_ID.match(entry_id):
        raise QuarantineNotFound(f"no held message {entry_id!r}")
    return entry_id


def _entry_json(quarantine: Quarantine, entry: QuarantineEntry) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(entry)
    view["quarantine"] = quarantine.name
    view["why"] = _why(entry)
    return view


def _why(entry: QuarantineEntry) -> str:
    score = f", score {entry.score:.1f}" if entry.score is not None else ""
    details = ", ".join(f"{k} {v}" for k, v in sorted(entry.details.items()))
    return entry.reason + score + (f" ({details})" if details else "")


def plugin_list(state: WebState, name: str, params: Any) -> tuple[Quarantine, list[Any]]:
    quarantine = plugin_quarantine(state, name)
    query = str(params.get("q") or "")[:200]
    limit = max(1, min(int(params.get("limit") or 100), 1000))
    offset = max(0, int(params.get("offset") or 0))
    entries = quarantine.search(query, limit=limit, offset=offset)
    return quarantine, [_entry_json(quarantine, e) for e in entries]


def plugin_view(state: WebState, name: str, entry_id: str) -> dict[str, Any]:
    quarantine = plugin_quarantine(state, name)
    entry = quarantine.get(entry_id)
    return {
        **_entry_json(quarantine, entry),
        "title": quarantine.title,
        "can_learn": bool(quarantine.can_learn),
        **message_view(quarantine.raw(entry_id)),
    }


def quarantine_problem(request: Request, exc: QuarantineError) -> Response:
    return error_response(request, 404 if isinstance(exc, QuarantineNotFound) else 409, str(exc))


# What each change does: (learn first, then release or delete).
PLUGIN_ACTS: dict[str, tuple[str | None, str]] = {
    "release": (None, "release"),
    "delete": (None, "delete"),
    "release-as-ham": ("ham", "release"),
    "delete-as-spam": ("spam", "delete"),
}


async def plugin_act(
    state: WebState, identity: Identity, name: str, entry_id: str, act: str
) -> dict[str, Any]:
    """Carry out ``act`` on one entry of the plugin quarantine ``name``, audited; what was
    done. Raises :class:`QuarantineError` (audited too when the classifier already learned)."""
    label, then = PLUGIN_ACTS[act]
    learned: str | None = None
    try:
        quarantine = await asyncio.to_thread(plugin_quarantine, state, name)
        if not QUARANTINE_ID.match(entry_id):
            raise QuarantineNotFound(f"no held message {entry_id!r}")
        entry = await asyncio.to_thread(quarantine.get, entry_id)
        if label is not None:
            if not quarantine.can_learn:
                raise QuarantineError(f"the {quarantine.title} cannot learn")
            learned = await quarantine.learn(
                entry_id, "ham" if label == "ham" else "spam", by=identity.name
            )
        if then == "release":
            done = await quarantine.release(entry_id)
        else:
            done = await quarantine.delete(entry_id)
    except QuarantineError as exc:
        if learned is not None:
            # The classifier changed even though the release or delete did not happen.
            state.audit.write(
                f"quarantine.{act}",
                identity.name,
                quarantine=name,
                id=entry_id,
                learned=learned,
                result=f"failed: {exc}",
            )
        raise
    state.audit.write(
        f"quarantine.{act}",
        identity.name,
        quarantine=name,
        id=entry_id,
        sender=entry.sender,
        recipients=entry.recipients,
        learned=learned,
        result=done,
    )
    return {"quarantine": name, "id": entry_id, "act": act, "learned": learned, "result": done}


async def send_on(
    request: Request,
    param: str,
    audit: str,
    send: Callable[[WebState, str], Awaitable[str]],
    missing: type[Exception],
    conflict: tuple[type[Exception], ...] = (),
) -> str | Response:
    """Send a kept message (held, backed up) on to its recipients, audited; where it went, or
    the 404 when ``send`` says there is no such message, the 409 when it raises one of
    ``conflict`` (another release has it, or the delivery failed and it stays held)."""
    state: WebState = request.state.web
    key = request.path_params[param]
    try:
        where = await send(state, key)
    except conflict as exc:
        return error_response(request, 409, str(exc))
    except missing as exc:
        return error_response(request, 404, str(exc))
    identity: Identity = request.state.identity
    state.audit.write(audit, identity.name, id=key, where=where)
    return where


# What a mail user (through a digest link or the self-service page) may do with a message
# held for them, and how the page says it was done.
RECIPIENT_DONE = {
    "release": "released to you",
    "delete": "deleted",
    "allow": "released to you, and mail from its sender is always allowed from now on",
}


def recipient_entry(
    state: WebState, name: str, entry_id: str, recipient: str
) -> tuple[Quarantine, QuarantineEntry] | str:
    """The message ``entry_id`` of the quarantine ``name`` if it is held for ``recipient`` and
    they have not acted on it yet; else why not, in words for that recipient."""
    try:
        quarantine = plugin_quarantine(state, name)
        if not QUARANTINE_ID.match(entry_id):
            raise QuarantineNotFound(entry_id)
        entry = quarantine.get(entry_id)
    except QuarantineError:
        return "this message is no longer held (released, deleted or expired)"
    if recipient.lower() not in (r.lower() for r in entry.recipients):
        return "this message is not held for you"
    if recipient.lower() in DigestDone(state.digest.path.parent).recipients(name, entry_id):
        return "you have already released or deleted this message"
    return quarantine, entry


async def act_for_recipient(
    state: WebState,
    quarantine: Quarantine,
    entry: QuarantineEntry,
    recipient: str,
    act: str,
    *,
    audit: str,
    client: str,
) -> str:
    """Release (to ``recipient`` alone), delete, or always allow the sender of, a message
    held for ``recipient``, audited as ``{audit}.{act}``; what was done. A message held for
    several recipients stays held for the others until each has acted. Raises
    :class:`QuarantineError` or :class:`~.config_edit.ConfigRefused`."""
    done_by = DigestDone(state.digest.path.parent)
    key = (quarantine.name, entry.id)
    if act == "allow":
        await asyncio.to_thread(allow_sender, state, entry.sender, recipient)
    where = ""
    if act in ("release", "allow"):
        raw = await asyncio.to_thread(quarantine.raw, entry.id)
        envelope = Envelope(mail_from=entry.sender, rcpt_to=[recipient])
        where = await state.gateway.deliver_released(raw, envelope)
    acted = await asyncio.to_thread(done_by.mark, *key, recipient)
    if {r.lower() for r in entry.recipients} <= acted:
        # The last recipient has acted: the message leaves the quarantine.
        await quarantine.delete(entry.id)
        await asyncio.to_thread(done_by.forget, *key)
    state.audit.write(
        f"{audit}.{act}",
        recipient,
        quarantine=quarantine.name,
        id=entry.id,
        sender=entry.sender,
        where=where or None,
        client=client,
    )
    return RECIPIENT_DONE[act]

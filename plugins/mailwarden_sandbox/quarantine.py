"""The hold quarantine's logic: placing a message, an admin's release or delete, the web view.

The bytes and metadata live in :class:`~mailwarden_sandbox.store.HoldStore`; this module
decides what is held and carries out the admin's requests through the :class:`Watcher` of the
process that follows held messages up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Protocol

from mailwarden_sdk import (
    LearnLabel,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
    ScanContext,
    parse,
)

from .config import Policy
from .objects import Object
from .store import HeldMessage, HeldObject, HoldStore, ReleasePending, valid_id
from .watcher import Watcher

__all__ = ["Holding", "SandboxQuarantineView", "admin", "hold"]

log = logging.getLogger("mailwarden.sandbox")

# How long a release or delete from the web waits for the watcher to carry it out.
_ADMIN_WAIT = 30.0


async def hold(
    store: HoldStore, ctx: ScanContext, pending: list[Object], policy: Policy, time_scale: float
) -> str | None:
    """Keep the message in the hold quarantine (durably); its id, or None when it is full."""
    now = time.time()
    meta = HeldMessage(
        id=uuid.uuid4().hex[:20],
        envelope=ctx.envelope,
        rule=ctx.rule,
        size=len(ctx.raw),
        held_at=now,
        deadline=now + policy.verdict_timeout * time_scale,
        objects=[HeldObject(sha256=o.sha256, label=o.label, size=len(o.data)) for o in pending],
        subject=ctx.message.decoded_header("subject") or "",
    )
    if not await asyncio.to_thread(store.admit, bytes(ctx.raw), meta):
        log.warning("sandbox quarantine full: message from <%s> not held", meta.envelope.mail_from)
        return None
    return meta.id


async def admin(store: HoldStore | None, watcher: Watcher | None, id: str, what: str) -> str:
    """Carry out an admin's ``release`` or ``delete`` of ``id`` and say what happened.

    The request is the same marker the command line leaves; the process that follows up
    held messages acts on it. When that is this process it is woken at once and this
    waits (up to 30 s) for the result: the reply of the resubmission for a release.
    """
    if store is None:
        raise QuarantineError("the sandbox is not running")
    try:
        if not await asyncio.to_thread(store.mark, id, what):
            raise QuarantineNotFound(f"no held message {id!r}")
    except ReleasePending as exc:
        meta = await asyncio.to_thread(store.load, id)
        if meta is None:
            raise QuarantineError(f"{id} was released just now") from exc
        note = f" (last: {meta.note})" if meta.note else ""
        raise QuarantineError(
            f"{exc}; the gateway carries it out once, retrying while it is refused{note}"
        ) from exc
    if watcher is not None:
        watcher.outcomes.pop(id, None)
    if watcher is None or watcher.owner is None or watcher.analysis.loop.is_closed():
        if what == "delete" and not await asyncio.to_thread(store.owned_elsewhere):
            await asyncio.to_thread(store.remove, id)
            return "deleted"
        return f"{what} requested; the gateway process following up held messages does it"
    watcher.analysis.loop.call_soon_threadsafe(watcher.poke, id)
    deadline = time.monotonic() + _ADMIN_WAIT
    while time.monotonic() < deadline:
        outcome = watcher.outcomes.get(id)
        if outcome is not None:
            code, text = outcome
            if code >= 400:
                raise QuarantineError(
                    f"the gateway answered {code} {text}; it stays held and is tried again"
                )
            return f"released: {code} {text}"
        if await asyncio.to_thread(store.load, id) is None:
            return "deleted" if what == "delete" else "released"
        await asyncio.sleep(0.05)
    return f"{what} requested; the gateway carries it out shortly"


class Holding(Protocol):
    """What the view reads from the plugin: its store and watcher while it runs (or None)."""

    @property
    def store(self) -> HoldStore | None: ...

    @property
    def watcher(self) -> Watcher | None: ...


def _subject(raw: bytes) -> str:
    head = raw[:65536]
    end = head.find(b"\r\n\r\n")
    end = head.find(b"\n\n") if end < 0 else end
    return parse(head[: end + 4] if end >= 0 else head).decoded_header("subject") or ""


class SandboxQuarantineView:
    """The sandbox's hold quarantine as a :class:`mailwarden_sdk.Quarantine` (SDK 1.7).

    A release puts the message back through the pipeline without waiting for the verdict
    (``Host.resubmit``, the other detectors still decide), as ``mailwarden sandbox release``
    does; a delete removes it. Nothing to learn.
    """

    name = "sandbox"
    title = "Sandbox quarantine"
    can_learn = False

    def __init__(self, plugin: Holding) -> None:
        self.plugin = plugin

    def _store(self) -> HoldStore:
        store = self.plugin.store
        if store is None:
            raise QuarantineError("the sandbox is not running")
        return store

    def _meta(self, id: str) -> HeldMessage:
        meta = self._store().load(id) if valid_id(id) else None
        if meta is None:
            raise QuarantineNotFound(f"no held message {id!r}")
        return meta

    def _entry(self, meta: HeldMessage) -> QuarantineEntry:
        subject = meta.subject
        if not subject:
            try:
                subject = _subject(self._store().raw(meta.id))
            except OSError:
                subject = ""
        details = {"rule": meta.rule, "objects": str(len(meta.objects))}
        if meta.note:
            details["note"] = meta.note
        if meta.state == "waiting":
            details["deadline"] = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(meta.deadline))
        return QuarantineEntry(
            id=meta.id,
            stored_at=meta.held_at,
            sender=meta.envelope.mail_from,
            recipients=list(meta.envelope.rcpt_to),
            subject=subject,
            size=meta.size,
            reason=meta.state,
            details=details,
        )

    def search(
        self, query: str = "", *, limit: int = 100, offset: int = 0
    ) -> list[QuarantineEntry]:
        """Held messages, newest first, matching ``query`` (sender, recipient, subject, id)."""
        store = self._store()
        metas = [m for m in (store.load(i) for i in store.ids()) if m is not None]
        metas.sort(key=lambda m: m.held_at, reverse=True)
        needle = query.strip().lower()
        entries = (self._entry(m) for m in metas)
        found = [
            e
            for e in entries
            if not needle
            or any(needle in f.lower() for f in (e.id, e.sender, e.subject, *e.recipients))
        ]
        return found[offset : offset + limit]

    def get(self, id: str) -> QuarantineEntry:
        """One held message's entry."""
        return self._entry(self._meta(id))

    def raw(self, id: str) -> bytes:
        """The held message as received."""
        self._meta(id)
        try:
            return self._store().raw(id)
        except FileNotFoundError as exc:
            raise QuarantineNotFound(f"no held message {id!r}") from exc

    async def release(self, id: str) -> str:
        """Put it back through the pipeline now, without the verdict."""
        await asyncio.to_thread(self._meta, id)
        return await admin(self.plugin.store, self.plugin.watcher, id, "release")

    async def delete(self, id: str) -> str:
        """Remove it; it is never delivered."""
        await asyncio.to_thread(self._meta, id)
        return await admin(self.plugin.store, self.plugin.watcher, id, "delete")

    async def learn(self, id: str, label: LearnLabel, *, by: str) -> str:
        """Not offered (``can_learn`` is false): there is no classifier to teach."""
        raise QuarantineError("the sandbox quarantine has nothing to learn")

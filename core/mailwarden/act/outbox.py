"""The act stage: one outbox carries out every decision, whichever ingress or release made it.

The ways out are the next hop (through the spool and the relay queue), the local Maildir, the
core's quarantine, a plugin that holds messages for analysis, the backup store and the
notices a rule asks for. Ingresses that hand the message back to their MTA themselves (the
milter, the content filter) use the parts they need: the backups, the quarantine and the
rewritten message (:meth:`~mailwarden.decide.Decision.with_headers`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import msgspec

from mailwarden_sdk import ActionKind, Envelope

from ..delivery.queue import DeliveryQueue, crlf
from ..errors import DeliveryError
from ..notify import build_notices
from ..rewrite import prepend_headers
from ..spool import SpoolEntry, SpoolState
from ..stage import Stage, elapsed_ms

if TYPE_CHECKING:
    from ..config import Config
    from ..decide import Decision
    from ..dkim import DkimSigner
    from ..maildir import Maildir
    from ..quarantine import Quarantine
    from ..spool import Spool
    from ..stores.backup import BackupStore

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """Where decided messages go. Also the relay queue's port (:class:`QueuePort`): the queue
    signs, rescans and holds through it without knowing the gateway."""

    def __init__(
        self,
        config: Config,
        *,
        spool: Spool,
        maildir: Maildir,
        quarantine: Quarantine,
        dkim: DkimSigner,
        backup: BackupStore,
        plugin_hold: Callable[[Decision], Awaitable[str | None]],
        rescan: Callable[[SpoolEntry], Awaitable[None]],
    ) -> None:
        self.hostname = config.gateway.hostname
        self.home = config.home
        self.spool = spool
        self.maildir = maildir
        self.quarantine = quarantine
        self.dkim = dkim
        self.backup = backup
        self._plugin_hold = plugin_hold
        self._rescan = rescan
        self.queue = DeliveryQueue(config.delivery, self.hostname, spool, self)

    # -- the relay queue's port ----------------------------------------------------------------

    def with_headers(self, raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """``raw`` with the decided ``headers`` prepended, made safe as everywhere else."""
        return prepend_headers(raw, headers)

    def sign(self, data: bytes) -> bytes:
        """``data`` (CR LF) DKIM-signed when a key applies."""
        return self.dkim.sign(data)

    async def rescan(self, entry: SpoolEntry) -> None:
        """Scan and act on a spooled message whose decision was not stored."""
        await self._rescan(entry)

    def hold_raw(
        self, data: bytes, envelope: Envelope, *, decision: str, rule: str, reason: str
    ) -> str:
        """Keep ``data`` in the core's quarantine (durable on return); its held id."""
        return self.quarantine.hold(data, envelope, decision=decision, rule=rule, reason=reason)

    # -- the parts every ingress uses ----------------------------------------------------------

    async def keep_backups(self, decisions: Sequence[Decision]) -> None:
        """Keep the backup copy each decision's action asks for, before anything changes or
        drops the message (every ingress calls this before it acts). Raises when a copy
        cannot be written: the ingress then answers with a temporary failure, so the sender
        keeps the message and nothing goes unbacked."""
        for d in decisions:
            if d.action.backup_id is None:
                continue
            await asyncio.to_thread(
                self.backup.put,
                d.message.raw,
                reason=d.action.reason,
                mail_from=d.envelope.mail_from,
                rcpt_to=list(d.envelope.rcpt_to),
                subject=d.message.subject,
                backup_id=d.action.backup_id,
            )

    async def hold(self, d: Decision) -> str:
        """Keep the message, as rewritten, in the core's quarantine with its envelope (durable
        on return); its held id. A message a plugin kept in its own quarantine already
        (``action.held_in``) is not kept twice: that is where it is held."""
        if d.action.held_in:
            return d.action.held_in
        return await asyncio.to_thread(
            self.hold_raw,
            d.with_headers(),
            d.envelope,
            decision=d.id,
            rule=d.rule.name,
            reason=d.action.reason,
        )

    def outgoing(self, d: Decision) -> bytes:
        """The decided message as the next hop or the mailbox gets it: rewritten, with CR LF
        line ends, DKIM-signed when a key applies."""
        return self.dkim.sign(crlf(d.with_headers()))

    async def hand_off(self, data: bytes, envelope: Envelope) -> str:
        """Send a message that needs no decision (released, a notice) on to
        ``envelope.rcpt_to`` the way delivered mail goes: the spool and the relay queue, else
        the local Maildir. Durable when this returns. Returns where it went."""
        if self.queue.relaying:
            entry = await self.queue.enqueue(data, envelope, SpoolState(decided=True))
            return f"queued as {entry.id}"
        name = await asyncio.to_thread(self.maildir.deliver, crlf(data))
        return f"delivered as {name}"

    # -- carrying out a decision ---------------------------------------------------------------

    async def carry_out(self, decision: Decision, entry: SpoolEntry) -> tuple[int, str]:
        """Carry out the decision on the spooled ``entry``; the entry is handed on or removed.
        The reply: 250 only when the message is durable where the action put it."""
        await self.keep_backups([decision])
        code, text = decision.action.smtp_code, decision.action.smtp_text
        kind = decision.action.kind
        began = time.perf_counter()
        try:
            if kind is ActionKind.DELIVER and self.queue.relaying:
                if decision.action.replace_message or decision.action.subject_tag:
                    # The next hop gets the changed message: it replaces the spooled one.
                    changed = msgspec.structs.replace(decision.action, add_headers=[])
                    body = replace(decision, action=changed).with_headers()
                    new_entry = await asyncio.to_thread(self.spool.write, body, decision.envelope)
                    await asyncio.to_thread(self.spool.remove, entry)
                    entry = new_entry
                state = SpoolState(decided=True, add_headers=list(decision.action.add_headers))
                # Not fsynced: if it is lost, the message is scanned again, which is harmless.
                # Without a sync it is a create, a write and a rename in the page cache, cheaper
                # on the event loop than a hop to a thread and back.
                self.spool.save_state(entry, state, durable=False)
                self.queue.submit(entry, state)
                text = f"2.0.0 Ok: queued as {entry.id}"
            elif kind is ActionKind.DELIVER:
                data = self.outgoing(decision)
                name = await asyncio.to_thread(self.maildir.deliver, data)
                await asyncio.to_thread(self.spool.remove, entry)
                text = f"2.0.0 Ok: delivered as {name.split('.', 1)[0]}-{decision.id[:12]}"
            elif kind is ActionKind.QUARANTINE and decision.action.reason == "hold":
                held = await self._plugin_hold(decision)
                await asyncio.to_thread(self.spool.remove, entry)
                if held:
                    text = f"2.0.0 Ok: held for analysis as {held}"
                else:
                    # Nobody could keep it: the sender keeps it and retries.
                    code, text = 451, "4.7.1 Cannot hold the message for analysis now; try later"
            elif kind is ActionKind.QUARANTINE:
                await self.hold(decision)
                await asyncio.to_thread(self.spool.remove, entry)
                text = f"2.0.0 Ok: held as {decision.id[:12]}"
            else:
                await asyncio.to_thread(self.spool.remove, entry)
        except DeliveryError as exc:
            await asyncio.to_thread(self.spool.remove, entry)
            code, text = 451, f"4.3.0 {exc}; try again later"
        decision.timings_ms[Stage.ACT] = elapsed_ms(began)
        return code, text

    async def notify(self, decision: Decision) -> None:
        """Send the notices the rule asks for; a failure is logged and changes no reply."""
        notify = decision.rule.notify
        if not (notify.admin or notify.sender or notify.recipients):
            return
        try:
            for notice in build_notices(decision, notify, self.hostname, self.home):
                await self.hand_off(notice.data, notice.envelope)
        except Exception:
            log.exception("notification about %s failed", decision.id[:12])

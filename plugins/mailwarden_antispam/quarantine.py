"""The spam quarantine: whole messages, bounded in bytes, oldest removed first when full.

It is the ``spam`` kind of the gateway's one quarantine store
(:mod:`mailwarden_sdk.quarantine_store`, ``<home>/quarantine``): message files in
``quarantine/spam/``, their envelope, subject, score and status in the store's index, the byte
cap applied in the transaction that admits a new message (the oldest spam goes). Release sends
the original bytes with the original envelope through the gateway's own delivery path
(``Host.deliver``), or over SMTP to ``release_host:release_port`` (the MTA's re-injection port)
when that is configured. :class:`SpamQuarantineView` offers it to the web interface and the
REST API (``mailwarden_quarantines``, SDK 1.7), with "learn" through the plugin's Bayes store.

A release happens once, however many web requests, worker processes and commands ask for it
at the same moment: the store's claim lets one caller through and tells the next with
:class:`QuarantineBusy` (see :mod:`mailwarden_sdk.quarantine_store`).

Before SDK 1.17 the spam quarantine was a store of its own (``<home>/antispam/quarantine``
and its index ``quarantine-index``): opening moves its messages into the one store, ids, times
and scores kept (so the links of digests sent before still work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgspec

import mailwarden_sdk as sdk
from mailwarden_sdk.quarantine_store import (
    STALE_AFTER,
    HeldEntry,
    KindLimits,
    StoreClaim,
    open_store,
)
from mailwarden_sdk.quarantine_store import QuarantineBusy as _Busy
from mailwarden_sdk.quarantines import release_once, release_once_sync

if TYPE_CHECKING:
    from .bayes import Bayes

__all__ = [
    "KEEP",
    "KIND",
    "QuarantineBusy",
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineMissing",
    "ReleaseClaim",
    "SpamQuarantine",
    "SpamQuarantineView",
    "keep",
]

log = logging.getLogger(__name__)

#: The spam quarantine's kind in the quarantine store.
KIND = "spam"


class QuarantineError(sdk.QuarantineError):
    """A message cannot be stored or sent (and the base of :class:`QuarantineMissing`)."""


class QuarantineMissing(QuarantineError, sdk.QuarantineNotFound):
    """No such message in the quarantine."""


class QuarantineBusy(QuarantineError):
    """Another request or process releases the message right now (or just did, or deleted
    it): this caller must not send it too. The web answers 409."""


class QuarantineEntry(msgspec.Struct, kw_only=True, frozen=True):
    """What the index knows about one held message (searchable fields)."""

    id: str
    time: float
    size: int
    mail_from: str
    rcpt_to: list[str]
    subject: str
    score: float
    status: str
    #: Set while a release sends it: a random token, the claiming process and when.
    claim: str = ""
    claimed_by: int = 0
    claimed_at: float = 0.0


def _spam(e: HeldEntry) -> QuarantineEntry:
    return QuarantineEntry(
        id=e.id,
        time=e.time,
        size=e.size,
        mail_from=e.mail_from,
        rcpt_to=list(e.rcpt_to),
        subject=e.subject,
        score=e.score or 0.0,
        status=e.reason,
        claim=e.claim,
        claimed_by=e.claimed_by,
        claimed_at=e.claimed_at,
    )


@dataclass
class ReleaseClaim:
    """One release's hold on a message: its entry (with the claim), bytes, and the store's
    claim (whose locked descriptor says the claimer is alive)."""

    entry: QuarantineEntry
    raw: bytes
    held: StoreClaim


@contextlib.contextmanager
def _errors(entry_id: str) -> Iterator[None]:
    """The store's errors as this plugin's (the commands and the web catch these)."""
    try:
        yield
    except _Busy as exc:
        raise QuarantineBusy(str(exc)) from exc
    except sdk.QuarantineNotFound as exc:
        raise QuarantineMissing(f"no quarantined message {entry_id}") from exc


class SpamQuarantine:
    """Held spam: the ``spam`` kind of the quarantine store under ``home`` (the gateway's
    home), capped at ``max_bytes`` (the oldest spam goes first)."""

    def __init__(
        self, home: Path, max_bytes: int = 1 << 30, *, stale_after: float = STALE_AFTER
    ) -> None:
        self.home = home
        self.max_bytes = max_bytes
        self.store = open_store(home / "quarantine")
        self.store.stale_after = stale_after
        self.store.set_limits(KIND, KindLimits(max_bytes=max_bytes))
        self.messages = self.store.folder(KIND)
        self._migrate(home / "antispam" / "quarantine")

    @property
    def stale_after(self) -> float:
        """How old a claim of a process that is gone must be before it is held again."""
        return self.store.stale_after

    @stale_after.setter
    def stale_after(self, seconds: float) -> None:
        self.store.stale_after = seconds

    def _migrate(self, old: Path) -> None:
        """Move the spam quarantine of before SDK 1.17 (``old`` and ``old-index``) in."""
        index = old.with_name(old.name + "-index")
        if not (index / "data.mdb").is_file():
            return
        env = lmdb.open(str(index), map_size=1 << 28, max_dbs=3)
        try:
            by_time = env.open_db(b"by_time")
            with env.begin(db=by_time) as txn:
                entries = [bytes(v) for _, v in txn.cursor()]
        finally:
            env.close()
        for value in entries:
            try:
                e = msgspec.json.decode(value, type=QuarantineEntry)
                raw = (old / f"{e.id}.eml").read_bytes()
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # its file went (the old store forgot such entries too)
            envelope = sdk.Envelope(mail_from=e.mail_from, rcpt_to=list(e.rcpt_to))
            self.store.put(
                KIND,
                raw,
                envelope,
                subject=e.subject,
                reason=e.status,
                score=e.score,
                id=e.id,
                at=e.time,
            )
            (old / f"{e.id}.eml").unlink()
        shutil.rmtree(index)
        with contextlib.suppress(OSError):
            old.rmdir()  # not when files no entry named are left: nothing is lost
        log.info("spam quarantine: %d messages moved into %s", len(entries), self.store.root)

    def close(self) -> None:
        """Nothing to close here: the store is the gateway's, shared with the core."""

    def _path(self, entry_id: str) -> Path:
        if not entry_id.isalnum():
            raise QuarantineMissing(f"not a quarantine id: {entry_id!r}")
        return self.messages / f"{entry_id}.eml"

    def total_bytes(self) -> int:
        return self.store.usage(KIND)[1]

    def put(
        self,
        raw: bytes,
        mail_from: str,
        rcpt_to: list[str],
        subject: str,
        score: float,
        status: str,
    ) -> str | None:
        """Hold ``raw``; returns its id, or None when it alone is larger than the cap."""
        envelope = sdk.Envelope(mail_from=mail_from, rcpt_to=list(rcpt_to))
        return self.store.put(KIND, raw, envelope, subject=subject, reason=status, score=score)

    def get(self, entry_id: str) -> QuarantineEntry:
        with _errors(entry_id):
            return _spam(self.store.get(entry_id, KIND))

    def original(self, entry_id: str) -> bytes:
        """The message exactly as it was held."""
        with _errors(entry_id):
            return self.store.raw(entry_id, KIND)

    def search(
        self,
        since: float | None = None,
        until: float | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        subject: str | None = None,
        min_score: float | None = None,
    ) -> list[QuarantineEntry]:
        """Entries matching every given criterion (substring, case-insensitive), oldest first."""
        out: list[QuarantineEntry] = []
        for e in map(_spam, self.store.entries(KIND)):
            if since is not None and e.time < since:
                continue
            if until is not None and e.time > until:
                continue
            if sender and sender.lower() not in e.mail_from.lower():
                continue
            if recipient and not any(recipient.lower() in r.lower() for r in e.rcpt_to):
                continue
            if subject and subject.lower() not in e.subject.lower():
                continue
            if min_score is not None and e.score < min_score:
                continue
            out.append(e)
        return out

    def delete(self, entry_id: str) -> None:
        """Remove a message for good; :class:`QuarantineBusy` while a release sends it."""
        with _errors(entry_id):
            self.store.delete(entry_id, KIND)

    # -- release, exactly once -----------------------------------------------------------------

    def claim(self, entry_id: str) -> ReleaseClaim:
        """Take ``entry_id`` for one release (see :meth:`QuarantineStore.claim
        <mailwarden_sdk.quarantine_store.QuarantineStore.claim>`). Raises
        :class:`QuarantineBusy` or :class:`QuarantineMissing`. Follow with :meth:`finish`
        once it is delivered, or :meth:`abandon` when it was not."""
        with _errors(entry_id):
            held = self.store.claim(entry_id, KIND)
        return ReleaseClaim(entry=_spam(held.entry), raw=held.raw, held=held)

    def finish(self, claim: ReleaseClaim) -> None:
        """The claimed message is delivered: it leaves the quarantine."""
        self.store.finish(claim.held)

    def abandon(self, claim: ReleaseClaim) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        self.store.abandon(claim.held)

    def recover(self, ids: list[str] | None = None) -> list[str]:
        """Hold again the messages whose release claim is ``stale_after`` old and whose
        claimer is gone (its lock is free): all, or only ``ids``. The ids held again."""
        back = self.store.recover(ids, KIND)
        for entry_id in back:
            log.warning(
                "spam quarantine: %s was left mid-release by a process that is gone; held again",
                entry_id,
            )
        return back

    def send(self, claim: ReleaseClaim, host: str, port: int, timeout: float = 30.0) -> str:
        """SMTP the claimed message to ``host:port`` with its original envelope."""
        entry = claim.entry
        try:
            with smtplib.SMTP(host, port, timeout=timeout) as smtp:
                refused = smtp.sendmail(entry.mail_from, entry.rcpt_to, claim.raw)
        except (OSError, smtplib.SMTPException) as exc:
            raise QuarantineError(f"release of {entry.id} failed: {exc}; it stays held") from exc
        if refused and len(refused) == len(entry.rcpt_to):
            raise QuarantineError(f"release of {entry.id}: every recipient refused; it stays held")
        return f"sent to {host}:{port}"

    def release(self, entry_id: str, host: str, port: int, timeout: float = 30.0) -> str:
        """Send the original bytes to ``host:port`` with the original envelope, then delete.

        The message leaves the quarantine only after the next hop accepted it, and only one
        release sends it (:meth:`claim`); on a failure it stays held and this raises.
        """
        return release_once_sync(
            self, entry_id, lambda claim: self.send(claim, host, port, timeout)
        )


#: Set by the verdict hook when the message's status is one ``[antispam] quarantine`` keeps.
KEEP: sdk.StashKey[bool] = sdk.StashKey("antispam quarantine wanted")


def keep(
    store: SpamQuarantine, ctx: sdk.ScanContext, verdict: sdk.Verdict, action: sdk.Action
) -> sdk.Action | None:
    """Hold the message in the spam quarantine. When the rule quarantines it too
    (``spam = "quarantine"``) the action comes back with ``held_in`` set: the gateway then
    keeps no second copy in its own quarantine (one copy, released once, with the spam
    quarantine's view, learning and digest). None when nothing changes. A tempfail is not
    kept: the sender keeps the message and sends it again (one copy per attempt otherwise),
    or, accepted for other recipients or resubmitted, the gateway holds it. Nor a message held
    for analysis (``reason == "hold"``): it comes through again once the verdict is in. Nor in
    a dry run (``ctx.dry_run``: ``mailwarden rules test``, ``Gateway.scan``): nothing is
    acted on, so nothing is kept."""
    if ctx.dry_run or action.kind is sdk.ActionKind.TEMPFAIL:
        return None
    if action.kind is sdk.ActionKind.QUARANTINE and action.reason == "hold":
        return None
    held = store.put(
        ctx.raw,
        ctx.envelope.mail_from,
        ctx.envelope.rcpt_to,
        ctx.message.decoded_header("subject") or "",
        verdict.spam_score,
        verdict.spam.value,
    )
    if held is None or action.kind is not sdk.ActionKind.QUARANTINE:
        return None
    return msgspec.structs.replace(action, held_in=f"spam quarantine {held}")


def _entry(e: QuarantineEntry) -> sdk.QuarantineEntry:
    details = {}
    if e.claim:
        since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(e.claimed_at))
        details["releasing"] = f"since {since} (process {e.claimed_by})"
    return sdk.QuarantineEntry(
        id=e.id,
        stored_at=e.time,
        sender=e.mail_from,
        recipients=list(e.rcpt_to),
        subject=e.subject,
        size=e.size,
        reason=e.status,
        score=e.score,
        details=details,
    )


def _matches(e: QuarantineEntry, query: str) -> bool:
    if not query:
        return True
    fields = (e.id, e.mail_from, e.subject, *e.rcpt_to)
    return any(query in field.lower() for field in fields)


class SpamQuarantineView:
    """The spam quarantine as a :class:`mailwarden_sdk.Quarantine` (SDK 1.7).

    Releases go through ``host.deliver`` (the gateway's own delivery path: relay queue or
    Maildir) unless ``smtp_target()`` names a host and port, the configured
    ``release_host``/``release_port``, which then get the message over SMTP as before.
    ``learn`` trains the plugin's Bayes store, when it has one.
    """

    name = "spam"
    title = "Spam quarantine"

    def __init__(
        self,
        store: SpamQuarantine,
        host: sdk.Host,
        bayes: Bayes | None,
        smtp_target: Callable[[], tuple[str, int] | None],
    ) -> None:
        self.store = store
        self.host = host
        self.bayes = bayes
        self.smtp_target = smtp_target
        self.can_learn = bayes is not None

    def search(
        self, query: str = "", *, limit: int = 100, offset: int = 0
    ) -> list[sdk.QuarantineEntry]:
        """Held spam, newest first, matching ``query`` (sender, recipient, subject, id)."""
        needle = query.strip().lower()
        found = [e for e in reversed(self.store.search()) if _matches(e, needle)]
        return [_entry(e) for e in found[offset : offset + limit]]

    def get(self, id: str) -> sdk.QuarantineEntry:
        """One held message's entry."""
        self.store._path(id)  # refuses what is not an id of ours
        return _entry(self.store.get(id))

    def raw(self, id: str) -> bytes:
        """The held message as it arrived."""
        try:
            return self.store.original(id)
        except FileNotFoundError as exc:
            raise QuarantineMissing(f"the file of {id} is gone") from exc

    async def release(self, id: str) -> str:
        """Deliver to the original recipients, then remove it from the quarantine; once,
        however many release it at the same time (the others get :class:`QuarantineBusy`)."""
        target = self.smtp_target()
        if target is not None:
            where_host, port = target
            return await asyncio.to_thread(self.store.release, id, where_host, port)

        async def send(claim: ReleaseClaim) -> str:
            entry = claim.entry
            envelope = sdk.Envelope(mail_from=entry.mail_from, rcpt_to=list(entry.rcpt_to))
            return await self.host.deliver(claim.raw, envelope)

        return await release_once(self.store, id, send, QuarantineError)

    async def delete(self, id: str) -> str:
        """Remove it for good (not while a release sends it)."""
        await asyncio.to_thread(self.store.delete, id)
        return "deleted"

    async def learn(self, id: str, label: sdk.LearnLabel, *, by: str) -> str:
        """Train Bayes with the held message as ``label``; it stays held."""
        bayes = self.bayes
        if bayes is None:
            raise QuarantineError("the Bayes classifier is off ([antispam] bayes = false)")
        raw = await asyncio.to_thread(self.raw, id)
        learned = await asyncio.to_thread(bayes.learn, raw, label, f"web:{by}")
        return f"learned as {label}" if learned else f"already learned as {label}"

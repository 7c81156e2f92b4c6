"""The spam quarantine: whole messages, bounded in bytes, oldest removed first when full.

Message bytes are files (written, fsynced, then moved into place); an LMDB index holds one
entry per message keyed by arrival time, so the oldest is the first key, plus the running
total of bytes. A message is in the quarantine once its index entry is committed; eviction
removes index entries in the same transaction that admits the new one, then their files.
Release sends the original bytes with the original envelope through the gateway's own
delivery path (``Host.deliver``), or over SMTP to ``release_host:release_port`` (the MTA's
re-injection port) when that is configured. :class:`SpamQuarantineView` offers the store to
the web interface and the REST API (``mailwarden_quarantines``, SDK 1.7), with "learn" through
the plugin's Bayes store.

A release happens once, however many web requests, worker processes and commands ask for it
at the same moment. :meth:`SpamQuarantine.claim` takes an ``flock`` on the message file, then,
in one LMDB write transaction (they are serialised across processes), checks the entry is
still held and marks it with a claim (token, pid, time); whoever comes second gets
:class:`QuarantineBusy`. Only the claimer sends; then it deletes the entry
(:meth:`~SpamQuarantine.finish`), or on a failure clears the claim
(:meth:`~SpamQuarantine.abandon`), so nothing is lost. The lock lives as long as the claiming
process: a claim ``stale_after`` seconds old whose lock is free (its process is gone) is
cleared on start, on every listing and by the next release; the message is never deleted for
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgspec

import mailwarden_sdk as sdk
from mailwarden_sdk.files import atomic_write
from mailwarden_sdk.quarantines import lock_held, read_held, release_once, release_once_sync

if TYPE_CHECKING:
    from .bayes import Bayes

__all__ = [
    "KEEP",
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

#: How old a claim of a process that is gone must be before its message is held again.
STALE_AFTER = 300.0


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


@dataclass
class ReleaseClaim:
    """One release's hold on a message: its entry (with the claim), bytes, and the locked
    descriptor of its file that says the claimer is alive."""

    entry: QuarantineEntry
    raw: bytes
    fd: int


class SpamQuarantine:
    """Held spam: one file per message in ``root``, the LMDB index in ``root-index`` beside it.

    ``root`` holds nothing but message files, so the core's store enforcer (which removes the
    oldest files of a declared folder) can govern it too; the index forgets entries whose
    file is gone.
    """

    def __init__(
        self, root: Path, max_bytes: int = 1 << 30, *, stale_after: float = STALE_AFTER
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        self.messages = root
        self.messages.mkdir(parents=True, exist_ok=True)
        self.index = root.with_name(root.name + "-index")
        self.index.mkdir(exist_ok=True)
        self.env = lmdb.open(str(self.index), map_size=1 << 28, max_dbs=3)
        self._by_time = self.env.open_db(b"by_time")
        self._ids = self.env.open_db(b"ids")
        self._meta = self.env.open_db(b"meta")

    def close(self) -> None:
        self.env.close()

    def _path(self, entry_id: str) -> Path:
        if not entry_id.isalnum():
            raise QuarantineMissing(f"not a quarantine id: {entry_id!r}")
        return self.messages / f"{entry_id}.eml"

    def total_bytes(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(b"bytes")
        return int(raw) if raw else 0

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
        if len(raw) > self.max_bytes:
            return None
        entry_id = secrets.token_hex(12)
        path = self._path(entry_id)
        # The temporary file is made in the index folder: never seen as a record among messages.
        atomic_write(path, raw, temp_dir=self.index)
        entry = QuarantineEntry(
            id=entry_id,
            time=time.time(),
            size=len(raw),
            mail_from=mail_from,
            rcpt_to=list(rcpt_to),
            subject=subject,
            score=score,
            status=status,
        )
        evicted: list[str] = []
        key = f"{time.time_ns():020d}-{entry_id}".encode()
        with self.env.begin(write=True) as txn:
            total = int(txn.get(b"bytes", db=self._meta) or b"0") + len(raw)
            cursor = txn.cursor(db=self._by_time)
            # Oldest first: keys are arrival times.
            while total > self.max_bytes and cursor.first():
                old = msgspec.json.decode(cursor.value(), type=QuarantineEntry)
                cursor.delete()
                txn.delete(old.id.encode(), db=self._ids)
                total -= old.size
                evicted.append(old.id)
            txn.put(key, msgspec.json.encode(entry), db=self._by_time)
            txn.put(entry_id.encode(), key, db=self._ids)
            txn.put(b"bytes", str(total).encode(), db=self._meta)
        for old_id in evicted:
            self._path(old_id).unlink(missing_ok=True)
        return entry_id

    def get(self, entry_id: str) -> QuarantineEntry:
        with self.env.begin() as txn:
            key = txn.get(entry_id.encode(), db=self._ids)
            value = txn.get(key, db=self._by_time) if key else None
        if value is None:
            raise QuarantineMissing(f"no quarantined message {entry_id}")
        return msgspec.json.decode(value, type=QuarantineEntry)

    def original(self, entry_id: str) -> bytes:
        """The message exactly as it was held."""
        self.get(entry_id)
        return self._path(entry_id).read_bytes()

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
        gone: list[str] = []
        stale: list[str] = []
        with self.env.begin(db=self._by_time) as txn:
            for _key, value in txn.cursor():
                e = msgspec.json.decode(value, type=QuarantineEntry)
                if not self._path(e.id).exists():
                    gone.append(e.id)  # removed by the core's store enforcer
                    continue
                if e.claim and time.time() - e.claimed_at >= self.stale_after:
                    stale.append(e.id)
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
        for entry_id in gone:
            self._forget(entry_id)
        if stale and self.recover(stale):
            return self.search(since, until, sender, recipient, subject, min_score)
        return out

    def delete(self, entry_id: str) -> None:
        """Remove a message for good; :class:`QuarantineBusy` while a release sends it."""
        fd = None
        with contextlib.suppress(FileNotFoundError):  # then the entry alone goes
            fd = lock_held(self._path(entry_id))
            if fd is None:
                raise self._busy(entry_id)
        try:
            self._forget(entry_id, refuse_claimed=True)
        finally:
            if fd is not None:
                os.close(fd)

    def _forget(
        self, entry_id: str, *, refuse_claimed: bool = False, token: str | None = None
    ) -> bool:
        """Drop the entry and its file; False when ``token`` is given and no longer holds it."""
        with self.env.begin(write=True) as txn:
            key = txn.get(entry_id.encode(), db=self._ids)
            value = txn.get(key, db=self._by_time) if key is not None else None
            if key is None or value is None:
                if token is not None:
                    return False
                raise QuarantineMissing(f"no quarantined message {entry_id}")
            entry = msgspec.json.decode(value, type=QuarantineEntry)
            if token is not None and entry.claim != token:
                return False
            if refuse_claimed and entry.claim and not self._stale(entry):
                raise self._busy(entry_id, entry)
            txn.delete(key, db=self._by_time)
            txn.delete(entry_id.encode(), db=self._ids)
            total = int(txn.get(b"bytes", db=self._meta) or b"0") - entry.size
            txn.put(b"bytes", str(max(total, 0)).encode(), db=self._meta)
        self._path(entry_id).unlink(missing_ok=True)
        return True

    # -- release, exactly once -----------------------------------------------------------------

    def _busy(self, entry_id: str, entry: QuarantineEntry | None = None) -> QuarantineBusy:
        """What the second caller is told: who releases it since when, where known."""
        if entry is None:
            try:
                entry = self.get(entry_id)
            except QuarantineMissing:
                return QuarantineBusy(f"{entry_id} was released or deleted just now")
        if not entry.claim:
            return QuarantineBusy(f"{entry_id} is being released right now")
        since = time.strftime("%H:%M:%S", time.localtime(entry.claimed_at))
        return QuarantineBusy(
            f"{entry_id} is being released (process {entry.claimed_by}, since {since})"
        )

    def _stale(self, entry: QuarantineEntry) -> bool:
        return time.time() - entry.claimed_at >= self.stale_after

    def claim(self, entry_id: str) -> ReleaseClaim:
        """Take ``entry_id`` for one release: its file locked, its entry marked, its bytes
        read. Raises :class:`QuarantineBusy` when another release has it (or it went
        meanwhile) and :class:`QuarantineMissing` when there is no such message. Follow with
        :meth:`finish` once it is delivered, or :meth:`abandon` when it was not."""
        try:
            fd = lock_held(self._path(entry_id))
        except FileNotFoundError as exc:
            self.get(entry_id)  # QuarantineMissing when the entry is gone too
            raise QuarantineMissing(f"the file of {entry_id} is gone") from exc
        if fd is None:
            raise self._busy(entry_id)
        try:
            # The lock is ours, so any claim on the entry is of a process that is gone.
            with self.env.begin(write=True) as txn:
                key = txn.get(entry_id.encode(), db=self._ids)
                value = txn.get(key, db=self._by_time) if key is not None else None
                if key is None or value is None:
                    raise QuarantineBusy(f"{entry_id} was released or deleted just now")
                entry = msgspec.json.decode(value, type=QuarantineEntry)
                if entry.claim and not self._stale(entry):
                    raise self._busy(entry_id, entry)
                entry = msgspec.structs.replace(
                    entry,
                    claim=secrets.token_hex(8),
                    claimed_by=os.getpid(),
                    claimed_at=time.time(),
                )
                txn.put(key, msgspec.json.encode(entry), db=self._by_time)
            raw = read_held(fd)
        except BaseException:
            os.close(fd)
            raise
        return ReleaseClaim(entry=entry, raw=raw, fd=fd)

    def finish(self, claim: ReleaseClaim) -> None:
        """The claimed message is delivered: it leaves the quarantine."""
        try:
            self._forget(claim.entry.id, token=claim.entry.claim)
        finally:
            os.close(claim.fd)

    def abandon(self, claim: ReleaseClaim) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        try:
            self._unclaim(claim.entry.id, claim.entry.claim)
        finally:
            os.close(claim.fd)

    def _unclaim(self, entry_id: str, token: str | None) -> bool:
        with self.env.begin(write=True) as txn:
            key = txn.get(entry_id.encode(), db=self._ids)
            value = txn.get(key, db=self._by_time) if key is not None else None
            if key is None or value is None:
                return False
            entry = msgspec.json.decode(value, type=QuarantineEntry)
            if not entry.claim or (token is not None and entry.claim != token):
                return False
            if token is None and not self._stale(entry):
                return False
            held = msgspec.structs.replace(entry, claim="", claimed_by=0, claimed_at=0.0)
            txn.put(key, msgspec.json.encode(held), db=self._by_time)
        return True

    def recover(self, ids: list[str] | None = None) -> list[str]:
        """Hold again the messages whose release claim is ``stale_after`` old and whose
        claimer is gone (its lock is free): all, or only ``ids``. The ids held again."""
        if ids is None:
            with self.env.begin(db=self._by_time) as txn:
                entries = [msgspec.json.decode(v, type=QuarantineEntry) for _, v in txn.cursor()]
            ids = [e.id for e in entries if e.claim and self._stale(e)]
        back = []
        for entry_id in ids:
            try:
                fd = lock_held(self._path(entry_id))
            except FileNotFoundError:
                continue
            if fd is None:
                continue  # its claimer is alive
            try:
                if self._unclaim(entry_id, None):
                    log.warning(
                        "spam quarantine: %s was left mid-release by a process that is gone; "
                        "held again",
                        entry_id,
                    )
                    back.append(entry_id)
            finally:
                os.close(fd)
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
    for analysis (``reason == "hold"``): it comes through again once the verdict is in."""
    if action.kind is sdk.ActionKind.TEMPFAIL:
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

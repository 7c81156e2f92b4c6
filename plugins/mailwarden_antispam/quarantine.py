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
"""

from __future__ import annotations

import asyncio
import os
import secrets
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgspec

import mailwarden_sdk as sdk

if TYPE_CHECKING:
    from .bayes import Bayes

__all__ = [
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineMissing",
    "SpamQuarantine",
    "SpamQuarantineView",
]


class QuarantineError(sdk.QuarantineError):
    """A message cannot be stored or sent (and the base of :class:`QuarantineMissing`)."""


class QuarantineMissing(QuarantineError, sdk.QuarantineNotFound):
    """No such message in the quarantine."""


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


class SpamQuarantine:
    """Held spam: one file per message in ``root``, the LMDB index in ``root-index`` beside it.

    ``root`` holds nothing but message files, so the core's store enforcer (which removes the
    oldest files of a declared folder) can govern it too; the index forgets entries whose
    file is gone.
    """

    def __init__(self, root: Path, max_bytes: int = 1 << 30) -> None:
        self.root = root
        self.max_bytes = max_bytes
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
        tmp = self.index / f"{entry_id}.tmp"  # never seen as a record in the message folder
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.messages)
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
        with self.env.begin(db=self._by_time) as txn:
            for _key, value in txn.cursor():
                e = msgspec.json.decode(value, type=QuarantineEntry)
                if not self._path(e.id).exists():
                    gone.append(e.id)  # removed by the core's store enforcer
                    continue
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
            self.delete(entry_id)
        return out

    def delete(self, entry_id: str) -> None:
        with self.env.begin(write=True) as txn:
            key = txn.get(entry_id.encode(), db=self._ids)
            if key is None:
                raise QuarantineMissing(f"no quarantined message {entry_id}")
            value = txn.get(key, db=self._by_time)
            size = msgspec.json.decode(value, type=QuarantineEntry).size if value else 0
            txn.delete(key, db=self._by_time)
            txn.delete(entry_id.encode(), db=self._ids)
            total = int(txn.get(b"bytes", db=self._meta) or b"0") - size
            txn.put(b"bytes", str(max(total, 0)).encode(), db=self._meta)
        self._path(entry_id).unlink(missing_ok=True)

    def release(self, entry_id: str, host: str, port: int, timeout: float = 30.0) -> None:
        """Send the original bytes to ``host:port`` with the original envelope, then delete.

        The message leaves the quarantine only after the next hop accepted it.
        """
        entry = self.get(entry_id)
        raw = self.original(entry_id)
        try:
            with smtplib.SMTP(host, port, timeout=timeout) as smtp:
                refused = smtp.sendmail(entry.mail_from, entry.rcpt_to, raw)
        except (OSError, smtplib.SMTPException) as exc:
            raise QuarantineError(f"release of {entry_id} failed: {exc}") from exc
        if refused and len(refused) == len(entry.rcpt_to):
            raise QuarantineError(f"release of {entry_id}: every recipient refused")
        self.delete(entry_id)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry(e: QuarantineEntry) -> sdk.QuarantineEntry:
    return sdk.QuarantineEntry(
        id=e.id,
        stored_at=e.time,
        sender=e.mail_from,
        recipients=list(e.rcpt_to),
        subject=e.subject,
        size=e.size,
        reason=e.status,
        score=e.score,
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
        # Ids being released or deleted in this process: a second click waits for nothing and
        # cannot send the message twice.
        self._busy: set[str] = set()
        self._lock = threading.Lock()

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

    @contextmanager
    def _claim(self, id: str) -> Iterator[None]:
        with self._lock:
            if id in self._busy:
                raise QuarantineError(f"{id} is being released or deleted already")
            self._busy.add(id)
        try:
            yield
        finally:
            with self._lock:
                self._busy.discard(id)

    async def release(self, id: str) -> str:
        """Deliver to the original recipients, then remove it from the quarantine."""
        with self._claim(id):
            entry = await asyncio.to_thread(self.store.get, id)
            target = self.smtp_target()
            if target is not None:
                where_host, port = target
                await asyncio.to_thread(self.store.release, id, where_host, port)
                return f"sent to {where_host}:{port}"
            raw = await asyncio.to_thread(self.raw, id)
            envelope = sdk.Envelope(mail_from=entry.mail_from, rcpt_to=list(entry.rcpt_to))
            try:
                where = await self.host.deliver(raw, envelope)
            except Exception as exc:
                raise QuarantineError(f"release of {id} failed: {exc}") from exc
            await asyncio.to_thread(self.store.delete, id)
            return where

    async def delete(self, id: str) -> str:
        """Remove it for good."""
        with self._claim(id):
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

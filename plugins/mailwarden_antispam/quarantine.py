"""The spam quarantine: whole messages, bounded in bytes, oldest removed first when full.

Message bytes are files (written, fsynced, then moved into place); an LMDB index holds one
entry per message keyed by arrival time, so the oldest is the first key, plus the running
total of bytes. A message is in the quarantine once its index entry is committed; eviction
removes index entries in the same transaction that admits the new one, then their files.
Release sends the original bytes over SMTP to the configured next hop (the MTA's re-injection
port), with the original envelope.
"""

from __future__ import annotations

import os
import secrets
import smtplib
import time
from pathlib import Path

import lmdb
import msgspec

__all__ = ["QuarantineEntry", "QuarantineError", "SpamQuarantine"]


class QuarantineError(Exception):
    """No such message, or it cannot be stored or sent."""


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
            raise QuarantineError(f"not a quarantine id: {entry_id!r}")
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
            raise QuarantineError(f"no quarantined message {entry_id}")
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
                raise QuarantineError(f"no quarantined message {entry_id}")
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

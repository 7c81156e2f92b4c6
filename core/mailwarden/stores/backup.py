"""The backup store: full copies of messages before a detector changes or deletes them.

Bodies are content-addressed files (:mod:`.blobs`), fsynced before the index entry naming them
commits; the index is a :class:`~.recordlog.RecordLog` of :class:`BackupEntry` by id and by
body hash. The cap (default 7 GB) counts the bodies; past it the oldest copies are removed,
and a body goes when no entry names it any more.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .blobs import BlobStore
from .bounded import BoundedStore, Usage
from .recordlog import RecordLog

__all__ = ["BackupEntry", "BackupStore"]


class BackupEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One backed-up message: why, when, from whom to whom, and which body."""

    id: str
    time: float
    sha256: str
    size: int
    reason: str
    mail_from: str = ""
    rcpt_to: list[str] = msgspec.field(default_factory=list)
    subject: str | None = None


class BackupStore(BoundedStore):
    """``put`` a message, ``list`` entries newest first, ``get`` a body back by id."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int | None = 7 << 30,
        retention_days: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.clock = clock
        self.evictions = 0
        self.descriptor = StoreDescriptor(
            name="backup",
            path=str(root),
            holds="full copies of messages (with envelope sender, recipients, subject) taken "
            "before a detector changed or deleted them",
            retention_days=retention_days,
            max_bytes=max_bytes,
            when_full=WhenFull.REMOVE_OLDEST,
            read_permission="backup.view",
        )
        self.blobs = BlobStore(root / "bodies")
        self.index: RecordLog[BackupEntry] = RecordLog(
            msgspec.structs.replace(self.descriptor, path=str(root / "index")),
            BackupEntry,
            time_of=lambda entry: entry.time,
            index_terms=lambda entry: {"id": [entry.id], "sha": [entry.sha256]},
            indices=("id", "sha"),
            clock=clock,
            extra_weight=lambda entry: entry.size,
            on_removed=self._release,
        )

    def _release(self, entries: list[BackupEntry]) -> None:
        # After the commit that removed the entries: bodies no other entry names go too.
        for digest in {entry.sha256 for entry in entries}:
            if self.index.count_term("sha", digest) == 0:
                self.blobs.remove(digest)

    def put(
        self,
        data: bytes,
        *,
        reason: str,
        mail_from: str = "",
        rcpt_to: list[str] | None = None,
        subject: str | None = None,
        backup_id: str | None = None,
    ) -> BackupEntry:
        """Keep a copy of ``data`` (as ``backup_id`` when the caller named it in advance);
        the body is on disk before the entry exists. Keeping an id twice keeps it once."""
        if backup_id is not None and (kept := self.entry(backup_id)) is not None:
            return kept
        digest = self.blobs.put(data)
        entry = BackupEntry(
            id=backup_id or secrets.token_hex(8),
            time=self.clock(),
            sha256=digest,
            size=len(data),
            reason=reason,
            mail_from=mail_from,
            rcpt_to=list(rcpt_to or []),
            subject=subject,
        )
        self.index.append(entry)
        return entry

    def list(
        self, *, since: float | None = None, until: float | None = None, limit: int | None = 100
    ) -> list[BackupEntry]:
        """Entries newest first."""
        return self.index.select(since=since, until=until, limit=limit)

    def entry(self, backup_id: str) -> BackupEntry | None:
        """The entry with ``backup_id``, else ``None``."""
        return self.index.get("id", backup_id)

    def get(self, backup_id: str) -> bytes:
        """The message backed up as ``backup_id`` (``KeyError`` if there is none)."""
        entry = self.entry(backup_id)
        if entry is None:
            raise KeyError(backup_id)
        return self.blobs.get(entry.sha256)

    def remove_unreferenced(self) -> int:
        """Delete bodies of interrupted puts (written, never indexed); how many."""
        return self.blobs.remove_unreferenced(lambda d: self.index.count_term("sha", d) > 0)

    def usage(self) -> Usage:
        return self.index.usage()

    def remove_older_than(self, horizon: float) -> int:
        return self.index.remove_older_than(horizon)

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        return self.index.remove_oldest_until(max_bytes, max_entries)

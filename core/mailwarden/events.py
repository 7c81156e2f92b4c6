"""The message event log: one record per processed message, searchable.

Records are msgspec-encoded JSON lines in one file per UTC day, so removing old days is
deleting files and a search by time range opens only the days in range. Retention and the
size cap are enforced by removing whole day files (:meth:`MessageEventLog.enforce`); the stores
issue brings finer indices, but the record format (:class:`~mailwarden_sdk.MessageEvent`) stays.
"""

from __future__ import annotations

import calendar
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from mailwarden_sdk import MessageEvent

__all__ = ["EventQuery", "MessageEventLog"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MessageEvent)


class EventQuery(msgspec.Struct, kw_only=True):
    """What to look for; every given field must match (substrings, case-insensitive)."""

    since: float | None = None
    until: float | None = None
    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None
    action: str | None = None
    status: str | None = None
    message_id: str | None = None
    client_address: str | None = None
    limit: int = 100

    def matches(self, event: MessageEvent) -> bool:
        """Whether ``event`` satisfies every condition given."""
        if self.since is not None and event.time < self.since:
            return False
        if self.until is not None and event.time >= self.until:
            return False
        if self.sender and self.sender.lower() not in event.mail_from.lower():
            return False
        if self.recipient and not any(self.recipient.lower() in r.lower() for r in event.rcpt_to):
            return False
        if self.subject and self.subject.lower() not in (event.subject or "").lower():
            return False
        if self.action and event.action.value != self.action:
            return False
        if self.status and self.status not in (
            event.verdict.antivirus.value,
            event.verdict.spam.value,
            event.verdict.reputation,
            event.verdict.sandbox,
        ):
            return False
        if self.message_id and self.message_id not in (event.message_id or ""):
            return False
        return not (self.client_address and self.client_address != event.client_address)


class MessageEventLog:
    """Append-only daily JSON-lines files under ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: float | None = 3.0,
        max_bytes: int | None = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._next_enforce = 0.0

    def files(self) -> list[Path]:
        """The day files, oldest first."""
        return sorted(self.directory.glob("*.jsonl")) if self.directory.is_dir() else []

    def enforce(self) -> list[Path]:
        """Remove whole days older than the retention, then oldest days over the size cap.

        A day file is removed once its newest possible record is past the retention, so records
        are kept at least ``retention_days`` and at most one day longer. The current day is never
        removed for size: the cap bounds history, not the records being written.
        """
        removed: list[Path] = []
        files = self.files()
        if self.retention_days is not None:
            horizon = self._clock() - self.retention_days * 86400
            for path in list(files):
                day_end = calendar.timegm(time.strptime(path.stem, "%Y%m%d")) + 86400
                if day_end <= horizon:
                    files.remove(path)
                    removed.append(path)
        if self.max_bytes is not None:
            sizes = {path: path.stat().st_size for path in files}
            total = sum(sizes.values())
            for path in files[:-1]:
                if total <= self.max_bytes:
                    break
                total -= sizes[path]
                removed.append(path)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def size(self) -> tuple[int, int]:
        """(bytes, records) currently stored."""
        total = records = 0
        for path in self.files():
            total += path.stat().st_size
            with path.open("rb") as handle:
                records += sum(1 for _ in handle)
        return total, records

    def _file_for(self, timestamp: float) -> Path:
        return self.directory / (time.strftime("%Y%m%d", time.gmtime(timestamp)) + ".jsonl")

    def append(self, event: MessageEvent) -> None:
        """Write one event; it is visible to :meth:`search` when this returns."""
        line = _encoder.encode(event) + b"\n"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self._clock() >= self._next_enforce:
                # Limits are checked at most once a minute, not on every message.
                self._next_enforce = self._clock() + 60
                self.enforce()
            # O_APPEND keeps concurrent writers from different processes line-atomic for lines
            # under PIPE_BUF-ish sizes on local filesystems, and never truncates a record.
            fd = os.open(self._file_for(event.time), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def search(self, query: EventQuery | None = None) -> list[MessageEvent]:
        """Events matching ``query``, newest first, at most ``query.limit``."""
        query = query or EventQuery()
        found: list[MessageEvent] = []
        for path in sorted(self._files(query), reverse=True):
            day = [event for event in self._read(path) if query.matches(event)]
            day.sort(key=lambda e: e.time, reverse=True)
            found.extend(day)
            if len(found) >= query.limit:
                break
        return found[: query.limit]

    def _files(self, query: EventQuery) -> Iterator[Path]:
        if not self.directory.is_dir():
            return
        first = time.strftime("%Y%m%d", time.gmtime(query.since)) if query.since else None
        last = time.strftime("%Y%m%d", time.gmtime(query.until)) if query.until else None
        for path in self.directory.glob("*.jsonl"):
            if first and path.stem < first:
                continue
            if last and path.stem > last:
                continue
            yield path

    @staticmethod
    def _read(path: Path) -> Iterator[MessageEvent]:
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    continue  # a record still being written by another process
                try:
                    yield _decoder.decode(line)
                except msgspec.DecodeError:
                    continue

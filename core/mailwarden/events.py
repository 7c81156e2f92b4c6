"""The message event log: one record per processed message, searchable through LMDB indices.

Records (:class:`~mailwarden_sdk.MessageEvent`, msgspec JSON) live in a
:class:`~mailwarden.stores.recordlog.RecordLog` beside indices by sender, recipient, client
IP, message id, verdict status, action and subject word, all written in the record's own
transaction. A search walks the smallest matching index within the time range, newest first,
so its cost follows the number of matches, not the size of the log (benchmarks/stores).
Retention (default 3 days) and the size cap (default 1 GB) remove the oldest records.

Records written before scores were refused at the SDK boundary may hold a ``null`` score (JSON
has no ``-inf``): they are read with the score as 0 and the finding's ``details["score"]``
saying so, because one such record used to make every page that lists events fail.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from mailwarden_sdk import MessageEvent, StoreDescriptor, WhenFull

from .stores.bounded import Usage, enforce
from .stores.recordlog import RecordLog

__all__ = [
    "EVENT_INDICES",
    "EventQuery",
    "MessageEventLog",
    "address_terms",
    "repair_event",
    "subject_words",
]

EVENT_INDICES = ("sender", "recipient", "client", "message_id", "status", "action", "word")
_WORD = re.compile(r"\w+")
_legacy_decode = msgspec.json.Decoder(MessageEvent).decode
_UNREADABLE_SCORE = "not a finite number when recorded; read as 0"


def repair_event(value: bytes) -> MessageEvent:
    """A stored event whose scores were recorded as ``null`` (a plugin's NaN or infinity),
    with those scores read as 0; raises ``msgspec.DecodeError`` for anything else."""
    data = msgspec.json.decode(value)
    verdict = data.get("verdict") if isinstance(data, dict) else None
    if isinstance(verdict, dict):
        if "spam_score" in verdict and verdict["spam_score"] is None:
            verdict["spam_score"] = 0.0
        for finding in verdict.get("findings") or ():
            if isinstance(finding, dict) and "score" in finding and finding["score"] is None:
                finding["score"] = 0.0
                details = finding.setdefault("details", {})
                if isinstance(details, dict):
                    details["score"] = _UNREADABLE_SCORE
    if isinstance(data, dict) and isinstance(data.get("timings_ms"), dict):
        data["timings_ms"] = {k: v for k, v in data["timings_ms"].items() if v is not None}
    try:
        return msgspec.convert(data, MessageEvent)
    except (msgspec.ValidationError, ValueError) as exc:
        raise msgspec.DecodeError(str(exc)) from exc


def address_terms(address: str) -> list[str]:
    """What an address is found by: itself, its local part and its domain (lower-case)."""
    address = address.strip().lower()
    if not address:
        return []
    local, at, domain = address.rpartition("@")
    if not at:
        return [address]
    return [t for t in (address, local, domain) if t]


def subject_words(subject: str | None) -> list[str]:
    """The words of a subject, lower-case (what a subject search matches)."""
    return _WORD.findall((subject or "").lower())


def _address_matches(term: str, address: str) -> bool:
    return term.lower().removeprefix("@") in address_terms(address)


def _bare_id(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>").lower()


def _statuses(event: MessageEvent) -> list[str]:
    verdict = event.verdict
    found = [verdict.antivirus.value, verdict.spam.value]
    found += [s for s in (verdict.reputation, verdict.sandbox, verdict.content) if s]
    return found


def _event_terms(event: MessageEvent) -> dict[str, Iterable[str]]:
    return {
        "sender": address_terms(event.mail_from),
        "recipient": [t for rcpt in event.rcpt_to for t in address_terms(rcpt)],
        "client": [event.client_address or ""],
        "message_id": [_bare_id(event.message_id)],
        "status": _statuses(event),
        "action": [event.action.value],
        "word": subject_words(event.subject),
    }


class EventQuery(msgspec.Struct, kw_only=True):
    """What to look for; every given field must match (case-insensitive).

    ``sender`` and ``recipient`` match a whole address, its local part or its domain
    (``@example.org`` or ``example.org``); ``subject`` matches when every word of it is a word
    of the subject; ``message_id`` with or without angle brackets; ``status`` is any verdict
    status (``infected``, ``spam``, ...). ``limit`` ``None``: every match.
    """

    since: float | None = None
    until: float | None = None
    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None
    action: str | None = None
    status: str | None = None
    message_id: str | None = None
    client_address: str | None = None
    limit: int | None = 100

    def terms(self) -> list[tuple[str, str]]:
        """The index terms this query can be answered from."""
        terms: list[tuple[str, str]] = []
        if self.sender:
            terms.append(("sender", self.sender.lower().removeprefix("@")))
        if self.recipient:
            terms.append(("recipient", self.recipient.lower().removeprefix("@")))
        if self.client_address:
            terms.append(("client", self.client_address))
        if self.message_id:
            terms.append(("message_id", _bare_id(self.message_id)))
        if self.status:
            terms.append(("status", self.status))
        if self.action:
            terms.append(("action", self.action))
        terms += [("word", word) for word in subject_words(self.subject)]
        return terms

    def matches(self, event: MessageEvent) -> bool:
        """Whether ``event`` satisfies every condition given."""
        if self.since is not None and event.time < self.since:
            return False
        if self.until is not None and event.time >= self.until:
            return False
        if self.sender and not _address_matches(self.sender, event.mail_from):
            return False
        if self.recipient and not any(_address_matches(self.recipient, r) for r in event.rcpt_to):
            return False
        if self.subject:
            words = set(subject_words(event.subject))
            if not all(word in words for word in subject_words(self.subject)):
                return False
        if self.action and event.action.value != self.action:
            return False
        if self.status and self.status not in _statuses(event):
            return False
        if self.message_id and _bare_id(self.message_id) != _bare_id(event.message_id):
            return False
        return not (self.client_address and self.client_address != event.client_address)


def event_log_descriptor(
    directory: Path, retention_days: float | None, max_bytes: int | None
) -> StoreDescriptor:
    """The declaration of the message event log at ``directory``."""
    return StoreDescriptor(
        name="message event log",
        path=str(directory),
        holds="per message: addresses, client IP, HELO, subject, attachment names, "
        "findings, verdict, action, timings",
        retention_days=retention_days,
        max_bytes=max_bytes,
        when_full=WhenFull.REMOVE_OLDEST,
        read_permission="events.messages.view",
    )


class MessageEventLog:
    """The message event log under ``directory`` (an LMDB environment)."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: float | None = 3.0,
        max_bytes: int | None = 1 << 30,
        clock: Callable[[], float] = time.time,
        sync: bool = True,
        initial_map_size: int = 16 << 20,
    ) -> None:
        self.directory = directory
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self._clock = clock
        self._next_enforce = 0.0
        self.store: RecordLog[MessageEvent] = RecordLog(
            event_log_descriptor(directory, retention_days, max_bytes),
            MessageEvent,
            time_of=lambda event: event.time,
            index_terms=_event_terms,
            indices=EVENT_INDICES,
            clock=clock,
            sync=sync,
            initial_map_size=initial_map_size,
            repair=repair_event,
        )

    def enforce(self) -> int:
        """Remove records past the retention and the oldest over the cap; how many."""
        self._next_enforce = self._clock() + 60
        self.import_legacy()
        return enforce(self.store)

    def import_legacy(self) -> int:
        """Read in and remove day files of the earlier JSON-lines format; records imported.

        So an upgraded gateway keeps its history searchable and under the same limits. Each
        file is locked while read, so two workers never import it twice; a crash during an
        import may repeat that one file's records.
        """
        imported = 0
        paths = sorted(self.directory.glob("*.jsonl")) if self.directory.is_dir() else []
        for path in paths:
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue  # another worker has just imported it
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                if os.fstat(handle.fileno()).st_nlink == 0:
                    continue
                batch: list[MessageEvent] = []
                for line in handle:
                    try:
                        batch.append(_legacy_decode(line))
                    except msgspec.DecodeError:
                        continue  # a line torn by a crash of the old writer
                    if len(batch) >= 5000:
                        imported += len(self.store.append_many(batch))
                        batch = []
                if batch:
                    imported += len(self.store.append_many(batch))
                path.unlink()
        return imported

    def usage(self) -> Usage:
        """Bytes, records and the oldest record's time."""
        return self.store.usage()

    def size(self) -> tuple[int, int]:
        """(bytes, records) currently stored."""
        usage = self.store.usage()
        return usage.bytes, usage.count

    def append(self, event: MessageEvent) -> None:
        """Write one event; it is visible to :meth:`search` when this returns."""
        self.append_many([event])

    def append_many(self, events: list[MessageEvent]) -> None:
        """Write events in one transaction."""
        if self._clock() >= self._next_enforce and self.retention_days is not None:
            # Age is checked at most once a minute; the size cap holds at every append.
            self.enforce()
        self.store.append_many(events)

    def search(self, query: EventQuery | None = None) -> list[MessageEvent]:
        """Events matching ``query``, newest first, at most ``query.limit``."""
        query = query or EventQuery()
        return self.store.select(
            since=query.since,
            until=query.until,
            terms=query.terms(),
            predicate=query.matches,
            limit=query.limit,
        )

    def verify(self) -> list[str]:
        """Inconsistencies between records and indices (empty: none)."""
        return self.store.verify()

    def close(self) -> None:
        """Close the environment (it reopens on the next use)."""
        self.store.close()

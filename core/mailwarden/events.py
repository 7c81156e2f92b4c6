"""The message event log: one record per processed message, searchable through LMDB indices.

Records (:class:`~mailwarden_sdk.MessageEvent`, msgspec JSON) live in a
:class:`~mailwarden.stores.recordlog.RecordLog` beside indices by sender, recipient, client
IP, message id, verdict status, action and subject word, all written in the record's own
transaction. A search walks the smallest matching index within the time range, newest first,
so its cost follows the number of matches, not the size of the log (benchmarks/stores).
Retention (default 3 days) and the size cap (default 1 GB) remove the oldest records.

The gateway records through :meth:`MessageEventLog.write_later`: a writer thread commits the
queued events in one LMDB write transaction (one fsync) per batch of at most
:data:`BATCH_EVENTS` events, :data:`BATCH_SECONDS` after a batch's first event at the latest,
so the event loop never waits on the disk (an append there was 0.45 ms of CPU and an fsync,
and behind the enforcement thread's transactions it waited seconds). An event is an audit
record: the mail itself was made durable (spool or queue) before it was answered. A clean stop
(:meth:`MessageEventLog.close`, ``serve`` on SIGTERM, the process exiting) writes every queued
event; a SIGKILL or power loss may lose the events of the last batch window. The queue holds at
most :data:`QUEUE_EVENTS` events: past that, :meth:`~MessageEventLog.write_later` waits for the
writer (the ingress slows down), it never drops one. Searches in the same process wait for what
was queued before them; another process sees an event once its batch is committed.

Records written before scores were refused at the SDK boundary may hold a ``null`` score (JSON
has no ``-inf``): they are read with the score as 0 and the finding's ``details["score"]``
saying so, because one such record used to make every page that lists events fail.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from mailwarden_sdk import MessageEvent, StoreDescriptor, WhenFull

from .stores.bounded import Usage, enforce
from .stores.recordlog import RecordLog

__all__ = [
    "BATCH_EVENTS",
    "BATCH_SECONDS",
    "EVENT_INDICES",
    "QUEUE_EVENTS",
    "EventQuery",
    "MessageEventLog",
    "address_terms",
    "repair_event",
    "subject_words",
]

log = logging.getLogger(__name__)

#: The writer's group commit: a batch is committed at this many events, or this long after its
#: first event (the window a SIGKILL can lose), whichever comes first.
BATCH_EVENTS = 256
BATCH_SECONDS = 0.02
#: Events queued beyond this make :meth:`MessageEventLog.write_later` wait for the writer.
QUEUE_EVENTS = 16 * BATCH_EVENTS
# How long a clean stop waits for the writer before it says how many events it could not write.
_CLOSE_SECONDS = 60.0

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
        batch_events: int = BATCH_EVENTS,
        batch_seconds: float = BATCH_SECONDS,
        queue_events: int = QUEUE_EVENTS,
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
        #: Called by the writer thread with each batch once it is committed (kept or not):
        #: what else goes out per message (the JSON export, syslog, traces).
        self.on_written: Callable[[list[MessageEvent]], None] | None = None
        #: Called by the writer thread with how many events of a batch could not be stored.
        self.on_failed: Callable[[int], None] | None = None
        self._batch_events = batch_events
        self._batch_seconds = batch_seconds
        self._queue_events = queue_events
        self._fresh_writer()
        _OPEN_LOGS.add(self)

    def _fresh_writer(self) -> None:
        # Also in a forked child: the parent's queue and thread are not ours to finish.
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: list[tuple[MessageEvent, bool]] = []
        self._queued = self._written = self._flushing = 0
        self._closing = False
        self._writer: threading.Thread | None = None

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
        """Write one event now; it is on disk and visible to every reader when this returns."""
        self.append_many([event])

    def write_later(self, event: MessageEvent, *, keep: bool = True) -> None:
        """Queue ``event`` for the writer thread, which commits it with its batch and then
        hands the batch to :attr:`on_written`; ``keep=False``: only the latter (the log is
        off). Waits while :data:`QUEUE_EVENTS` are queued. For the event loop: no disk here."""
        if self._pid != os.getpid():
            self._fresh_writer()
        with self._cond:
            while len(self._queue) >= self._queue_events:
                self._cond.wait()
            self._queue.append((event, keep))
            self._queued += 1
            if self._writer is None:
                # Also after a stop: a writer that is stopping writes what comes meanwhile.
                self._writer = threading.Thread(
                    target=self._write_loop, name="event-writer", daemon=True
                )
                self._writer.start()
            if len(self._queue) in (1, self._batch_events):
                self._cond.notify_all()

    def pending(self) -> int:
        """Events queued and not yet committed."""
        with self._cond:
            return self._queued - self._written

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far is committed (or failed, logged and counted);
        False when ``timeout`` ran out first."""
        if self._pid != os.getpid() or threading.current_thread() is self._writer:
            return True
        with self._cond:
            target = self._queued
            if self._written >= target:
                return True
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._written >= target, timeout)
            finally:
                self._flushing -= 1

    def stop_writer(self, timeout: float = _CLOSE_SECONDS) -> bool:
        """Commit every queued event and end the writer thread; False (and the events left
        named in the log) when it did not finish within ``timeout``."""
        if self._pid != os.getpid():
            return True
        with self._cond:
            writer = self._writer
            if writer is None:
                return True
            self._closing = True
            self._cond.notify_all()
        writer.join(timeout)
        if writer.is_alive():
            log.error(
                "message event log: %d event(s) not written within %g s of the stop",
                self.pending(),
                timeout,
            )
            return False
        return True

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    # Under the lock: an event queued from now on starts a new writer.
                    self._writer = None
                    self._closing = False
                    return
                # The window runs from the batch's first event.
                deadline = time.monotonic() + self._batch_seconds
                while len(self._queue) < self._batch_events and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._flushing:
                        break
                    self._cond.wait(left)
                batch = self._queue[: self._batch_events]
                del self._queue[: self._batch_events]
                self._cond.notify_all()
            try:
                self._commit(batch)
            except Exception:
                log.exception("message event writer: a batch of %d failed", len(batch))
            finally:
                with self._cond:
                    self._written += len(batch)
                    self._cond.notify_all()

    def _commit(self, batch: list[tuple[MessageEvent, bool]]) -> None:
        kept = [event for event, keep in batch if keep]
        lost = 0
        if kept:
            try:
                self.append_many(kept)
            except Exception:
                # One by one, so an event that cannot be written takes only itself along.
                for event in kept:
                    try:
                        self.append_many([event])
                    except Exception:
                        log.exception("could not write the message event of %s", event.id)
                        lost += 1
        if lost and self.on_failed is not None:
            self.on_failed(lost)
        if self.on_written is not None:
            try:
                self.on_written([event for event, _ in batch])
            except Exception:
                log.exception("message events written, but what follows them failed")

    def append_many(self, events: list[MessageEvent]) -> None:
        """Write events in one transaction."""
        if self._clock() >= self._next_enforce and self.retention_days is not None:
            # Age is checked at most once a minute; the size cap holds at every append.
            self.enforce()
        self.store.append_many(events)

    def search(self, query: EventQuery | None = None) -> list[MessageEvent]:
        """Events matching ``query``, newest first, at most ``query.limit``."""
        query = query or EventQuery()
        # What this process recorded before the search is found by it.
        self.flush(_CLOSE_SECONDS)
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
        """Write the queued events, stop the writer and close the environment (a later
        write or search opens it again)."""
        self.stop_writer()
        self.store.close()


# Logs with a writer, so events queued by a process that exits without stopping its gateway
# (a command, a test) are still written: the writer is a daemon thread and would be dropped.
_OPEN_LOGS: weakref.WeakSet[MessageEventLog] = weakref.WeakSet()


@atexit.register
def _write_queued_at_exit() -> None:
    for events in list(_OPEN_LOGS):
        events.stop_writer()

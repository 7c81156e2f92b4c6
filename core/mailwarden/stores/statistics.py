"""Statistics counters for reports: by hour and by day, messages, verdicts, actions, and the
top senders, recipients and detections.

One LMDB environment, one database of counters keyed ``period|bucket|kind|name`` (``h`` and
an hour ``YYYYMMDDHH``, or ``d`` and a day ``YYYYMMDD``, UTC) with 8-byte big-endian counts.
All the counters of one message move in one write transaction, so reports never see half a
message. Kept without limit, as the design's table says; a report reads one bucket's prefix.

In a gateway (a running event loop) counts wait in memory up to :data:`FLUSH_SECONDS` and move
in one transaction: one write per message was a twentieth of the milter's CPU time per 1 KiB
message. A reader in the same process flushes first; another process sees them a second late,
and a killed worker loses at most that second of counters (the messages themselves are in the
event log).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from mailwarden_sdk import MessageEvent, StoreDescriptor, WhenFull

from .lmdb_env import LmdbEnv

__all__ = ["FLUSH_SECONDS", "Statistics", "bucket_of"]

log = logging.getLogger(__name__)

#: How long counts may wait in memory before they are written.
FLUSH_SECONDS = 1.0

_U64 = struct.Struct(">Q")
Period = Literal["h", "d"]


def bucket_of(period: Period, timestamp: float) -> str:
    """The hour or day bucket of ``timestamp`` (UTC)."""
    return time.strftime("%Y%m%d%H" if period == "h" else "%Y%m%d", time.gmtime(timestamp))


# What one message counts, as one hashable key: counted per distinct key in memory (a dict
# increment per message where the counters' names were a dozen tuples and a Counter update),
# its names made when the counts are written (:func:`_names`).
_Key = tuple[
    str, str, str, str | None, str | None, str | None, str, tuple[str, ...], tuple[str, ...]
]


def _key(event: MessageEvent) -> _Key:
    verdict = event.verdict
    # Taken now: the findings are the event's, which observers hold meanwhile.
    detections: tuple[str, ...] = ()
    if verdict.findings or verdict.virus_names:
        # A detection is named by its signature when it has one (the virus name), else its code.
        found = {
            f.details.get("signature") or f.code
            for f in verdict.findings
            if f.status not in ("clean", "error")
        }
        found.update(verdict.virus_names)
        detections = tuple(sorted(found))
    # The statuses as they are (str enums: their value when written), ``.value`` is a
    # descriptor call each.
    return (
        event.action,
        verdict.antivirus,
        verdict.spam,
        verdict.reputation,
        verdict.sandbox,
        verdict.content,
        event.mail_from,
        tuple(event.rcpt_to),
        detections,
    )


def _names(key: _Key) -> list[tuple[str, str]]:
    action, antivirus, spam, reputation, sandbox, content, sender, rcpt_to, detections = key
    names = [("messages", ""), ("action", str(action))]
    names += [("antivirus", str(antivirus)), ("spam", str(spam))]
    names += [(kind, s) for kind, s in (("reputation", reputation),
                                         ("sandbox", sandbox),
                                         ("content", content)) if s]  # fmt: skip
    names.append(("sender", sender.lower() or "<>"))
    names += [("recipient", r.lower()) for r in dict.fromkeys(rcpt_to)]
    names += [("detection", d) for d in sorted(detections)]
    return names


class Statistics:
    """Counters updated per message (:meth:`count`), read per bucket (:meth:`counters`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Counters may lose the last transactions in a machine crash; no fsync per message.
        self.env = LmdbEnv(root, dbs={"counts": False}, sync=False)
        # Messages by hour (seconds // 3600) and what they count (_key); the counters' names
        # and keys are made when they are written, once per distinct message key and flush.
        self._pending: dict[int, dict[_Key, int]] = {}
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self.descriptor = StoreDescriptor(
            name="statistics",
            path=str(root),
            holds="counters by hour and day: messages, verdicts, actions, senders, recipients, "
            "detections",
            when_full=WhenFull.NOT_CAPPED,
            read_permission="reports.view",
        )

    def count(self, event: MessageEvent) -> None:
        """Add one message to the hour and day buckets of its time."""
        key = _key(event)
        hour = int(event.time // 3600)
        with self._lock:
            counts = self._pending.get(hour)
            if counts is None:
                counts = self._pending[hour] = {}
            counts[key] = counts.get(key, 0) + 1
        if self._timer is not None:
            return  # a flush is due already (asking for the loop is a system call)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop to flush later: a library caller or a command
            return
        self._timer = loop.call_later(FLUSH_SECONDS, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        # In a thread: a second's counters of many senders are thousands of puts, and the
        # event loop would wait for them (and for the environment's lock) meanwhile.
        asyncio.get_running_loop().run_in_executor(None, self._flush_logged)

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            log.exception("statistics counters not written; kept for the next try")

    def flush(self) -> None:
        """Write the counts waiting in memory (one transaction); kept if the write fails."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        keyed: Counter[bytes] = Counter()
        for hour, counts in pending.items():
            when = hour * 3600
            named: Counter[tuple[str, str]] = Counter()
            for key, n in counts.items():
                for pair in _names(key):
                    named[pair] += n
            for prefix in (f"h|{bucket_of('h', when)}|", f"d|{bucket_of('d', when)}|"):
                for (kind, name), n in named.items():
                    keyed[f"{prefix}{kind}|{name}".encode()[:500]] += n

        def work(txn: Any) -> None:
            db = self.env.db("counts")
            for key, n in keyed.items():
                raw = txn.get(key, db=db)
                txn.put(key, _U64.pack((_U64.unpack(raw)[0] if raw else 0) + n), db=db)

        try:
            self.env.write(work)
        except BaseException:
            with self._lock:
                for hour, counts in pending.items():
                    kept = self._pending.setdefault(hour, {})
                    for key, n in counts.items():
                        kept[key] = kept.get(key, 0) + n
            raise

    def counters(self, period: Period, bucket: str) -> dict[str, dict[str, int]]:
        """``{kind: {name: count}}`` of one bucket (``messages`` has the name ``""``)."""
        self.flush()
        prefix = f"{period}|{bucket}|".encode()

        def work(txn: Any) -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            cursor = txn.cursor(db=self.env.db("counts"))
            ok = cursor.set_range(prefix)
            while ok and cursor.key().startswith(prefix):
                kind, _, name = cursor.key()[len(prefix) :].decode().partition("|")
                found.setdefault(kind, {})[name] = int(_U64.unpack(cursor.value())[0])
                ok = cursor.next()
            return found

        return self.env.read(work)

    def top(self, period: Period, bucket: str, kind: str, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` largest counters of ``kind`` (``sender``, ``recipient``, ``detection``)."""
        counts = self.counters(period, bucket).get(kind, {})
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]

    def close(self) -> None:
        """Flush and close."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        self.env.sync()
        self.env.close()

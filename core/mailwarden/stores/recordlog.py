"""Time-ordered records in LMDB with secondary indices kept in the same transaction.

Layout of one environment:

``records``   key (time in µs, sequence; 16 bytes big-endian) -> the record, msgspec JSON
``meta``      ``seq`` (last sequence number) and ``bytes`` (what the records weigh)
``ix_NAME``   one per index, dupsort: term (UTF-8, lower-case) -> record key

A record and all its index entries are written, and removed, in one write transaction, so
an index never names a missing record and a SIGKILL at any point leaves either all of a record
or none of it. Index values are record keys, which sort by time, so the entries of one term
within a time range are a contiguous run read newest first from the range's end: a search by
sender over a million records touches only that sender's entries in the range.

A record that does not decode (damaged on disk, or written by a version that stored what this
one refuses) is skipped by searches and counted in :attr:`RecordLog.damaged`, never fatal to
the search; ``repair`` may first turn such a value into a record. A damaged environment is
moved aside and recreated (:mod:`.lmdb_env`).

Enforcement: records older than the retention and, past a cap, the oldest records are removed
(:class:`~mailwarden.stores.bounded.BoundedStore`); cap trimming also happens in the write
transaction that went over, so the caps hold after every append.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .bounded import BoundedStore, Usage
from .lmdb_env import LmdbEnv

__all__ = ["RecordLog", "key_time"]

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

_KEY = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
# LMDB's key limit is 511 bytes; longer terms are cut (the full record is checked anyway).
_MAX_TERM = 400
# Rows removed per write transaction by age, so the writers of new records wait briefly.
_REMOVE_BATCH = 5000
# Cap trimming inside an append transaction removes at most this many records more than it
# appends (a group commit appends hundreds); the periodic enforcement takes the rest (only
# after a cap was lowered can there be more).
_TRIM_IN_APPEND = 64


def _key(timestamp: float, seq: int) -> bytes:
    return _KEY.pack(max(0, int(timestamp * 1_000_000)), seq)


def key_time(key: bytes) -> float:
    """The time (seconds) a record key carries."""
    micros: int = _KEY.unpack(key)[0]
    return micros / 1_000_000


def _term(value: str) -> bytes:
    return value.lower().encode("utf-8", "replace")[:_MAX_TERM]


class RecordLog(BoundedStore, Generic[R]):
    """Records of type ``record_type`` ordered by ``time_of(record)``, with named indices.

    ``index_terms(record)`` gives, per index name, the terms a record is found by.
    """

    def __init__(
        self,
        descriptor: StoreDescriptor,
        record_type: type[R],
        *,
        time_of: Callable[[R], float],
        index_terms: Callable[[R], Mapping[str, Iterable[str]]] | None = None,
        indices: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        sync: bool = True,
        initial_map_size: int = 16 << 20,
        extra_weight: Callable[[R], int] | None = None,
        on_removed: Callable[[list[R]], None] | None = None,
        repair: Callable[[bytes], R] | None = None,
    ) -> None:
        """``extra_weight(record)`` adds what a record costs outside the environment (a body
        file) to its weight; ``on_removed(records)`` is called after a commit removed them;
        ``repair(value)`` reads a stored value the record type refuses, or raises."""
        self.descriptor = descriptor
        self._repair = repair
        #: Stored values no search could read (skipped), since this object was made.
        self.damaged = 0
        self._extra_weight = extra_weight
        self._on_removed = on_removed
        # The records each thread's write transaction removed: per thread, since a write of
        # another thread can begin between this one's commit and its hand-over to on_removed.
        self._removals = threading.local()
        self.path = Path(descriptor.path)
        self.clock = clock
        self.evictions = 0
        self._time_of = time_of
        self._index_terms = index_terms
        self._indices = tuple(indices)
        dbs = {"records": False, "meta": False} | {f"ix_{name}": True for name in self._indices}
        self.env = LmdbEnv(
            self.path,
            dbs=dbs,
            sync=sync,
            initial_map_size=initial_map_size,
            name=descriptor.name,
        )
        self._encode = msgspec.json.Encoder().encode
        self._decode: Callable[[bytes], R] = msgspec.json.Decoder(record_type).decode

    # -- writing -----------------------------------------------------------------------------

    def _terms(self, record: R) -> list[tuple[str, bytes]]:
        if self._index_terms is None:
            return []
        found: set[tuple[str, bytes]] = set()
        for name, values in self._index_terms(record).items():
            for value in values:
                if value:
                    found.add((name, _term(value)))
        return sorted(found)

    def _weight(self, value: bytes, terms: list[tuple[str, bytes]], record: R) -> int:
        # What a record costs on disk, near enough: its JSON plus, per index entry, the term,
        # the 16-byte record key and LMDB's node header; plus what it keeps elsewhere.
        extra = self._extra_weight(record) if self._extra_weight else 0
        return len(value) + sum(len(term) + 24 for _, term in terms) + extra

    def _write(self, work: Callable[[Any], T]) -> T:
        """A write transaction; removed records are handed to ``on_removed`` after commit."""

        def attempt(txn: Any) -> T:
            self._removals.records = []  # a retried attempt (map grown) starts over
            return work(txn)

        result = self.env.write(attempt)
        removed: list[R] = self._removals.records
        self._removals.records = []
        if removed and self._on_removed is not None:
            self._on_removed(removed)
        return result

    def append(self, record: R) -> bytes:
        """Store one record with its index entries; returns its key."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[R]) -> list[bytes]:
        """Store records in one write transaction (one fsync for all); their keys."""
        prepared = []
        for record in records:
            value = self._encode(record)
            terms = self._terms(record)
            weight = self._weight(value, terms, record)
            prepared.append((self._time_of(record), value, terms, weight))

        def work(txn: Any) -> list[bytes]:
            meta = self.env.db("meta")
            seq = _get_u64(txn, meta, b"seq")
            weight = _get_u64(txn, meta, b"bytes")
            keys = []
            for timestamp, value, terms, record_weight in prepared:
                seq += 1
                key = _key(timestamp, seq)
                txn.put(key, value, db=self.env.db("records"))
                for name, term in terms:
                    txn.put(term, key, db=self.env.db(f"ix_{name}"))
                weight += record_weight
                keys.append(key)
            txn.put(b"seq", _U64.pack(seq), db=meta)
            txn.put(b"bytes", _U64.pack(weight), db=meta)
            if self.descriptor.when_full is WhenFull.REMOVE_OLDEST:
                self.evictions += self._trim(txn, _TRIM_IN_APPEND + len(prepared))
            return keys

        return self._write(work)

    def _read(self, value: bytes) -> R | None:
        """The record stored as ``value``; ``None`` (counted) when it cannot be read."""
        try:
            return self._decode(value)
        except msgspec.DecodeError:
            if self._repair is not None:
                try:
                    return self._repair(value)
                except (msgspec.DecodeError, ValueError, TypeError):
                    pass
            self.damaged += 1
            return None

    def _remove(self, txn: Any, key: bytes, value: bytes) -> None:
        record = self._read(value)
        # A damaged record still goes, by age or cap; its index entries (unknown) stay behind
        # and name a missing record, which searches skip.
        terms = self._terms(record) if record is not None else []
        for name, term in terms:
            txn.delete(term, key, db=self.env.db(f"ix_{name}"))
        txn.delete(key, db=self.env.db("records"))
        if record is not None:
            self._removals.records.append(record)
        meta = self.env.db("meta")
        cost = self._weight(value, terms, record) if record is not None else len(value)
        weight = _get_u64(txn, meta, b"bytes") - cost
        txn.put(b"bytes", _U64.pack(max(0, weight)), db=meta)

    def _trim(self, txn: Any, limit: int) -> int:
        """Remove oldest records while over a cap, at most ``limit``; how many."""
        max_bytes, max_entries = self.descriptor.max_bytes, self.descriptor.max_entries
        removed = 0
        records = self.env.db("records")
        cursor = txn.cursor(db=records)
        while removed < limit:
            count = txn.stat(records)["entries"]
            weight = _get_u64(txn, self.env.db("meta"), b"bytes")
            over = (max_bytes is not None and weight > max_bytes) or (
                max_entries is not None and count > max_entries
            )
            # Never the last record: a cap below one record's size must not empty the store.
            if not over or count <= 1 or not cursor.first():
                break
            self._remove(txn, cursor.key(), cursor.value())
            removed += 1
        return removed

    # -- the store interface -----------------------------------------------------------------

    def usage(self) -> Usage:
        def work(txn: Any) -> Usage:
            records = self.env.db("records")
            cursor = txn.cursor(db=records)
            oldest = key_time(cursor.key()) if cursor.first() else None
            return Usage(
                bytes=_get_u64(txn, self.env.db("meta"), b"bytes"),
                count=int(txn.stat(records)["entries"]),
                oldest=oldest,
            )

        return self.env.read(work)

    def remove_older_than(self, horizon: float) -> int:
        limit = _key(horizon, 0)
        total = 0
        while True:

            def work(txn: Any) -> int:
                cursor = txn.cursor(db=self.env.db("records"))
                removed = 0
                while removed < _REMOVE_BATCH and cursor.first() and cursor.key() < limit:
                    self._remove(txn, cursor.key(), cursor.value())
                    removed += 1
                return removed

            step = self._write(work)
            total += step
            if step < _REMOVE_BATCH:
                return total

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        total = 0
        while True:
            step = self._write(lambda txn: self._trim(txn, _REMOVE_BATCH))
            total += step
            if step < _REMOVE_BATCH:
                return total

    # -- reading -----------------------------------------------------------------------------

    def select(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        terms: Sequence[tuple[str, str]] = (),
        predicate: Callable[[R], bool] | None = None,
        limit: int | None = None,
    ) -> list[R]:
        """Records in ``[since, until)`` having every index term, newest first.

        The index term with the fewest entries drives the walk; every candidate is decoded and
        must pass ``predicate`` (which should re-check all conditions: terms are cut at 400
        bytes and lower-cased).
        """
        lo = _key(since, 0) if since is not None else None
        hi = _key(until, 0) if until is not None else None

        def work(txn: Any) -> tuple[list[R], list[bytes]]:
            found: list[R] = []
            skipped: list[bytes] = []
            for key, value in self._candidates(txn, lo, hi, terms):
                record = self._read(value)
                if record is None:
                    skipped.append(key)
                    continue
                if predicate is None or predicate(record):
                    found.append(record)
                    if limit is not None and len(found) >= limit:
                        break
            return found, skipped

        found, skipped = self.env.read(work)
        if skipped:
            log.warning(
                "%s: %d damaged record(s) skipped (the newest %s)",
                self.descriptor.name,
                len(skipped),
                skipped[0].hex(),
            )
        return found

    def get(self, index: str, term: str) -> R | None:
        """The newest record an index term names, else ``None``."""
        found = self.select(terms=[(index, term)], limit=1)
        return found[0] if found else None

    def count_term(self, index: str, term: str) -> int:
        """How many records an index term names."""

        def work(txn: Any) -> int:
            cursor = txn.cursor(db=self.env.db(f"ix_{index}"))
            return int(cursor.count()) if cursor.set_key(_term(term)) else 0

        return self.env.read(work)

    def _candidates(
        self, txn: Any, lo: bytes | None, hi: bytes | None, terms: Sequence[tuple[str, str]]
    ) -> Iterable[tuple[bytes, bytes]]:
        records = self.env.db("records")
        if not terms:
            cursor = txn.cursor(db=records)
            if hi is not None and cursor.set_range(hi):
                ok = cursor.prev()
            else:
                ok = cursor.last()
            while ok:
                if lo is not None and cursor.key() < lo:
                    return
                yield cursor.key(), cursor.value()
                ok = cursor.prev()
            return
        best: tuple[int, Any, bytes] | None = None
        for index, value in terms:
            cursor = txn.cursor(db=self.env.db(f"ix_{index}"))
            term = _term(value)
            count = int(cursor.count()) if cursor.set_key(term) else 0
            if count == 0:
                return
            if best is None or count < best[0]:
                best = (count, cursor, term)
        assert best is not None
        _count, cursor, term = best
        if hi is not None and cursor.set_range_dup(term, hi):
            ok = cursor.prev_dup()
        else:
            ok = cursor.set_key(term) and cursor.last_dup()
        while ok:
            key = cursor.value()
            if lo is not None and key < lo:
                return
            value = txn.get(key, db=records)
            if value is not None:
                yield key, value
            ok = cursor.prev_dup()

    def verify(self) -> list[str]:
        """Problems found between records and indices (empty when consistent)."""

        def work(txn: Any) -> list[str]:
            problems: list[str] = []
            records = self.env.db("records")
            expected: set[tuple[str, bytes, bytes]] = set()
            weight = 0
            for key, value in txn.cursor(db=records):
                try:
                    record = self._decode(value)
                except msgspec.DecodeError:
                    problems.append(f"record {key.hex()} does not decode")
                    continue
                terms = self._terms(record)
                weight += self._weight(value, terms, record)
                expected.update((name, term, key) for name, term in terms)
            present: set[tuple[str, bytes, bytes]] = set()
            for name in self._indices:
                for term, key in txn.cursor(db=self.env.db(f"ix_{name}")):
                    present.add((name, term, key))
            for name, term, key in sorted(present - expected):
                problems.append(f"index {name} names missing record {key.hex()} ({term!r})")
            for name, term, key in sorted(expected - present):
                problems.append(f"record {key.hex()} missing from index {name} ({term!r})")
            stored = _get_u64(txn, self.env.db("meta"), b"bytes")
            if stored != weight:
                problems.append(f"meta bytes {stored} but records weigh {weight}")
            return problems

        return self.env.read(work)

    def close(self) -> None:
        """Close the environment (it reopens on the next use)."""
        self.env.close()


def _get_u64(txn: Any, db: Any, name: bytes) -> int:
    raw = txn.get(name, db=db)
    return int(_U64.unpack(raw)[0]) if raw else 0

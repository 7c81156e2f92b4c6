"""The reputation cache: answers by lookup key in LMDB, capped, least recently used evicted.

One LMDB environment is shared by every worker process of a node and survives restarts. Two
databases live in it:

``entries``  key -> seq (8 bytes, big-endian) + expires (8-byte float) + answer (msgspec JSON)
``lru``      seq -> key, ordered by seq: the first key is the least recently used entry

An insert or a hit takes a fresh sequence number (one past the highest in ``lru``), moves the
key there, and, when the count of ``entries`` exceeds the cap, deletes the lowest sequence
numbers, all in the same write transaction. LMDB admits one writer at a time across processes,
so no transaction ever sees another's half-done eviction and the cap holds exactly.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lmdb
import msgspec

__all__ = ["DEFAULT_CAP", "Answer", "ReputationCache", "count_entries"]

DEFAULT_CAP = 360_000

_HEAD = struct.Struct(">Qd")
_SEQ = struct.Struct(">Q")
# The map is a sparse file; 2 GiB leaves room for 360,000 entries with long URL keys many
# times over without growing the file on disk beyond what is used.
_MAP_SIZE = 2 << 30


class Answer(msgspec.Struct, kw_only=True, frozen=True):
    """What a backend said about one lookup key.

    ``verdict`` is ``malicious``, ``suspicious`` or ``clean`` (not listed); ``name`` is the
    list's name for the threat (a signature, a list code); ``source`` names the backend.
    """

    verdict: str
    name: str = ""
    source: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Answer).decode


class ReputationCache:
    """A capped LRU map of lookup key -> :class:`Answer` with per-entry expiry, in LMDB.

    Safe to open from several processes and threads at once. Expired entries read as misses
    and are overwritten by the next insert of their key or evicted in LRU order.
    """

    def __init__(self, path: Path, cap: int = DEFAULT_CAP) -> None:
        if cap < 1:
            raise ValueError("cache cap must be at least 1")
        self.path = path
        self.cap = cap
        path.mkdir(parents=True, exist_ok=True)
        # A cache may lose its last transactions when the machine (not the process) crashes:
        # skipping fsync keeps a hit's LRU touch cheap, and every answer can be asked again.
        self._env = lmdb.open(
            str(path),
            map_size=_MAP_SIZE,
            max_dbs=2,
            sync=False,
            metasync=False,
            readahead=False,
        )
        self._entries = self._env.open_db(b"entries")
        self._lru = self._env.open_db(b"lru")

    def close(self) -> None:
        """Flush to disk and close the environment."""
        self._env.sync(True)
        self._env.close()

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._entries)["entries"])

    def get_many(self, keys: Iterable[str], *, touch: bool = True) -> dict[str, Answer]:
        """The unexpired answers among ``keys``; hits become the most recently used.

        Reads are lock-free; the hits of one call are touched together in one write
        transaction, so a message costs at most one write however many of its keys hit.
        """
        now = time.time()
        found: dict[str, Answer] = {}
        with self._env.begin() as txn:
            for key in keys:
                raw = txn.get(key.encode(), db=self._entries)
                if raw is None:
                    continue
                _seq, expires = _HEAD.unpack_from(raw)
                if expires > now:
                    found[key] = _decode(raw[_HEAD.size :])
        if touch and found:
            with self._env.begin(write=True) as txn:
                seq = self._next_seq(txn)
                for key in found:
                    bkey = key.encode()
                    raw = txn.get(bkey, db=self._entries)
                    if raw is None:
                        continue  # evicted by another writer between our read and this write
                    old_seq, expires = _HEAD.unpack_from(raw)
                    txn.delete(_SEQ.pack(old_seq), db=self._lru)
                    txn.put(bkey, _HEAD.pack(seq, expires) + raw[_HEAD.size :], db=self._entries)
                    txn.put(_SEQ.pack(seq), bkey, db=self._lru)
                    seq += 1
        return found

    def get(self, key: str) -> Answer | None:
        """The unexpired answer for ``key``, touched as most recently used; else ``None``."""
        return self.get_many([key]).get(key)

    def put_many(self, answers: Mapping[str, tuple[Answer, float]]) -> int:
        """Store ``key -> (answer, ttl seconds)`` as most recently used; returns evictions.

        Insert and eviction share one write transaction, so the cap holds exactly whatever
        other processes write at the same time.
        """
        if not answers:
            return 0
        now = time.time()
        with self._env.begin(write=True) as txn:
            seq = self._next_seq(txn)
            for key, (answer, ttl) in answers.items():
                bkey = key.encode()
                old = txn.get(bkey, db=self._entries)
                if old is not None:
                    txn.delete(_SEQ.pack(_HEAD.unpack_from(old)[0]), db=self._lru)
                txn.put(bkey, _HEAD.pack(seq, now + ttl) + _encode(answer), db=self._entries)
                txn.put(_SEQ.pack(seq), bkey, db=self._lru)
                seq += 1
            return self._evict(txn)

    def put(self, key: str, answer: Answer, ttl: float) -> int:
        """Store one answer; see :meth:`put_many`."""
        return self.put_many({key: (answer, ttl)})

    def keys_in_lru_order(self) -> list[str]:
        """Every key, least recently used first (for inspection and tests)."""
        with self._env.begin() as txn:
            return [bytes(v).decode() for _k, v in txn.cursor(db=self._lru)]

    def clear(self) -> None:
        """Remove every entry."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._entries, delete=False)
            txn.drop(self._lru, delete=False)

    def _next_seq(self, txn: Any) -> int:
        cursor = txn.cursor(db=self._lru)
        if cursor.last():
            return int(_SEQ.unpack(cursor.key())[0]) + 1
        return 0

    def _evict(self, txn: Any) -> int:
        excess = int(txn.stat(self._entries)["entries"]) - self.cap
        if excess <= 0:
            return 0
        cursor = txn.cursor(db=self._lru)
        cursor.first()
        evicted = 0
        while evicted < excess:
            key = cursor.value()
            # delete() moves the cursor to the next record, the next least recently used.
            cursor.delete()
            txn.delete(key, db=self._entries)
            evicted += 1
        return evicted


def count_entries(path: Path, db: bytes = b"entries") -> int | None:
    """Entries of the database ``db`` (the cache's by default) in the LMDB environment at
    ``path`` without joining its writers; ``None`` if there is none.

    Opened read-only and without the lock file, so the data inventory can count a store that
    running gateways are using (the count may lag their last transaction).
    """
    if not (path / "data.mdb").exists():
        return None
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=2)
    except lmdb.Error:
        return None
    try:
        with env.begin() as txn:
            try:
                entries = env.open_db(db, txn=txn, create=False)
            except lmdb.NotFoundError:
                return 0
            return int(txn.stat(entries)["entries"])
    finally:
        env.close()

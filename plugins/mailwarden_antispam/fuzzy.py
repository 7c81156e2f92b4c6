"""Fuzzy hashes of reported spam: the same campaign found again when its words shift a little.

A message's text (subject and body as :func:`~.content.body_text` gives it) is cut into
shingles of :data:`SHINGLE` consecutive words; each shingle is hashed (64-bit BLAKE2b) and the
:data:`SKETCH` smallest hashes are the message's sketch (a bottom-k MinHash). The share of one
reported message's sketch found in another message's sketch estimates how much of their text
the two share. A message a person reported as spam ("delete as spam", a spam lesson through
``mailwarden_learn``) has its sketch stored, each hash pointing to the reported message; a
later message with at least ``threshold`` of its sketch pointing to one reported message gets
the ``FUZZY_SPAM`` finding.

The sketches are kept in this node's LMDB store (capped, each entry expiring after
``ttl`` seconds) and, in a cluster, in Redis too (:func:`mailwarden_sdk.shared_state`), so
spam reported on one node is found on every node; while Redis does not answer the local store
does. Texts of fewer than :data:`SKETCH` shingles are not hashed (too little to compare).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lmdb

from mailwarden_sdk import (
    ParsedMessage,
    SharedState,
    SharedStateUnavailable,
    ascii_words,
    parse,
    shingle_sketch,
    unicode_words,
)

from .content import body_text

__all__ = ["MAX_ENTRIES", "SHINGLE", "SKETCH", "FuzzyStore", "sketch"]

log = logging.getLogger(__name__)

#: Words per shingle, and hashes per sketch.
SHINGLE = 4
SKETCH = 24
#: Hashes kept locally; the ones expiring first go above it.
MAX_ENTRIES = 1_000_000
_WORD = re.compile(r"[^\W_]{2,30}", re.UNICODE)
_MAX_WORDS = 5000
_ENTRY = struct.Struct(">d16s")  # expiry, the reported message's id
_SHARED = "antispam:fuzzy:"
_blake2b = hashlib.blake2b


def sketch(message: ParsedMessage, text: str | None = None) -> list[int]:
    """The message's bottom-k sketch (sorted), or ``[]`` when its text is too short;
    ``text`` the message's :func:`~.content.body_text` when the caller has it."""
    text = (body_text(message) if text is None else text).lower()
    # _WORD's words (findall over the lowered text), cut in the C core as the Bayes tokens'
    # are: on ASCII text (most mail) [^\W_] is [a-z0-9], ascii_words' class.
    if text.isascii():
        words = ascii_words(text, 2, 30)
    else:
        words = unicode_words(text, 2, 30)
    del words[_MAX_WORDS:]
    if len(words) < SHINGLE + SKETCH - 1:
        return []  # fewer shingles than a sketch holds
    # Hashing and selection in the C core (0.3 ms per message in Python); the words are still
    # cut here, as the C core has no Unicode tables for \w and str.lower().
    hashes = shingle_sketch(words, SHINGLE, SKETCH)
    return hashes if len(hashes) == SKETCH else []


def sketch_python(words: list[str]) -> list[int]:
    """:func:`sketch`'s hashing done in Python: the reference the native one must equal
    bit for bit (stored sketches depend on the exact digests)."""
    if len(words) < SHINGLE + SKETCH - 1:
        return []
    # Each distinct shingle hashed once; the 8-byte digests order as their big-endian values,
    # so only the SKETCH smallest become ints.
    shingles = set(map(" ".join, zip(*(words[i:] for i in range(SHINGLE)), strict=False)))
    hashes = {_blake2b(s.encode(), digest_size=8).digest() for s in shingles}
    if len(hashes) < SKETCH:
        return []
    return [int.from_bytes(h, "big") for h in heapq.nsmallest(SKETCH, hashes)]


class FuzzyStore:
    """Sketches of reported spam: LMDB under ``root``, and the cluster's Redis when shared."""

    def __init__(
        self,
        root: Path,
        *,
        threshold: float = 0.5,
        ttl: float = 30 * 86400.0,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.threshold = threshold
        self.ttl = ttl
        self.max_entries = max_entries
        self.env = lmdb.open(str(root), map_size=1 << 30, max_dbs=1, subdir=True)
        self._db = self.env.open_db(b"hashes")
        #: The cluster's state, set by the plugin at start.
        self.shared: SharedState | None = None

    def close(self) -> None:
        self.env.close()

    def report(self, raw: bytes) -> bool:
        """Keep the sketch of ``raw`` (reported as spam); False when its text is too short.
        From a thread, never on the event loop (it waits for Redis)."""
        hashes = sketch(parse(raw))
        if not hashes:
            return False
        ident = hashlib.sha256(raw).digest()[:16]
        now = time.time()
        with self.env.begin(write=True, db=self._db) as txn:
            for value in hashes:
                txn.put(value.to_bytes(8, "big"), _ENTRY.pack(now + self.ttl, ident))
            if txn.stat(self._db)["entries"] > self.max_entries:
                self._trim(txn, now)
        if self.shared is not None:
            # One key per hash: a later message reads all of its sketch in one MGET.
            values = {_key(value): ident.hex() for value in hashes}
            try:
                self.shared.blocking(self.shared.put_many(values, self.ttl))
            except SharedStateUnavailable as exc:
                log.warning("antispam: fuzzy hashes kept on this node only: %s", exc)
        return True

    def may_match(self) -> bool:
        """False when no message can get ``FUZZY_SPAM`` now (nothing reported in this node's
        store and no cluster store to ask): the scan then need not compute a sketch."""
        if self.shared is not None:
            return True
        with self.env.begin(db=self._db) as txn:
            # A cursor's first entry: a quarter of what the entry count (stat) costs.
            return bool(txn.cursor().first())

    def _trim(self, txn: Any, now: float) -> None:
        # Down to 90 % of the cap, the entries expiring first going first.
        live: list[tuple[float, bytes]] = []
        for key, value in txn.cursor(db=self._db):
            expiry = _ENTRY.unpack(value)[0]
            if expiry <= now:
                txn.delete(key, db=self._db)
            else:
                live.append((expiry, bytes(key)))
        live.sort()
        for _expiry, key in live[: max(0, len(live) - self.max_entries * 9 // 10)]:
            txn.delete(key, db=self._db)

    async def check(self, hashes: list[int]) -> dict[str, str] | None:
        """The details of a ``FUZZY_SPAM`` finding for a message of sketch ``hashes``, or
        ``None`` when no reported message shares ``threshold`` of it."""
        if not hashes:
            return None
        found: list[str | None] | None = None
        source = "redis"
        if self.shared is not None:
            try:
                found = await self.shared.get_many([_key(v) for v in hashes])
            except SharedStateUnavailable:
                found = None
        if found is None:
            source = "local"
            found = self._local(hashes)
        votes = Counter(v for v in found if v)
        if not votes:
            return None
        ident, count = votes.most_common(1)[0]
        share = count / len(hashes)
        if share < self.threshold:
            return None
        return {"similarity": f"{share:.2f}", "reported": ident[:16], "source": source}

    def _local(self, hashes: list[int]) -> list[str | None]:
        now = time.time()
        out: list[str | None] = []
        with self.env.begin(db=self._db) as txn:
            for value in hashes:
                raw = txn.get(value.to_bytes(8, "big"))
                if raw is None:
                    out.append(None)
                    continue
                expiry, ident = _ENTRY.unpack(raw)
                out.append(ident.hex() if expiry > now else None)
        return out


def _key(value: int) -> str:
    return f"{_SHARED}{value:016x}"

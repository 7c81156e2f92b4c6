"""Bayesian classifier: token counts in LMDB, Robinson/Fisher chi-square combining.

Every learning act is written to a journal (who, what, when, the message's digest and
Message-ID), and the digests of learned messages are kept with their class, so a message is
never counted twice and a wrong lesson can be undone (``untrain``) or moved to the other class.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import lmdb
import msgspec

from mailwarden_sdk import ParsedMessage, parse

from .content import body_text, message_urls

__all__ = ["JOURNAL_MAX_ENTRIES", "Bayes", "LearnRecord", "tokens"]

_WORD = re.compile(r"[^\W_]{3,24}|\$\d+", re.UNICODE)
_PAIR = struct.Struct("<II")
_MAX_TOKENS = 3000
#: Learning acts kept in the journal; the oldest go first.
JOURNAL_MAX_ENTRIES = 100_000


class LearnRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One journal entry: ``action`` learn/unlearn, ``label`` spam/ham."""

    time: float
    who: str
    action: str
    label: str
    digest: str
    message_id: str | None = None


def tokens(message: ParsedMessage) -> set[str]:
    """The message's tokens: words of the subject and text, sender domain, URL hosts."""
    out: set[str] = set()
    for word in _WORD.findall(body_text(message).lower()):
        out.add(word)
        if len(out) >= _MAX_TOKENS:
            break
    sender = (message.header("from") or "").lower()
    if "@" in sender:
        out.add("from:" + sender.rsplit("@", 1)[1].strip(" >"))
    for url in message_urls(message, 50):
        host = url.split("/")[2] if url.count("/") >= 2 else url
        out.add("url:" + host)
    return out


def _chi2q(x2: float, v: int) -> float:
    """P(chi-square with v degrees of freedom >= x2), v even."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


class Bayes:
    """Token counts and the learning journal under ``root`` (one LMDB environment)."""

    def __init__(
        self, root: Path, map_size: int = 1 << 30, journal_max_entries: int = JOURNAL_MAX_ENTRIES
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.journal_max_entries = journal_max_entries
        self.env = lmdb.open(str(root), map_size=map_size, max_dbs=4, subdir=True)
        self._tokens = self.env.open_db(b"tokens")
        self._meta = self.env.open_db(b"meta")
        self._learned = self.env.open_db(b"learned")
        self._journal = self.env.open_db(b"journal")

    def close(self) -> None:
        self.env.close()

    def counts(self) -> tuple[int, int]:
        """(spam, ham) messages learned."""
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(b"n")
        return _PAIR.unpack(raw) if raw else (0, 0)

    def learn(self, raw: bytes, label: str, who: str) -> bool:
        """Learn ``raw`` as ``label`` (spam/ham); False when it was already learned so.

        A message learned as the other class is moved (its old counts removed first).
        """
        if label not in ("spam", "ham"):
            raise ValueError("label must be spam or ham")
        message = parse(raw)
        digest = hashlib.sha256(raw).hexdigest()
        toks = tokens(message)
        with self.env.begin(write=True) as txn:
            previous = txn.get(digest.encode(), db=self._learned)
            if previous == label.encode():
                return False
            if previous is not None:
                self._apply(txn, toks, previous.decode(), -1)
            self._apply(txn, toks, label, +1)
            txn.put(digest.encode(), label.encode(), db=self._learned)
            self._record(txn, "learn", label, digest, who, message.message_id)
        return True

    def unlearn(self, raw: bytes, who: str) -> bool:
        """Forget what ``raw`` taught; False when it was never learned."""
        message = parse(raw)
        digest = hashlib.sha256(raw).hexdigest()
        with self.env.begin(write=True) as txn:
            previous = txn.get(digest.encode(), db=self._learned)
            if previous is None:
                return False
            self._apply(txn, tokens(message), previous.decode(), -1)
            txn.delete(digest.encode(), db=self._learned)
            self._record(txn, "unlearn", previous.decode(), digest, who, message.message_id)
        return True

    def _apply(self, txn: lmdb.Transaction, toks: Iterable[str], label: str, sign: int) -> None:
        idx = 0 if label == "spam" else 1
        for token in toks:
            key = token.encode("utf-8")[:500]
            raw = txn.get(key, db=self._tokens)
            pair = list(_PAIR.unpack(raw)) if raw else [0, 0]
            pair[idx] = max(0, pair[idx] + sign)
            if pair == [0, 0]:
                txn.delete(key, db=self._tokens)
            else:
                txn.put(key, _PAIR.pack(*pair), db=self._tokens)
        raw_n = txn.get(b"n", db=self._meta)
        n = list(_PAIR.unpack(raw_n)) if raw_n else [0, 0]
        n[idx] = max(0, n[idx] + sign)
        txn.put(b"n", _PAIR.pack(*n), db=self._meta)

    def _record(
        self, txn: lmdb.Transaction, action: str, label: str, digest: str, who: str, mid: str | None
    ) -> None:
        entry = LearnRecord(
            time=time.time(), who=who, action=action, label=label, digest=digest, message_id=mid
        )
        key = f"{time.time_ns():020d}-{digest[:16]}".encode()
        txn.put(key, msgspec.json.encode(entry), db=self._journal)
        # The journal names who taught what: capped, oldest acts removed in the same commit.
        excess = txn.stat(self._journal)["entries"] - self.journal_max_entries
        if excess > 0:
            cursor = txn.cursor(db=self._journal)
            cursor.first()
            for _ in range(excess):
                cursor.delete()

    def journal(self) -> list[LearnRecord]:
        """Every learning act, oldest first."""
        with self.env.begin(db=self._journal) as txn:
            return [msgspec.json.decode(v, type=LearnRecord) for _k, v in txn.cursor()]

    def learned_as(self, raw: bytes) -> str | None:
        digest = hashlib.sha256(raw).hexdigest().encode()
        with self.env.begin(db=self._learned) as txn:
            value = txn.get(digest)
        return value.decode() if value else None

    def probability(self, message: ParsedMessage, min_learned: int = 10) -> float | None:
        """Spam probability 0..1, or None while fewer than ``min_learned`` of each class."""
        nspam, nham = self.counts()
        if nspam < min_learned or nham < min_learned:
            return None
        clues: list[float] = []
        with self.env.begin(db=self._tokens) as txn:
            for token in tokens(message):
                raw = txn.get(token.encode("utf-8")[:500])
                if not raw:
                    continue
                s, h = _PAIR.unpack(raw)
                spam_ratio, ham_ratio = s / nspam, h / nham
                p = spam_ratio / (spam_ratio + ham_ratio) if spam_ratio + ham_ratio else 0.5
                n = s + h
                # Robinson's correction towards 0.5 for rarely seen tokens (s=1, x=0.5).
                f = (0.5 + n * p) / (1 + n)
                if abs(f - 0.5) > 0.1:
                    clues.append(min(max(f, 0.01), 0.99))
        if not clues:
            return 0.5
        clues = sorted(clues, key=lambda f: -abs(f - 0.5))[:150]
        ln_s = sum(math.log(1 - f) for f in clues)
        ln_h = sum(math.log(f) for f in clues)
        s_val = 1 - _chi2q(-2 * ln_s, 2 * len(clues))
        h_val = 1 - _chi2q(-2 * ln_h, 2 * len(clues))
        return (1 + s_val - h_val) / 2

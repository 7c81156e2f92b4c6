"""Bayesian classifier: token counts in LMDB, Robinson/Fisher chi-square combining.

Every learning act is written to a journal (who, what, when, the message's digest and
Message-ID), and the digests of learned messages are kept with their class, so a message is
never counted twice and a wrong lesson can be undone (``untrain``) or moved to the other class.

In a cluster (the gateway's ``[redis]``, :func:`mailwarden_sdk.shared_state`) the token counts,
message counts and the index of learned digests are also kept in Redis, where every node reads
them: a message released as ham on one node moves the verdict of every node. The LMDB store
stays complete for what this node learned and answers while Redis does not; the journal (who
taught what) stays per node.

Autolearn's lessons are group-committed (:meth:`Bayes.learn_later`): a writer thread commits
the queued lessons, their counts and their journal entries, in one LMDB transaction per batch
of at most ``BATCH_LESSONS`` lessons or ``BATCH_SECONDS``, so a crash loses at most one
batch window of autolearn; explicit lessons commit before they return.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from mailwarden_sdk import (
    ParsedMessage,
    SharedState,
    SharedStateUnavailable,
    ascii_words,
    parse,
    run_cpu_bound,
    unicode_words,
)

from .content import body_text, message_urls

__all__ = [
    "BATCH_LESSONS",
    "BATCH_SECONDS",
    "JOURNAL_MAX_ENTRIES",
    "Bayes",
    "LearnRecord",
    "band",
    "tokens",
]

log = logging.getLogger(__name__)

# The text's words are re.findall(r"[^\W_]{3,24}|\$\d+", text.lower()), cut in the C core.
_WORD_MIN, _WORD_MAX = 3, 24
_DIGITS = re.compile(r"\d+")
_PAIR = struct.Struct("<II")
# A token's counts and the day (Unix time // 86400) it was last learned; stores written before
# expiry existed hold the counts alone (8 bytes) and read as last learned on day 0.
_TOKEN = struct.Struct("<III")
_DAY = 86400
# SpamAssassin's bayes_expiry_max_db_size; expiry keeps the newest 3/4 of it.
MAX_TOKENS = 150_000
_MAX_TOKENS = 3000
#: Learning acts kept in the journal; the oldest go first.
JOURNAL_MAX_ENTRIES = 100_000
# Shared keys: token counts live this long after they were last learned (the local store's
# expiry by last-learned day, in Redis's terms); message counts and learned digests as long.
_SHARED = "antispam:bayes:"
_SHARED_TTL = 400 * _DAY
#: Autolearn's group commit: a batch is committed at this many lessons or this long after its
#: first lesson, whichever comes first (the window a crash can lose).
BATCH_LESSONS = 256
BATCH_SECONDS = 0.2
# Lessons queued beyond this make autolearn wait for the writer rather than grow memory.
_QUEUE_MAX = 16 * BATCH_LESSONS
# Token counts kept in memory (tokens not in the store too); past this the cache starts over.
_CACHE_MAX = 100_000
# Tokens this long or longer are not cached: one under 125 characters encodes to under 500
# bytes, so its key is its own and no other (longer, truncated) token's write changes it.
_CACHE_LEN = 125


@dataclass(frozen=True, slots=True)
class _Lesson:
    digest: str
    label: str
    toks: Collection[str]
    who: str
    message_id: str | None


class LearnRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One journal entry: ``action`` learn/unlearn, ``label`` spam/ham."""

    time: float
    who: str
    action: str
    label: str
    digest: str
    message_id: str | None = None


# Headers whose words say something about the sender and the mail program. Headers a
# receiving site or an earlier filter adds (Received, Delivered-To, X-Spam-*...) are left out:
# they describe where the mail was collected, not the mail.
_TOKEN_HEADERS = frozenset(
    (
        "from",
        "reply-to",
        "to",
        "cc",
        "x-mailer",
        "user-agent",
        "content-type",
        "content-transfer-encoding",
        "message-id",
        "x-priority",
        "x-msmail-priority",
        "precedence",
        "importance",
        "list-id",
        "organization",
    )
)
_HEADER_VALUES = 3  # values read per header name
_HEADER_WORDS = 30  # words read per value
_HEADER_WORD = re.compile(r"[^\s<>\"'(),;:=]{2,40}")
_TAG_WORD = re.compile(r"<([a-z][a-z0-9]{0,9})\b([^>]{0,300})>", re.IGNORECASE)
_ATTR = re.compile(r"([a-z-]{1,20})\s*=\s*[\"']?([^\s\"'>]{1,20})", re.IGNORECASE)
# Text is cut into words by ascii_words for ASCII text (most mail; no lower() pass), else by
# unicode_words. ASCII HTML is lowercased and cut with plain ASCII patterns, no
# IGNORECASE: the matches of _TAG_WORD and _ATTR in a fraction of the time. tests/unit/
# test_bayes_tokens.py holds tokens() to its first, all-regex implementation on random text.
_ASCII_TAG_WORD = re.compile(r"<([a-z][a-z0-9]{0,9})\b([^>]{0,300})>")
_ASCII_ATTR = re.compile(r"([a-z-]{1,20})\s*=\s*[\"']?([^\s\"'>]{1,20})")


def tokens(
    message: ParsedMessage, text: str | None = None, urls: Sequence[str] | None = None
) -> set[str]:
    """The message's tokens: words of the subject and text, sender domain, URL hosts, words
    of the headers that describe the sender and its mail program (prefixed with the header's
    name), and the HTML tags and attribute values the message is built with. ``text`` and
    ``urls``: the message's :func:`~.content.body_text` and :func:`~.content.message_urls`
    (any limit from 50 up) when the caller has them."""
    text = body_text(message) if text is None else text
    if text.isascii():
        words = ascii_words(text, _WORD_MIN, _WORD_MAX, amounts=True)
    else:
        words = unicode_words(text.lower(), _WORD_MIN, _WORD_MAX, amounts=True)
    out = set(words)
    if len(out) >= _MAX_TOKENS:
        # The first _MAX_TOKENS distinct words in text order, not any of them.
        out = set()
        for word in words:
            out.add(word)
            if len(out) >= _MAX_TOKENS:
                break
    sender = (message.header("from") or "").lower()
    if "@" in sender:
        out.add("from:" + sender.rsplit("@", 1)[1].strip(" >"))
    # The first 50 distinct URLs: the same whatever longer list they open.
    for url in message_urls(message, 50) if urls is None else urls[:50]:
        cut = url.split("/", 3)
        out.add("url:" + (cut[2] if len(cut) > 2 else url))
    _header_tokens(message, out)
    for part in message.leaves():
        if part.content_type == "text/html":
            _html_tokens(part.text()[:200_000], out)
    return out


def _header_tokens(message: ParsedMessage, out: set[str]) -> None:
    # One walk over the header block (the rules read it next, so it is decoded once), not a
    # lookup per name. Names are compared lowercased: of the non-ASCII characters only U+212A
    # (KELVIN SIGN) lowers to ASCII ("k"; U+0130 to "i" and a combining dot), and no token
    # header has a "k", so a name matches exactly when its raw bytes do (header_all()).
    seen: dict[str, int] = {}
    chunks: list[str] = []
    for name, value in message.headers:
        key = name.lower()
        if key not in _TOKEN_HEADERS:
            continue
        count = seen.get(key, 0)
        if count >= _HEADER_VALUES:
            continue
        seen[key] = count + 1
        words = _HEADER_WORD.findall(value.lower())[:_HEADER_WORDS]
        if words:
            prefix = f"h:{key}:"
            chunks.append(prefix + (" " + prefix).join(words))
    if chunks:
        # Digits vary per message (ids, dates): their shape is what repeats. One substitution
        # over the space-joined tokens (words hold no space, names no digit), not one a word.
        out.update(_DIGITS.sub("N", " ".join(chunks)).split(" "))


def _html_tokens(html: str, out: set[str]) -> None:
    if html.isascii():
        # Lowercased first, so the patterns need no IGNORECASE and the groups no lower().
        found = _ASCII_TAG_WORD.findall(html.lower())[:2000]
        # A tag written many times (<td>, <br>, <font ...>) is cut into attributes once.
        for tag, attrs in set(found):
            out.add("tag:" + tag)
            if attrs:
                for key, value in _ASCII_ATTR.findall(attrs):
                    out.add(f"tag:{tag}:{key}={value}")
        return
    for tag, attrs in set(_TAG_WORD.findall(html)[:2000]):
        tag = tag.lower()
        out.add("tag:" + tag)
        for key, value in _ATTR.findall(attrs):
            out.add(f"tag:{tag}:{key.lower()}={value.lower()}")


# SpamAssassin's bands: (lower bound, code), highest first.
_BANDS = (
    (0.999, "BAYES_999"),
    (0.99, "BAYES_99"),
    (0.95, "BAYES_95"),
    (0.8, "BAYES_80"),
    (0.6, "BAYES_60"),
    (0.4, "BAYES_50"),
    (0.2, "BAYES_40"),
    (0.05, "BAYES_20"),
    (0.01, "BAYES_05"),
)


def _unpack(found: bytes | memoryview | None) -> tuple[int, int, int]:
    if not found:
        return 0, 0, 0
    raw = bytes(found)
    if len(raw) == _PAIR.size:
        s, h = _PAIR.unpack(raw)
        return s, h, 0
    s, h, day = _TOKEN.unpack(raw)
    return s, h, day


def band(probability: float) -> str:
    """The finding code of a spam probability (BAYES_00 ... BAYES_999)."""
    for limit, code in _BANDS:
        if probability >= limit:
            return code
    return "BAYES_00"


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
        self,
        root: Path,
        map_size: int = 1 << 30,
        journal_max_entries: int = JOURNAL_MAX_ENTRIES,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.max_tokens = max_tokens
        # unicode_words builds its character classes on first use (0.1 s): here, at start,
        # not in the scan of the first message that is not ASCII.
        unicode_words("", _WORD_MIN, _WORD_MAX)
        root.mkdir(parents=True, exist_ok=True)
        self.journal_max_entries = journal_max_entries
        self.env = lmdb.open(str(root), map_size=map_size, max_dbs=4, subdir=True)
        self._tokens = self.env.open_db(b"tokens")
        self._meta = self.env.open_db(b"meta")
        self._learned = self.env.open_db(b"learned")
        self._journal = self.env.open_db(b"journal")
        #: The cluster's state (``mailwarden_sdk.shared_state``), set by the plugin at start.
        self.shared: SharedState | None = None
        #: Called with each message a person (not autolearn) taught as spam: fuzzy hashes.
        self.reported: Callable[[bytes], object] | None = None
        # Autolearn's queue and its writer thread (started with the first queued lesson).
        self._cond = threading.Condition()
        self._queue: list[_Lesson] = []
        self._queued = self._committed = self._flushing = 0
        self._closing = False
        self._writer: threading.Thread | None = None
        # Token counts as of the store's transaction _cache_id (LMDB numbers every commit,
        # any process's): a read of another snapshot starts the cache over; this process's
        # own commits update it (_committing), so autolearn does not empty it.
        self._cache: dict[str, tuple[int, int]] = {}
        self._cache_id = -1
        self._cache_lock = threading.Lock()
        # The counts the write transaction under way set, by token (None: start over).
        self._written: dict[str, tuple[int, int]] | None = None
        self._wiped = False
        self._clues: tuple[tuple[int, int], dict[tuple[int, int], _Clue]] = ((-1, -1), {})

    def close(self) -> None:
        """Commit the queued lessons, stop the writer and close the store."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        self.env.close()

    def counts(self) -> tuple[int, int]:
        """(spam, ham) messages learned (queued autolearn lessons not yet among them)."""
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(b"n")
        return _PAIR.unpack(raw) if raw else (0, 0)

    def learn(self, raw: bytes, label: str, who: str) -> bool:
        """Learn ``raw`` as ``label`` (spam/ham); False when it was already learned so.

        A message learned as the other class is moved (its old counts removed first). With
        shared state the cluster's counts change too (and its index decides what "already
        learned" means); spam a person reported (not autolearn) goes to :attr:`reported`.
        Committed before it returns, after the queued autolearn lessons (so a person's lesson
        comes last). Call it from a thread, never on the event loop (it waits for Redis).
        """
        if label not in ("spam", "ham"):
            raise ValueError("label must be spam or ham")
        self.flush()
        message = parse(raw)
        lesson = _Lesson(_digest(raw), label, tokens(message), who, message.message_id)
        with self._committing() as txn:
            done = self._learn_in(txn, lesson)
        shared = self._shared_call(self._learn_shared(lesson.toks, lesson.digest, label))
        if label == "spam" and self.reported is not None and who != "autolearn":
            self.reported(raw)
        return done if shared is None else shared

    def has_room(self) -> bool:
        """Whether :meth:`learn_later` would queue a lesson now without waiting for the writer
        (a racing caller may still take the last place)."""
        return len(self._queue) < _QUEUE_MAX

    def learn_later(
        self, raw: bytes, label: str, who: str, toks: Collection[str], message_id: str | None
    ) -> None:
        """Queue a lesson of ``raw`` (its ``toks`` as the scan computed them) for the writer,
        which commits it with the others of its batch: within ``BATCH_SECONDS``, or at
        :meth:`flush`, :meth:`learn`, :meth:`unlearn` or :meth:`close`. For autolearn."""
        if label not in ("spam", "ham"):
            raise ValueError("label must be spam or ham")
        lesson = _Lesson(_digest(raw), label, toks, who, message_id)
        with self._cond:
            if self._closing:
                log.warning("antispam: Bayes closed, lesson of %s not learned", lesson.digest)
                return
            while len(self._queue) >= _QUEUE_MAX:
                self._cond.wait()
            self._queue.append(lesson)
            self._queued += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="bayes-writer", daemon=True
                )
                self._writer.start()
            if len(self._queue) in (1, BATCH_LESSONS):
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every lesson queued so far is committed."""
        with self._cond:
            target = self._queued
            if self._committed >= target:
                return
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._committed < target:
                    self._cond.wait()
            finally:
                self._flushing -= 1

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # The window runs from the batch's first lesson.
                deadline = time.monotonic() + BATCH_SECONDS
                while len(self._queue) < BATCH_LESSONS and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._flushing:
                        break
                    self._cond.wait(left)
                batch = self._queue[:BATCH_LESSONS]
                del self._queue[:BATCH_LESSONS]
                self._cond.notify_all()
            try:
                with self._committing() as txn:
                    self._learn_batch_in(txn, batch)
                if self.shared is not None:
                    for lesson in batch:
                        self._shared_call(
                            self._learn_shared(lesson.toks, lesson.digest, lesson.label)
                        )
            except Exception:
                # The batch is lost (the window docs/antispam.md names); the writer goes on.
                log.exception("antispam: %d autolearn lessons not committed", len(batch))
            with self._cond:
                self._committed += len(batch)
                self._cond.notify_all()

    def _learn_in(self, txn: lmdb.Transaction, lesson: _Lesson) -> bool:
        key = lesson.digest.encode()
        found = txn.get(key, db=self._learned)
        previous = bytes(found) if found is not None else None
        if previous == lesson.label.encode():
            return False
        if previous is not None:
            self._apply(txn, lesson.toks, previous.decode(), -1)
        self._apply(txn, lesson.toks, lesson.label, +1)
        txn.put(key, lesson.label.encode(), db=self._learned)
        self._record(txn, "learn", lesson.label, lesson.digest, lesson.who, lesson.message_id)
        return True

    def unlearn(self, raw: bytes, who: str) -> bool:
        """Forget what ``raw`` taught; False when it was never learned."""
        self.flush()
        message = parse(raw)
        digest = _digest(raw)
        toks = tokens(message)
        with self._committing() as txn:
            found = txn.get(digest.encode(), db=self._learned)
            previous = bytes(found) if found is not None else None
            if previous is not None:
                self._apply(txn, toks, previous.decode(), -1)
                txn.delete(digest.encode(), db=self._learned)
                self._record(txn, "unlearn", previous.decode(), digest, who, message.message_id)
        shared = self._shared_call(self._learn_shared(toks, digest, None))
        return previous is not None if shared is None else shared

    # -- the cluster's counts (mailwarden_sdk.shared_state) -----------------------------------

    def _shared_call(self, call: Any) -> bool | None:
        """Run a shared-state coroutine from this thread; None when there is no shared state
        or it did not answer (the local store has the lesson; Redis misses it)."""
        if self.shared is None:
            call.close()
            return None
        try:
            return bool(self.shared.blocking(call))
        except SharedStateUnavailable as exc:
            log.warning("antispam: Bayes lesson kept on this node only: %s", exc)
            return None

    async def _learn_shared(self, toks: Iterable[str], digest: str, label: str | None) -> bool:
        assert self.shared is not None
        # One atomic swap of the index entry: two nodes learning one message count it once.
        previous = await self.shared.swap(_SHARED + "l:" + digest, label or "-", _SHARED_TTL)
        if previous == (label or "-") or (label is None and previous is None):
            return False
        increments: list[tuple[str, int, float]] = []
        for old, sign in ((previous, -1), (label, +1)):
            if old in ("spam", "ham"):
                increments.append((_count_key(old), sign, _SHARED_TTL))
                increments += [(_token_key(t, old), sign, _SHARED_TTL) for t in toks]
        await self.shared.add(increments, refresh=True)
        return True

    async def probability_async(
        self,
        message: ParsedMessage,
        min_learned: int = 10,
        size: int = 0,
        toks: Collection[str] | None = None,
    ) -> float | None:
        """:meth:`probability` from the cluster's counts when shared state answers, else from
        this node's store; CPU work through ``run_cpu_bound`` (``size`` bytes of message).
        ``toks``: the message's :func:`tokens` when the caller has them."""
        shared = self.shared
        if toks is None and shared is not None:
            toks = await run_cpu_bound(size, tokens, message)
        if shared is not None:
            assert toks is not None
            keys = [_count_key("spam"), _count_key("ham")]
            for token in sorted(toks):
                keys += [_token_key(token, "spam"), _token_key(token, "ham")]
            try:
                values = [max(0, int(v or 0)) for v in await shared.get_many(keys)]
            except SharedStateUnavailable:
                pass
            else:
                nspam, nham = values[0], values[1]
                if nspam < min_learned or nham < min_learned:
                    return None
                pairs = list(zip(values[2::2], values[3::2], strict=True))
                return _combine(pairs, nspam, nham)
        return await run_cpu_bound(size, self.probability, message, min_learned, toks)

    @contextmanager
    def _committing(self) -> Iterator[lmdb.Transaction]:
        """A write transaction; once it commits, the token cache takes what it wrote."""
        with self.env.begin(write=True) as txn:
            # Write transactions are serial (LMDB's lock): this one's marks are its own.
            self._written, self._wiped = {}, False
            try:
                yield txn
                written, wiped = self._written, self._wiped
            finally:
                self._written = None
            # Counts changed, so this transaction commits as number txn.id(), right after
            # the snapshot it wrote over.
            committed = txn.id() if written or wiped else None
        if committed is not None:
            with self._cache_lock:
                if wiped or self._cache_id not in (committed - 1, committed):
                    # Expiry, or another process's commit in between: start over.
                    self._cache.clear()
                elif len(self._cache) + len(written) <= _CACHE_MAX:
                    self._cache.update(written)
                else:
                    self._cache.clear()
                self._cache_id = committed

    def _apply(self, txn: lmdb.Transaction, toks: Iterable[str], label: str, sign: int) -> None:
        step = (sign, 0) if label == "spam" else (0, sign)
        self._add_counts(txn, dict.fromkeys(toks, step), step)

    def _add_counts(
        self,
        txn: lmdb.Transaction,
        steps: dict[str, tuple[int, int]],
        messages: tuple[int, int],
    ) -> None:
        """Add each token's (spam, ham) step and the message counts' (never below 0)."""
        today = int(time.time()) // _DAY
        # Outside _committing nothing records the counts: the commit's number alone then
        # tells the cache it is stale.
        written = self._written if self._written is not None else {}
        grows = False
        for token, (ds, dh) in steps.items():
            key = token.encode("utf-8")[:500]
            s, h, day = _unpack(txn.get(key, db=self._tokens))
            s, h = max(0, s + ds), max(0, h + dh)
            if s == h == 0:
                txn.delete(key, db=self._tokens)
            else:
                learned = ds > 0 or dh > 0
                grows = grows or learned
                txn.put(key, _TOKEN.pack(s, h, today if learned else day), db=self._tokens)
            if len(token) < _CACHE_LEN:
                written[token] = (s, h)
        if grows and txn.stat(self._tokens)["entries"] > self.max_tokens:
            self._expire(txn)
        raw_n = txn.get(b"n", db=self._meta)
        n = _PAIR.unpack(raw_n) if raw_n else (0, 0)
        txn.put(
            b"n",
            _PAIR.pack(max(0, n[0] + messages[0]), max(0, n[1] + messages[1])),
            db=self._meta,
        )

    def _learn_batch_in(self, txn: lmdb.Transaction, batch: list[_Lesson]) -> None:
        """Each lesson of ``batch`` as :meth:`_learn_in` would, in order; but the counts of
        consecutive lessons of messages not learned before are summed and written once (a
        read and a write per distinct token of the run, not per token of each message: a
        batch's messages share most of their words). Adding never goes below zero, so the
        sum is what the lessons one by one write; a lesson that moves a message from the
        other class first writes the run before it, its subtraction may."""
        steps: dict[str, tuple[int, int]] = {}
        messages = (0, 0)

        def write_run() -> None:
            nonlocal messages
            if messages != (0, 0):
                self._add_counts(txn, steps, messages)
            steps.clear()
            messages = (0, 0)

        for lesson in batch:
            key = lesson.digest.encode()
            if txn.get(key, db=self._learned) is not None:
                write_run()
                self._learn_in(txn, lesson)
                continue
            ds, dh = (1, 0) if lesson.label == "spam" else (0, 1)
            messages = (messages[0] + ds, messages[1] + dh)
            for token in lesson.toks:
                s, h = steps.get(token, (0, 0))
                steps[token] = (s + ds, h + dh)
            txn.put(key, lesson.label.encode(), db=self._learned)
            self._record(txn, "learn", lesson.label, lesson.digest, lesson.who, lesson.message_id)
        write_run()

    def _expire(self, txn: lmdb.Transaction) -> None:
        """Drop the tokens learned longest ago until 3/4 of the cap remain (SpamAssassin's
        expiry by access time); message counts stay, as theirs do. Journaled."""
        keep = self.max_tokens * 3 // 4
        days: list[tuple[int, bytes]] = []
        for key, value in txn.cursor(db=self._tokens):
            days.append((_unpack(value)[2], bytes(key)))
        days.sort()
        drop = days[: max(0, len(days) - keep)]
        for _day, key in drop:
            txn.delete(key, db=self._tokens)
        self._wiped = True
        oldest_kept = days[len(drop)][0] if len(drop) < len(days) else 0
        self._record(
            txn, "expire", f"{len(drop)} tokens", f"before-day-{oldest_kept}", "expiry", None
        )

    def token_count(self) -> int:
        """Distinct tokens stored (at most ``max_tokens``)."""
        with self.env.begin() as txn:
            return int(txn.stat(self._tokens)["entries"])

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
        """Every learning act, oldest first (queued lessons committed first)."""
        self.flush()
        with self.env.begin(db=self._journal) as txn:
            return [msgspec.json.decode(v, type=LearnRecord) for _k, v in txn.cursor()]

    def learned_as(self, raw: bytes) -> str | None:
        self.flush()
        digest = _digest(raw).encode()
        with self.env.begin(db=self._learned) as txn:
            value = txn.get(digest)
        return value.decode() if value else None

    def probability(
        self, message: ParsedMessage, min_learned: int = 10, toks: Collection[str] | None = None
    ) -> float | None:
        """Spam probability 0..1, or None while fewer than ``min_learned`` of each class;
        ``toks`` the message's :func:`tokens` when the caller has them. Autolearn lessons
        still queued (:meth:`learn_later`) are not counted yet."""
        with self.env.begin() as txn:
            # The message counts and the tokens' from one snapshot.
            raw_n = txn.get(b"n", db=self._meta)
            nspam, nham = _PAIR.unpack(raw_n) if raw_n else (0, 0)
            if nspam < min_learned or nham < min_learned:
                return None
            pairs = self._lookup(txn, tokens(message) if toks is None else toks)
        # Clues by counts, for as long as the message counts stay (read as one tuple: other
        # threads may replace it).
        counts, memo = self._clues
        if counts != (nspam, nham) or len(memo) > _CACHE_MAX:
            memo = {}
            self._clues = ((nspam, nham), memo)
        return _combine(pairs, nspam, nham, memo)

    def _lookup(self, txn: lmdb.Transaction, toks: Iterable[str]) -> list[tuple[int, int]]:
        """The (spam, ham) counts of ``toks`` in ``txn``'s snapshot ((0, 0) for a token the
        store does not hold), from the cache where it holds that snapshot."""
        snapshot = txn.id()
        toks = list(toks)
        with self._cache_lock:
            cache = self._cache
            if snapshot > self._cache_id:
                cache.clear()
                self._cache_id = snapshot
            elif snapshot < self._cache_id:
                cache = {}  # an older snapshot than the cache's (a commit since it began)
            pairs = list(map(cache.get, toks))
            if None not in pairs:
                return pairs  # type: ignore[return-value]  # no None: all found
            if len(cache) + len(toks) > _CACHE_MAX:
                cache.clear()
            tokens_db, get = self._tokens, txn.get
            for i, pair in enumerate(pairs):
                if pair is None:
                    token = toks[i]
                    s, h, _day = _unpack(get(token.encode("utf-8")[:500], db=tokens_db))
                    pair = pairs[i] = (s, h)
                    if len(token) < _CACHE_LEN:
                        cache[token] = pair
            return pairs  # type: ignore[return-value]  # every None replaced


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _count_key(label: str) -> str:
    return f"{_SHARED}n:{label[0]}"


def _token_key(token: str, label: str) -> str:
    # Hashed: bounded key length, and no message words in clear in Redis.
    digest = hashlib.blake2b(token.encode("utf-8")[:500], digest_size=10).hexdigest()
    return f"{_SHARED}t:{digest}:{label[0]}"


# A token's clue: its order among clues (farthest from 0.5 first, then by value), its
# probability f, log(1 - f) and log(f); () when the token is no clue.
_Clue = tuple[float, float, float, float] | tuple[()]


def _clue(s: int, h: int, nspam: int, nham: int) -> _Clue:
    if not s and not h:
        return ()
    spam_ratio, ham_ratio = s / nspam, h / nham
    p = spam_ratio / (spam_ratio + ham_ratio) if spam_ratio + ham_ratio else 0.5
    n = s + h
    # Robinson's correction towards 0.5 for rarely seen tokens (s=1, x=0.5).
    f = (0.5 + n * p) / (1 + n)
    if abs(f - 0.5) <= 0.1:
        return ()
    f = min(max(f, 0.01), 0.99)
    return (-abs(f - 0.5), f, math.log(1 - f), math.log(f))


def _combine(
    pairs: Sequence[tuple[int, int]],
    nspam: int,
    nham: int,
    memo: dict[tuple[int, int], _Clue] | None = None,
) -> float:
    """Robinson/Fisher chi-square over the (spam, ham) counts of the message's known tokens.
    ``memo``: clues by counts already computed for these ``nspam`` and ``nham``."""
    if memo is None:
        memo = {}
    # Tokens of a message share few distinct counts ((1, 0), (0, 1)...): each one's clue is
    # computed once, and the loop over the tokens stays in C.
    found = list(map(memo.get, pairs))
    if None in found:
        for i, clue in enumerate(found):
            if clue is None:
                pair = pairs[i]
                found[i] = memo[pair] = _clue(pair[0], pair[1], nspam, nham)
    # Ties broken by value (tuples compare so): the same clues, summed in the same order,
    # whatever order the tokens came in.
    clues = sorted(filter(None, found))[:150]
    if not clues:
        return 0.5
    ln_s = sum(c[2] for c in clues)
    ln_h = sum(c[3] for c in clues)
    s_val = 1 - _chi2q(-2 * ln_s, 2 * len(clues))
    h_val = 1 - _chi2q(-2 * ln_h, 2 * len(clues))
    return (1 + s_val - h_val) / 2

"""The gateway's one on-disk quarantine: every held message, whatever kept it (SDK 1.17).

The core's held messages (kind ``held``), the antispam plugin's spam quarantine (``spam``) and
any other plugin's quarantine are kinds of one store at ``<home>/quarantine``: a message is
``<kind>/<id>.eml`` (the bytes as held, written, fsynced and moved into place) and one entry
in the LMDB index ``index/`` (kind, envelope, subject, reason, score, time, size, short
details). A message is held once its entry is committed. Each kind folder holds nothing but
message files, so the core's store enforcer can govern a kind like any declared folder; the
index forgets entries whose file is gone.

Each kind has its own caps (:class:`KindLimits`), checked in the write transaction that admits
a message (LMDB write transactions are serialised across processes, so workers sharing the
store cannot overfill it together): ``remove_oldest`` makes room by removing that kind's
oldest messages, ``refuse_new`` places nothing more (:meth:`QuarantineStore.put` returns
None).

A release happens once, however many requests, workers or commands ask for it at the same
moment: :meth:`QuarantineStore.claim` takes an ``flock`` on the message file, then, in one
write transaction, checks the entry is still held and marks it with a claim (token, process,
time); whoever comes second gets :class:`QuarantineBusy`. Only the claimer sends; then
:meth:`~QuarantineStore.finish` removes the message, or :meth:`~QuarantineStore.abandon`
clears the claim. The lock lives as long as the claiming process: a claim ``stale_after``
seconds old whose lock is free is cleared on every listing and by the next release; the
message is never deleted for that. Use it with :func:`~mailwarden_sdk.quarantines.release_once`.

Views and actions stay with whoever owns a kind (the spam quarantine's digest and learning,
the core's release through its outbox): this module only keeps, lists, claims and removes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import lmdb
import msgspec

from .files import atomic_write, fsync_dir
from .quarantines import QuarantineError, QuarantineNotFound, lock_held, read_held
from .stores import WhenFull
from .types import Envelope

__all__ = [
    "KIND",
    "STALE_AFTER",
    "HeldEntry",
    "KindLimits",
    "QuarantineBusy",
    "QuarantineStore",
    "StoreClaim",
    "open_store",
]

#: What a kind's name must match: it is a folder name under the store.
KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Folders of the store itself (and of the core's Maildir before 1.17), never a kind.
_RESERVED = frozenset({"index", "tmp", "new", "cur", "releasing"})
_ID = re.compile(r"^[0-9a-f]{1,64}$")

#: How old a claim of a process that is gone must be before its message is held again.
STALE_AFTER = 300.0


class QuarantineBusy(QuarantineError):
    """Another request or process releases the message right now (or just did, or deleted
    it): this caller must not send it too (HTTP 409)."""


class HeldEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One held message as the index knows it.

    ``time`` is when it was placed (Unix time), ``size`` its bytes as held; ``reason`` is the
    kind's word for why it is held (``spam``, ``malware``...), ``score`` a spam score where
    there is one, ``details`` short facts the kind keeps with it (the rule, the decision id;
    never message text). ``claim`` is set while a release sends it.
    """

    id: str
    kind: str
    time: float
    size: int
    mail_from: str
    rcpt_to: list[str]
    subject: str = ""
    reason: str = ""
    score: float | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)
    claim: str = ""
    claimed_by: int = 0
    claimed_at: float = 0.0
    #: The kind's own record of the message (JSON, say), opaque to the store.
    record: str = ""
    #: Position in its kind's order (placement time in ns): the oldest go first.
    order: int = 0

    @property
    def envelope(self) -> Envelope:
        """The envelope a release delivers to."""
        return Envelope(mail_from=self.mail_from, rcpt_to=list(self.rcpt_to))


class KindLimits(msgspec.Struct, kw_only=True, frozen=True):
    """A kind's caps: bytes and messages (None: no cap of that sort), and what happens when a
    new message would exceed one (``remove_oldest`` or ``refuse_new``)."""

    max_bytes: int | None = None
    max_messages: int | None = None
    when_full: WhenFull = WhenFull.REMOVE_OLDEST


@dataclass
class StoreClaim:
    """One release's hold on a message: its entry (with the claim), its bytes, and the locked
    descriptor of its file that says the claimer is alive."""

    entry: HeldEntry
    raw: bytes
    fd: int


def _order_key(entry: HeldEntry) -> bytes:
    return f"{entry.kind}\0{entry.order:020d}-{entry.id}".encode()


class QuarantineStore:
    """The quarantine at ``root`` (``<home>/quarantine``); use :func:`open_store`, which
    gives every user in a process the same one (LMDB must not be opened twice in a process).
    """

    def __init__(self, root: Path, *, stale_after: float = STALE_AFTER) -> None:
        self.root = root
        self.stale_after = stale_after
        self.limits: dict[str, KindLimits] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.index = root / "index"
        self.index.mkdir(exist_ok=True)
        self.env = lmdb.open(str(self.index), map_size=1 << 30, max_dbs=3)
        self._entries = self.env.open_db(b"entries")
        self._order = self.env.open_db(b"order")
        self._meta = self.env.open_db(b"meta")

    def close(self) -> None:
        """Close the index (the store is opened again by the next :func:`open_store`)."""
        self.env.close()

    # -- kinds and places ------------------------------------------------------------------

    def folder(self, kind: str) -> Path:
        """Where the messages of ``kind`` are (created on first use)."""
        if not KIND.match(kind) or kind in _RESERVED:
            raise ValueError(f"not a quarantine kind: {kind!r}")
        path = self.root / kind
        path.mkdir(exist_ok=True)
        return path

    def set_limits(self, kind: str, limits: KindLimits) -> None:
        """The caps :meth:`put` applies to ``kind`` from now on, in this process."""
        self.folder(kind)
        self.limits[kind] = limits

    def path(self, entry: HeldEntry) -> Path:
        """The message file of ``entry``."""
        return self.root / entry.kind / f"{entry.id}.eml"

    # -- keeping ---------------------------------------------------------------------------

    def put(
        self,
        kind: str,
        raw: bytes,
        envelope: Envelope,
        *,
        subject: str = "",
        reason: str = "",
        score: float | None = None,
        details: dict[str, str] | None = None,
        record: str = "",
        id: str | None = None,
        at: float | None = None,
    ) -> str | None:
        """Hold ``raw`` as ``kind`` (durable on return); its id. None when ``kind``'s caps
        refuse it (``refuse_new`` and full, or larger than the byte cap alone); nothing is
        then kept. ``record`` is the kind's own record of it, returned as it was stored.
        ``id`` and ``at`` keep an existing message's id and time (a migration: it was
        admitted under its caps once, so they do not refuse it now); an id that is held
        already is not placed again."""
        limits = self.limits.get(kind, KindLimits()) if at is None else KindLimits()
        if limits.max_bytes is not None and len(raw) > limits.max_bytes:
            return None
        entry_id = id if id is not None else secrets.token_hex(12)
        if not _ID.match(entry_id):
            raise ValueError(f"not a quarantine id: {entry_id!r}")
        placed = time.time() if at is None else at
        entry = HeldEntry(
            id=entry_id,
            kind=kind,
            time=placed,
            size=len(raw),
            mail_from=envelope.mail_from,
            rcpt_to=list(envelope.rcpt_to),
            subject=subject,
            reason=reason,
            score=score,
            details=dict(details or {}),
            record=record,
            order=int(placed * 1e9) if at is not None else time.time_ns(),
        )
        path = self.folder(kind) / f"{entry_id}.eml"
        with self.env.begin() as txn:
            if txn.get(entry_id.encode(), db=self._entries) is not None:
                return entry_id
        # The temporary file is made in the index folder: never seen as a record of a kind.
        atomic_write(path, raw, temp_dir=self.index)
        if at is not None:
            os.utime(path, (at, at))  # the enforcer's age of a record is its file's mtime
        evicted: list[HeldEntry] = []
        with self.env.begin(write=True) as txn:
            count, total = self._usage(txn, kind)
            count, total = count + 1, total + len(raw)
            cursor = txn.cursor(db=self._order)
            prefix = f"{kind}\0".encode()
            while _over(limits, count, total):
                if limits.when_full is WhenFull.REFUSE_NEW or not cursor.set_range(prefix):
                    break
                if not cursor.key().startswith(prefix):
                    break
                old = self._decode(txn.get(cursor.value(), db=self._entries))
                cursor.delete()
                if old is None:
                    continue
                txn.delete(old.id.encode(), db=self._entries)
                count, total = count - 1, total - old.size
                evicted.append(old)
            # Only ``refuse_new`` is still over here, and it removed nothing: no change to keep.
            refused = _over(limits, count, total)
            if not refused:
                txn.put(entry_id.encode(), msgspec.json.encode(entry), db=self._entries)
                txn.put(_order_key(entry), entry_id.encode(), db=self._order)
                self._set_usage(txn, kind, count, total)
        if refused:
            path.unlink(missing_ok=True)
            return None
        for old in evicted:
            self.path(old).unlink(missing_ok=True)
        return entry_id

    def _usage(self, txn: lmdb.Transaction, kind: str) -> tuple[int, int]:
        raw = txn.get(f"usage:{kind}".encode(), db=self._meta)
        if not raw:
            return 0, 0
        count, _, size = bytes(raw).partition(b" ")
        return int(count), int(size)

    def _set_usage(self, txn: lmdb.Transaction, kind: str, count: int, size: int) -> None:
        txn.put(f"usage:{kind}".encode(), f"{max(count, 0)} {max(size, 0)}".encode(), db=self._meta)

    def usage(self, kind: str) -> tuple[int, int]:
        """How many messages of ``kind`` are held and how many bytes they take."""
        with self.env.begin() as txn:
            return self._usage(txn, kind)

    def has_room(self, kind: str, size: int) -> bool:
        """Whether a message of ``size`` bytes would be placed now without removing any
        (not a promise: another process may fill the store first)."""
        count, used = self.usage(kind)
        return not _over(self.limits.get(kind, KindLimits()), count + 1, used + size)

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _decode(value: bytes | None) -> HeldEntry | None:
        if value is None:
            return None
        try:
            return msgspec.json.decode(value, type=HeldEntry)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    def get(self, id: str, kind: str | None = None) -> HeldEntry:
        """The entry of ``id`` (of ``kind`` when given); :class:`QuarantineNotFound` else."""
        entry = None
        if _ID.match(id):
            with self.env.begin() as txn:
                entry = self._decode(txn.get(id.encode(), db=self._entries))
        if entry is None or (kind is not None and entry.kind != kind):
            raise QuarantineNotFound(f"no held message {id!r}")
        return entry

    def raw(self, id: str, kind: str | None = None) -> bytes:
        """The message exactly as held; :class:`QuarantineNotFound` when it is gone."""
        entry = self.get(id, kind)
        try:
            return self.path(entry).read_bytes()
        except FileNotFoundError as exc:
            raise QuarantineNotFound(f"{id} was released or deleted just now") from exc

    def entries(self, kind: str) -> list[HeldEntry]:
        """The held messages of ``kind``, oldest first. Entries whose file the core's store
        enforcer removed are forgotten, and claims of processes that are gone cleared."""
        prefix = f"{kind}\0".encode()
        out: list[HeldEntry] = []
        gone: list[str] = []
        stale: list[str] = []
        now = time.time()
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._order)
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not bytes(key).startswith(prefix):
                        break
                    entry = self._decode(txn.get(value, db=self._entries))
                    if entry is None:
                        continue
                    if not self.path(entry).exists():
                        gone.append(entry.id)
                        continue
                    if entry.claim and now - entry.claimed_at >= self.stale_after:
                        stale.append(entry.id)
                    out.append(entry)
        for entry_id in gone:
            self._forget(entry_id)
        if stale and self.recover(stale):
            return self.entries(kind)
        return out

    def replace(self, id: str, **changes: object) -> HeldEntry:
        """Change what the index says of ``id`` (``details``, ``reason``, ``subject``...);
        the new entry. Its message bytes stay as they are."""
        with self.env.begin(write=True) as txn:
            entry = self._decode(txn.get(id.encode(), db=self._entries))
            if entry is None:
                raise QuarantineNotFound(f"no held message {id!r}")
            entry = msgspec.structs.replace(entry, **changes)
            txn.put(id.encode(), msgspec.json.encode(entry), db=self._entries)
        return entry

    # -- removing --------------------------------------------------------------------------

    def delete(self, id: str, kind: str | None = None) -> None:
        """Remove a message for good; :class:`QuarantineBusy` while a release sends it."""
        entry = self.get(id, kind)
        fd = None
        with contextlib.suppress(FileNotFoundError):  # then the entry alone goes
            fd = lock_held(self.path(entry))
            if fd is None:
                raise self._busy(id)
        try:
            self._forget(id, refuse_claimed=True)
        finally:
            if fd is not None:
                os.close(fd)

    def _forget(self, id: str, *, refuse_claimed: bool = False, token: str | None = None) -> bool:
        """Drop the entry and its file; False when ``token`` is given and no longer holds it."""
        with self.env.begin(write=True) as txn:
            entry = self._decode(txn.get(id.encode(), db=self._entries))
            if entry is None:
                if token is not None:
                    return False
                raise QuarantineNotFound(f"no held message {id!r}")
            if token is not None and entry.claim != token:
                return False
            if refuse_claimed and entry.claim and not self._stale(entry):
                raise self._busy(id, entry)
            txn.delete(id.encode(), db=self._entries)
            txn.delete(_order_key(entry), db=self._order)
            count, total = self._usage(txn, entry.kind)
            self._set_usage(txn, entry.kind, count - 1, total - entry.size)
        self.path(entry).unlink(missing_ok=True)
        # Gone for good before the caller says "released" or "deleted".
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(self.root / entry.kind)
        return True

    # -- release, exactly once -------------------------------------------------------------

    def _busy(self, id: str, entry: HeldEntry | None = None) -> QuarantineBusy:
        """What the second caller is told: who releases it since when, where known."""
        if entry is None:
            try:
                entry = self.get(id)
            except QuarantineNotFound:
                return QuarantineBusy(f"{id} was released or deleted just now")
        if not entry.claim:
            return QuarantineBusy(f"{id} is being released right now")
        since = time.strftime("%H:%M:%S", time.localtime(entry.claimed_at))
        return QuarantineBusy(f"{id} is being released (process {entry.claimed_by}, since {since})")

    def _stale(self, entry: HeldEntry) -> bool:
        return time.time() - entry.claimed_at >= self.stale_after

    def claim(self, id: str, kind: str | None = None) -> StoreClaim:
        """Take ``id`` for one release: its file locked, its entry marked, its bytes read.
        Raises :class:`QuarantineBusy` when another release has it (or it went meanwhile) and
        :class:`QuarantineNotFound` when there is no such message. Follow with :meth:`finish`
        once it is delivered, or :meth:`abandon` when it was not."""
        entry = self.get(id, kind)
        try:
            fd = lock_held(self.path(entry))
        except FileNotFoundError as exc:
            self.get(id)  # not found when the entry went too
            raise QuarantineNotFound(f"the file of {id} is gone") from exc
        if fd is None:
            raise self._busy(id)
        try:
            # The lock is ours, so any claim on the entry is of a process that is gone.
            with self.env.begin(write=True) as txn:
                held = self._decode(txn.get(id.encode(), db=self._entries))
                if held is None:
                    raise QuarantineBusy(f"{id} was released or deleted just now")
                if held.claim and not self._stale(held):
                    raise self._busy(id, held)
                held = msgspec.structs.replace(
                    held,
                    claim=secrets.token_hex(8),
                    claimed_by=os.getpid(),
                    claimed_at=time.time(),
                )
                txn.put(id.encode(), msgspec.json.encode(held), db=self._entries)
            raw = read_held(fd)
        except BaseException:
            os.close(fd)
            raise
        return StoreClaim(entry=held, raw=raw, fd=fd)

    def finish(self, claim: StoreClaim) -> None:
        """The claimed message is delivered: it leaves the quarantine."""
        try:
            self._forget(claim.entry.id, token=claim.entry.claim)
        finally:
            os.close(claim.fd)

    def abandon(self, claim: StoreClaim) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        try:
            self._unclaim(claim.entry.id, claim.entry.claim)
        finally:
            os.close(claim.fd)

    def _unclaim(self, id: str, token: str | None) -> bool:
        with self.env.begin(write=True) as txn:
            entry = self._decode(txn.get(id.encode(), db=self._entries))
            if entry is None or not entry.claim:
                return False
            if token is not None and entry.claim != token:
                return False
            if token is None and not self._stale(entry):
                return False
            held = msgspec.structs.replace(entry, claim="", claimed_by=0, claimed_at=0.0)
            txn.put(id.encode(), msgspec.json.encode(held), db=self._entries)
        return True

    def recover(self, ids: list[str] | None = None, kind: str | None = None) -> list[str]:
        """Hold again the messages whose release claim is ``stale_after`` old and whose
        claimer is gone (its lock is free): all (of ``kind``), or only ``ids``. The ids held
        again."""
        if ids is None:
            with self.env.begin(db=self._entries) as txn:
                found = [self._decode(v) for _, v in txn.cursor()]
            ids = [
                e.id
                for e in found
                if e is not None and e.claim and self._stale(e) and kind in (None, e.kind)
            ]
        back = []
        for entry_id in ids:
            try:
                fd = lock_held(self.path(self.get(entry_id)))
            except (FileNotFoundError, QuarantineNotFound):
                continue
            if fd is None:
                continue  # its claimer is alive (and slow): still its release
            try:
                if self._unclaim(entry_id, None):
                    back.append(entry_id)
            finally:
                os.close(fd)
        return back


def _over(limits: KindLimits, count: int, total: int) -> bool:
    return (limits.max_bytes is not None and total > limits.max_bytes) or (
        limits.max_messages is not None and count > limits.max_messages
    )


_OPEN: weakref.WeakValueDictionary[tuple[int, str], QuarantineStore] = weakref.WeakValueDictionary()
_OPENING = threading.Lock()


def open_store(root: Path) -> QuarantineStore:
    """The quarantine store at ``root`` (``<home>/quarantine``), shared by every user in this
    process while one holds it (the core and each plugin get the same object; a forked
    worker opens its own)."""
    key = (os.getpid(), str(root.resolve()))
    with _OPENING:
        store = _OPEN.get(key)
        if store is None:
            store = QuarantineStore(root)
            _OPEN[key] = store
        return store

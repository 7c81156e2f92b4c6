"""The sandbox's own stores: the bounded hold quarantine and the verdict cache.

Hold quarantine: the ``sandbox`` kind of the gateway's one quarantine store
(:mod:`mailwarden_sdk.quarantine_store`, ``<home>/quarantine``): the bytes as received in
``quarantine/sandbox/ID.eml`` and the plugin's record of it (envelope, rule, deadline, the
objects sent and their task ids or verdicts) in the store's index, written durably before the
gateway answers 250, so a held message survives a crash. A message is placed only if the
count and byte caps still hold with it (``refuse_new``), checked in the store's write
transaction, so worker processes sharing the store cannot overfill it together. An admin's
release or delete is a marker file (``ID.release`` / ``ID.delete``) in
``<home>/sandbox/quarantine/`` that the gateway watching the message acts on. Only one process
watches (the ``.owner`` lock there) and it follows each message in one task, so a release is
carried out once; a release marker is created exclusively, so a second request for it
(another admin, worker or command) is told that one is pending instead of being accepted too.
Before SDK 1.17 the messages were ``ID.msg`` and ``ID.json`` in that folder: opening moves
them into the store, ids kept (so pending markers still name them).

Verdict cache (``verdicts/``, an LMDB map) keyed by the SHA-256 of each object, so the same
attachment is analysed once while its entry is fresh. (The copy kept before a malicious
verdict's action is the gateway's: its backup store.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from pathlib import Path

import lmdb
import msgspec

from mailwarden_sdk import Envelope, QuarantineNotFound, WhenFull
from mailwarden_sdk.files import atomic_write
from mailwarden_sdk.files import fsync_dir as _fsync_dir
from mailwarden_sdk.quarantine_store import KindLimits, open_store

from .backends import ObjectVerdict

__all__ = [
    "KIND",
    "HeldMessage",
    "HeldObject",
    "HoldStore",
    "ReleasePending",
    "VerdictCache",
    "valid_id",
]

#: The sandbox's kind in the quarantine store.
KIND = "sandbox"


class HeldObject(msgspec.Struct, kw_only=True):
    """One object of a held message that goes to the analysis server."""

    sha256: str
    label: str
    size: int
    task: str | None = None
    verdict: ObjectVerdict | None = None


class HeldMessage(msgspec.Struct, kw_only=True):
    """A held message's record (kept in the quarantine store's index)."""

    id: str
    envelope: Envelope
    rule: str
    size: int
    held_at: float
    deadline: float
    objects: list[HeldObject]
    #: waiting (for the verdict) or expired (no verdict in time; an admin decides).
    state: str = "waiting"
    #: What the gateway last did with it, for ``mailwarden sandbox list``.
    note: str = ""
    #: The decoded subject, for listings (empty in records from before it was kept).
    subject: str = ""


def _write_durably_at(tmp: Path, data: bytes) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class ReleasePending(Exception):
    """A release of the held message was asked for already; it is carried out once."""

    def __init__(self, id: str, since: float | None) -> None:
        self.id = id
        self.since = since
        when = time.strftime(" at %H:%M:%S", time.localtime(since)) if since else ""
        super().__init__(f"a release of {id} was requested already{when}")


class HoldStore:
    """The hold quarantine of the gateway whose home is ``home``, capped at ``max_bytes``
    and ``max_messages``; an admin's requests and the watcher's lock in ``root``
    (``<home>/sandbox/quarantine``)."""

    def __init__(self, home: Path, max_bytes: int = 1 << 30, max_messages: int = 5000) -> None:
        self.root = home / "sandbox" / "quarantine"
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp"):
            # Left by a crash before the rename: never acknowledged, so never promised.
            stale.unlink(missing_ok=True)
        self.store = open_store(home / "quarantine")
        limits = KindLimits(
            max_bytes=max_bytes, max_messages=max_messages, when_full=WhenFull.REFUSE_NEW
        )
        self.store.set_limits(KIND, limits)
        self._migrate()

    def _migrate(self) -> None:
        """Move the messages of before SDK 1.17 (``ID.msg`` and ``ID.json`` in ``root``) into
        the store; caps do not apply (they were admitted under them already)."""
        for record in sorted(self.root.glob("*.json")):
            msg = record.with_suffix(".msg")
            try:
                meta = msgspec.json.decode(record.read_bytes(), type=HeldMessage)
                raw = msg.read_bytes()
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # unreadable: left where it is, nothing lost
            self._put(raw, meta, at=meta.held_at)
            msg.unlink()
            record.unlink()

    def _put(self, raw: bytes, meta: HeldMessage, at: float | None = None) -> bool:
        return (
            self.store.put(
                KIND,
                raw,
                meta.envelope,
                subject=meta.subject,
                reason=meta.state,
                details={"rule": meta.rule},
                record=msgspec.json.encode(meta).decode(),
                id=meta.id,
                at=at,
            )
            is not None
        )

    def usage(self) -> tuple[int, int]:
        """How many messages are held and how many bytes they take."""
        return self.store.usage(KIND)

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes would be placed now (not a promise)."""
        return self.store.has_room(KIND, size)

    def admit(self, raw: bytes, meta: HeldMessage) -> bool:
        """Place the message durably if the caps allow it; False (nothing written) if not."""
        return self._put(raw, meta)

    def ids(self) -> list[str]:
        """Ids of the held messages, in no particular order."""
        return [e.id for e in self.store.entries(KIND)]

    def load(self, id: str) -> HeldMessage | None:
        """The record of ``id``; None if it is gone, unreadable or not an id at all."""
        if not valid_id(id):
            return None
        try:
            entry = self.store.get(id, KIND)
            return msgspec.json.decode(entry.record, type=HeldMessage)
        except (QuarantineNotFound, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def raw(self, id: str) -> bytes:
        """The held message's bytes as received."""
        if not valid_id(id):
            raise FileNotFoundError(id)
        try:
            return self.store.raw(id, KIND)
        except QuarantineNotFound as exc:
            raise FileNotFoundError(id) from exc

    def save(self, meta: HeldMessage) -> None:
        """Replace the record of a held message (durably: task ids must survive a restart)."""
        with contextlib.suppress(QuarantineNotFound):  # removed meanwhile: nothing to keep
            self.store.replace(
                meta.id, reason=meta.state, record=msgspec.json.encode(meta).decode()
            )

    def remove(self, id: str) -> None:
        """Forget a message: the gateway has it durably now, or an admin deleted it."""
        with contextlib.suppress(QuarantineNotFound):
            self.store.delete(id, KIND)
        for suffix in (".release", ".delete"):
            (self.root / f"{id}{suffix}").unlink(missing_ok=True)
        _fsync_dir(self.root)

    def _held(self, id: str) -> bool:
        return valid_id(id) and self.load(id) is not None

    def mark(self, id: str, what: str) -> bool:
        """Leave an admin's ``release`` or ``delete`` for the gateway; False if no such id.

        A release is asked for once: :class:`ReleasePending` when its marker is there already
        (requested by someone else, being carried out or retried after a refusal)."""
        if not self._held(id):
            return False
        path = self.root / f"{id}.{what}"
        if what != "release":
            atomic_write(path, str(time.time()).encode())
            return True
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        _write_durably_at(tmp, str(time.time()).encode())
        try:
            # Atomic and exclusive: of two requests at the same moment, one places it.
            os.link(tmp, path)
        except FileExistsError:
            raise ReleasePending(id, self.marked_at(id, what)) from None
        finally:
            tmp.unlink(missing_ok=True)
        if not self._held(id):
            # The gateway released it and removed it (``.release`` last) between the check
            # above and the link: no such message any more, and no orphan marker.
            path.unlink(missing_ok=True)
            return False
        _fsync_dir(self.root)
        return True

    def marked_at(self, id: str, what: str) -> float | None:
        """When ``what`` was asked for ``id``; None when it was not (or is done)."""
        try:
            return float((self.root / f"{id}.{what}").read_text() or 0)
        except (OSError, ValueError):
            return None

    def marked(self, id: str, what: str) -> bool:
        """Whether an admin asked to ``release`` or ``delete`` ``id``."""
        return (self.root / f"{id}.{what}").exists()

    def try_own(self) -> int | None:
        """Take the watcher role (one process follows up held messages): a descriptor to
        :meth:`disown` later, or None while another process has it. A dead owner's lock goes
        with it, so a surviving worker takes over."""
        fd = os.open(self.root / ".owner", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def disown(fd: int) -> None:
        """Give the watcher role up."""
        os.close(fd)

    def owned_elsewhere(self) -> bool:
        """Whether a running gateway follows up the held messages now."""
        fd = self.try_own()
        if fd is None:
            return True
        self.disown(fd)
        return False


def valid_id(id: str) -> bool:
    """Whether ``id`` has the form of a held message's id (hex, so never a path)."""
    return bool(id) and len(id) <= 64 and all(c in "0123456789abcdef" for c in id)


class VerdictCache:
    """Verdicts by object SHA-256, fresh for ``ttl`` seconds, at most ``max_entries``."""

    def __init__(self, path: Path, ttl: float, max_entries: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=64 << 20, max_dbs=0, subdir=True)
        self.ttl = ttl
        self.max_entries = max_entries

    # A value is "<created> <last used> <verdict JSON>": freshness counts from creation,
    # eviction from last use (least recently used first).

    def get(self, sha256: str) -> ObjectVerdict | None:
        """The cached verdict, or None (absent or stale); a hit counts as a use."""
        key = sha256.encode()
        with self.env.begin(write=True) as txn:
            value = txn.get(key)
            if value is None:
                return None
            created, _, rest = bytes(value).partition(b" ")
            data = rest.partition(b" ")[2]
            try:
                if float(created) + self.ttl < time.time():
                    return None
                verdict = msgspec.json.decode(data, type=ObjectVerdict)
            except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
                return None
            txn.put(key, created + f" {time.time():.3f} ".encode() + data)
        return verdict

    def put(self, sha256: str, verdict: ObjectVerdict) -> None:
        """Remember a verdict; when full, stale entries go first, else the least recently
        used ones."""
        now = f"{time.time():.3f}"
        value = f"{now} {now} ".encode() + msgspec.json.encode(verdict)
        with self.env.begin(write=True) as txn:
            if txn.stat()["entries"] >= self.max_entries:
                self._evict(txn)
            txn.put(sha256.encode(), value)

    def _evict(self, txn: lmdb.Transaction) -> None:
        # Rare (only at the cap) and bounded by it: one pass, then the stale entries or else
        # the least recently used tenth go, so a full cache makes room for many inserts.
        now = time.time()
        stamped: list[tuple[float, float, bytes]] = []
        for key, value in txn.cursor():
            fields = bytes(value).split(b" ", 2)
            try:
                created, used = float(fields[0]), float(fields[1])
            except (ValueError, IndexError):
                created = used = 0.0
            stamped.append((used, created, bytes(key)))
        stamped.sort()
        stale = [key for _, created, key in stamped if created + self.ttl < now]
        for key in stale or [key for _, _, key in stamped[: max(1, len(stamped) // 10)]]:
            txn.delete(key)

    def close(self) -> None:
        """Close the map."""
        self.env.close()

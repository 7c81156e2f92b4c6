"""The sandbox's own stores: the bounded hold quarantine and the verdict cache.

Hold quarantine (``quarantine/``): one message is ``ID.msg`` (the bytes as received) and
``ID.json`` (envelope, rule, deadline, the objects sent and their task ids or verdicts). Both
are written in a temp file, fsynced and renamed, the directory fsynced, before the gateway
answers 250, so a held message survives a crash. A message is placed only if the count and
byte caps still hold with it, checked and written under one ``flock``, so worker processes
sharing the directory cannot overfill it together. An admin's release or delete is a marker
file (``ID.release`` / ``ID.delete``) that the gateway watching the message acts on. Only one
process watches (the ``.owner`` lock) and it follows each message in one task, so a release
is carried out once; a release marker is created exclusively, so a second request for it
(another admin, worker or command) is told that one is pending instead of being accepted too.

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
from collections.abc import Iterator
from pathlib import Path

import lmdb
import msgspec

from mailwarden_sdk import Envelope
from mailwarden_sdk.files import atomic_write
from mailwarden_sdk.files import fsync_dir as _fsync_dir

from .backends import ObjectVerdict

__all__ = [
    "HeldMessage",
    "HeldObject",
    "HoldStore",
    "ReleasePending",
    "VerdictCache",
    "valid_id",
]


class HeldObject(msgspec.Struct, kw_only=True):
    """One object of a held message that goes to the analysis server."""

    sha256: str
    label: str
    size: int
    task: str | None = None
    verdict: ObjectVerdict | None = None


class HeldMessage(msgspec.Struct, kw_only=True):
    """A held message's metadata (``ID.json``)."""

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


def _write_durably(path: Path, data: bytes) -> None:
    atomic_write(path, data)


class ReleasePending(Exception):
    """A release of the held message was asked for already; it is carried out once."""

    def __init__(self, id: str, since: float | None) -> None:
        self.id = id
        self.since = since
        when = time.strftime(" at %H:%M:%S", time.localtime(since)) if since else ""
        super().__init__(f"a release of {id} was requested already{when}")


class HoldStore:
    """The hold quarantine at ``root``, capped at ``max_bytes`` and ``max_messages``."""

    def __init__(self, root: Path, max_bytes: int = 1 << 30, max_messages: int = 5000) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*.tmp"):
            # Left by a crash before the rename: never acknowledged, so never promised.
            stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, name: str = ".lock", blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def usage(self) -> tuple[int, int]:
        """How many messages are held and how many bytes they take."""
        count = size = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.endswith(".msg"):
                    with contextlib.suppress(FileNotFoundError):
                        size += entry.stat().st_size
                        count += 1
        return count, size

    def has_room(self, size: int) -> bool:
        """Whether a message of ``size`` bytes would be placed now (not a promise)."""
        count, used = self.usage()
        return count + 1 <= self.max_messages and used + size <= self.max_bytes

    def admit(self, raw: bytes, meta: HeldMessage) -> bool:
        """Place the message durably if the caps allow it; False (nothing written) if not."""
        with self._locked():
            if not self.has_room(len(raw)):
                return False
            _write_durably(self.root / f"{meta.id}.msg", raw)
            _write_durably(self.root / f"{meta.id}.json", msgspec.json.encode(meta))
            _fsync_dir(self.root)
        return True

    def ids(self) -> list[str]:
        """Ids of the held messages, in no particular order."""
        return [p.name[:-5] for p in self.root.glob("*.json") if not p.name.startswith(".")]

    def load(self, id: str) -> HeldMessage | None:
        """The metadata of ``id``; None if it is gone, unreadable or not an id at all."""
        if not valid_id(id):
            return None
        try:
            return msgspec.json.decode((self.root / f"{id}.json").read_bytes(), type=HeldMessage)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def raw(self, id: str) -> bytes:
        """The held message's bytes as received."""
        if not valid_id(id):
            raise FileNotFoundError(id)
        return (self.root / f"{id}.msg").read_bytes()

    def save(self, meta: HeldMessage) -> None:
        """Replace the metadata of a held message (durably: task ids must survive a restart)."""
        _write_durably(self.root / f"{meta.id}.json", msgspec.json.encode(meta))

    def remove(self, id: str) -> None:
        """Forget a message: the gateway has it durably now, or an admin deleted it."""
        for suffix in (".msg", ".json", ".release", ".delete"):
            (self.root / f"{id}{suffix}").unlink(missing_ok=True)
        _fsync_dir(self.root)

    def mark(self, id: str, what: str) -> bool:
        """Leave an admin's ``release`` or ``delete`` for the gateway; False if no such id.

        A release is asked for once: :class:`ReleasePending` when its marker is there already
        (requested by someone else, being carried out or retried after a refusal)."""
        if not valid_id(id) or not (self.root / f"{id}.json").exists():
            return False
        path = self.root / f"{id}.{what}"
        if what != "release":
            _write_durably(path, str(time.time()).encode())
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
        if not (self.root / f"{id}.json").exists():
            # The gateway released it and removed its files (``.release`` last) between the
            # check above and the link: no such message any more, and no orphan marker.
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

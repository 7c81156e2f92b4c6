"""The rule quarantine: messages a rule held, with their envelope, for an admin to look at,
release or delete.

They are the ``held`` kind of the gateway's one quarantine store
(:mod:`mailwarden_sdk.quarantine_store`, at ``<home>/quarantine``): the message as the rule
left it in ``held/<id>.eml`` and its envelope, decision id, rule and reason in the store's
index. Release hands the message on through the normal outbound path.

A release happens once, however many requests, workers or commands ask for it at the same
moment: the store's claim (an ``flock`` on the file and a mark on the entry in one LMDB write
transaction) lets one caller through; the next is told with :class:`QuarantineBusy`. Only the
claimer delivers; then the message leaves the store (:meth:`Quarantine.finish`), or on a
failure it is held again (:meth:`~Quarantine.abandon`), so nothing is lost. A claim left by a
process that died is cleared once it is ``stale_after`` seconds old and its lock is free
(:meth:`~Quarantine.recover`, at start, on every listing and on the next release of it).

Before 1.17 the held messages were a Maildir at ``<home>/quarantine`` (``new/``, ``cur/``,
``releasing/``) whose files began with ``X-Mailwarden-Quarantine-*`` trace headers: the first
open moves each of them into the store, envelope and time kept.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailwarden_native import parse
from mailwarden_sdk import Envelope
from mailwarden_sdk import QuarantineNotFound as _NotFound
from mailwarden_sdk.quarantine_store import STALE_AFTER, QuarantineStore, StoreClaim, open_store
from mailwarden_sdk.quarantine_store import QuarantineBusy as _Busy

from .errors import DeliveryError

__all__ = [
    "KIND",
    "HeldMessage",
    "Quarantine",
    "QuarantineBusy",
    "QuarantineError",
    "ReleaseClaim",
    "ReleaseFailed",
]

log = logging.getLogger(__name__)

#: The core's kind in the quarantine store.
KIND = "held"
_PREFIX = b"X-Mailwarden-Quarantine-"
# The Maildir of releases before 1.17 (folders of the old layout, moved into the store).
_OLD_FOLDERS = ("new", "cur", "releasing")


class QuarantineError(Exception):
    """No such held message, or it cannot be read."""


class QuarantineBusy(QuarantineError):
    """Another request or process releases the held message right now (or just did, or
    deleted it): this caller must not send it too."""


class ReleaseFailed(QuarantineError):
    """A release could not deliver the message; it is held again."""


@dataclass
class ReleaseClaim:
    """One release's hold on a message: its bytes and envelope as held, and the store's claim
    (whose locked descriptor says its claimer is alive)."""

    id: str
    data: bytes
    envelope: Envelope
    claim: StoreClaim


@dataclass(frozen=True)
class HeldMessage:
    """One held message as the web interface and the CLI show it."""

    id: str
    held_at: float
    size: int
    envelope: Envelope
    decision: str
    rule: str
    reason: str
    subject: str
    from_header: str


def _escape(value: str) -> bytes:
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


@contextlib.contextmanager
def _errors(held_id: str) -> Iterator[None]:
    """The store's errors as this module's (the web and the commands catch these)."""
    try:
        yield
    except _Busy as exc:
        if "just now" in str(exc):
            raise QuarantineBusy(
                f"held message {held_id} was released or deleted just now"
            ) from exc
        raise QuarantineBusy(f"held message {held_id} is being released right now") from exc
    except _NotFound as exc:
        raise QuarantineError(
            f"no held message {held_id!r} (released or deleted already?)"
        ) from exc


def _id(held_id: str) -> str:
    # A message file's name (``<id>.eml``, as messages() lists them) stands for its id.
    return held_id.removesuffix(".eml")


class Quarantine:
    """Held messages: the ``held`` kind of the quarantine store at ``root``."""

    def __init__(self, root: Path, *, stale_after: float = STALE_AFTER) -> None:
        self.root = root
        self.folder = root / KIND
        self._stale_after = stale_after
        self._opened: QuarantineStore | None = None

    @property
    def stale_after(self) -> float:
        """How old a claim of a process that is gone must be before its message is held
        again."""
        return self._stale_after

    @stale_after.setter
    def stale_after(self, seconds: float) -> None:
        self._stale_after = seconds
        if self._opened is not None:
            self._opened.stale_after = seconds

    @property
    def store(self) -> QuarantineStore:
        """The store, opened on first use (and the old Maildir moved into it then)."""
        if self._opened is None:
            store = open_store(self.root)
            store.stale_after = self._stale_after
            store.folder(KIND)
            self._opened = store
            self._migrate()
        return self._opened

    def _migrate(self) -> None:
        """Move the messages of the Maildir of releases before 1.17 into the store."""
        store = self.store
        for sub in _OLD_FOLDERS:
            folder = self.root / sub
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                try:
                    data = path.read_bytes()
                    held_at = path.stat().st_mtime
                except OSError:
                    continue
                original, envelope, trace = _untraced(data)
                # Named by the old file: a move cut short by a crash is not made twice.
                entry_id = hashlib.sha256(path.name.encode()).hexdigest()[:24]
                _put(store, original, envelope, trace, id=entry_id, at=held_at)
                path.unlink()
                log.info("quarantine: %s moved into the quarantine store as %s", path, entry_id)
        for sub in (*_OLD_FOLDERS, "tmp"):
            folder = self.root / sub
            if folder.is_dir():
                for stale in folder.iterdir():  # tmp/: never acknowledged, never promised
                    stale.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _exists(self) -> bool:
        """Whether there is a store or an old Maildir here (so reading makes none)."""
        return (self.root / "index").is_dir() or any(
            (self.root / sub).is_dir() for sub in _OLD_FOLDERS
        )

    def hold(
        self, data: bytes, envelope: Envelope, *, decision: str, rule: str, reason: str
    ) -> str:
        """Store ``data`` durably with its envelope; the held message's id."""
        try:
            trace = {"decision": decision, "rule": rule, "reason": reason}
            held = _put(self.store, data, envelope, trace)
        except OSError as exc:
            # A full disk or a permission problem is temporary from the sender's point of
            # view: answering 4xx keeps the message at the client until an admin fixes it.
            raise DeliveryError(f"quarantine failed: {exc.strerror or exc}") from exc
        if held is None:
            raise DeliveryError("quarantine failed: the message does not fit")
        return held

    def raw(self, held_id: str) -> bytes:
        """The held message with trace headers on top that say its envelope, decision, rule
        and reason (the form of the quarantine before 1.17: any mail client shows them)."""
        held = self.get(held_id)
        original, _ = self.original(held_id)
        trace = [
            (b"From", held.envelope.mail_from),
            (b"To", ", ".join(held.envelope.rcpt_to)),
            (b"Decision", held.decision),
            (b"Rule", held.rule),
            (b"Reason", held.reason),
        ]
        eol = b"\r\n" if b"\r\n" in original[:4096] else b"\n"
        head = b"".join(_PREFIX + name + b": " + _escape(value) + eol for name, value in trace)
        return head + original

    def original(self, held_id: str) -> tuple[bytes, Envelope]:
        """The message as it was held, and its envelope."""
        with _errors(held_id):
            entry = self.store.get(_id(held_id), KIND)
            return self.store.raw(entry.id, KIND), entry.envelope

    # -- release, exactly once -----------------------------------------------------------------

    def claim(self, held_id: str) -> ReleaseClaim:
        """Take ``held_id`` for one release. Raises :class:`QuarantineBusy` when another
        release has it (or it went meanwhile) and :class:`QuarantineError` when there is no
        such message. Follow with :meth:`finish` once it is delivered, or :meth:`abandon`
        when it was not."""
        with _errors(held_id):
            claim = self.store.claim(_id(held_id), KIND)
        return ReleaseClaim(claim.entry.id, claim.raw, claim.entry.envelope, claim)

    def finish(self, claim: ReleaseClaim) -> None:
        """The claimed message is delivered (durably): it leaves the quarantine."""
        self.store.finish(claim.claim)

    def abandon(self, claim: ReleaseClaim) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        self.store.abandon(claim.claim)

    def recover(self, held_id: str | None = None) -> list[str]:
        """Hold again what releases of processes that are gone left claimed (all, or only
        ``held_id``): claims ``stale_after`` seconds old or more whose lock is free. The ids
        put back."""
        if not self._exists():
            return []
        back = self.store.recover(None if held_id is None else [_id(held_id)], KIND)
        for entry_id in back:
            log.warning(
                "quarantine: %s was left mid-release by a process that is gone; held again",
                entry_id,
            )
        return back

    def get(self, held_id: str) -> HeldMessage:
        """What is known about one held message."""
        with _errors(held_id):
            entry = self.store.get(_id(held_id), KIND)
        details = entry.details
        return HeldMessage(
            id=entry.id,
            held_at=entry.time,
            size=entry.size,
            envelope=entry.envelope,
            decision=details.get("decision", ""),
            rule=details.get("rule", ""),
            reason=entry.reason,
            subject=entry.subject,
            from_header=details.get("from", ""),
        )

    def held(self) -> list[HeldMessage]:
        """Every held message, newest first (a message a release is sending right now is not
        among them; one a dead process left mid-release is again, once stale)."""
        if not self._exists():
            return []
        entries = self.store.entries(KIND)
        return [self.get(e.id) for e in reversed(entries) if not e.claim]

    def delete(self, held_id: str) -> None:
        """Remove a held message for good (not one a release is sending)."""
        with _errors(held_id):
            self.store.delete(_id(held_id), KIND)

    def messages(self) -> list[Path]:
        """The held message files, oldest first (read only: for replays)."""
        if not self._exists():
            return []
        self.store  # noqa: B018 - opening moves an old Maildir into the store
        files = []
        for path in self.folder.glob("*.eml"):
            with contextlib.suppress(FileNotFoundError):
                files.append((path.stat().st_mtime, path))
        return [path for _, path in sorted(files)]

    def __len__(self) -> int:
        return len(self.messages())


def _put(
    store: QuarantineStore,
    data: bytes,
    envelope: Envelope,
    trace: dict[str, str],
    *,
    id: str | None = None,
    at: float | None = None,
) -> str | None:
    """Keep ``data`` as a held message: its subject and From header for the listings, and
    ``trace`` (decision, rule, reason) beside its envelope."""
    message = parse(data[:262144])
    details = {
        "decision": trace.get("decision", ""),
        "rule": trace.get("rule", ""),
        "from": message.header("from") or "",
    }
    return store.put(
        KIND,
        data,
        envelope,
        subject=message.subject or "",
        reason=trace.get("reason", ""),
        details=details,
        id=id,
        at=at,
    )


def _untraced(data: bytes) -> tuple[bytes, Envelope, dict[str, str]]:
    """A message of the old Maildir without its trace headers, the envelope they carried and
    the rest of them (decision, rule, reason)."""
    trace: dict[str, str] = {}
    while data.startswith(_PREFIX):
        line, _, data = data.partition(b"\n")
        name, _, value = line[len(_PREFIX) :].partition(b":")
        trace[name.decode("ascii", "replace").lower()] = value.strip().decode("utf-8", "replace")
    recipients = [r.strip() for r in trace.get("to", "").split(",") if r.strip()]
    return data, Envelope(mail_from=trace.get("from", ""), rcpt_to=recipients), trace


def received_date(held: HeldMessage) -> str:
    """``held_at`` as an RFC 5322 date, for listings."""
    return email.utils.formatdate(held.held_at, localtime=True)

"""The rule quarantine: messages a rule held, with their envelope, for an admin to look at,
release or delete.

It is a Maildir (any mail client can open it), and each held message starts with trace headers
that carry what the Maildir format has no place for: the envelope sender and recipients, the
decision id and rule, and why it was held. Release strips them again and hands the original
bytes on through the normal outbound path.

A release happens once, however many requests, workers or commands ask for it at the same
moment: :meth:`Quarantine.claim` first takes an ``flock`` on the message file and then renames it
from ``new/`` or ``cur/`` into ``releasing/`` (a rename is atomic; whoever comes second finds
no file and is told so with :class:`QuarantineBusy`). Only the claimer delivers; then it
removes the file (:meth:`~Quarantine.finish`), or on a failure renames it back
(:meth:`~Quarantine.abandon`), so nothing is lost. The lock lives as long as the claiming
process: a file left in ``releasing/`` by a process that died goes back once it is
``stale_after`` seconds old and its lock is free (:meth:`~Quarantine.recover`, at start, on
every listing and on the next release of it). It is never deleted for that.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mailwarden_native import parse
from mailwarden_sdk import Envelope
from mailwarden_sdk.quarantines import lock_held, read_held

from .durable import fsync_dir
from .maildir import Maildir

__all__ = [
    "HeldMessage",
    "Quarantine",
    "QuarantineBusy",
    "QuarantineError",
    "ReleaseClaim",
    "ReleaseFailed",
]

log = logging.getLogger(__name__)

_PREFIX = b"X-Mailwarden-Quarantine-"
# Maildir unique names: digits, letters, dots, dashes, underscores, commas, colons, and the
# backslash escapes of the host part. Anything else (a slash above all) is not a name of ours.
_NAME = re.compile(r"^[0-9A-Za-z._,:\\-]{1,255}$")
# Where a message waits while one release sends it on (not a Maildir folder: clients ignore it).
_RELEASING = "releasing"
#: How old a claim of a process that is gone must be before its message is held again.
STALE_AFTER = 300.0


class QuarantineError(Exception):
    """No such held message, or it cannot be read."""


class QuarantineBusy(QuarantineError):
    """Another request or process releases the held message right now (or just did, or
    deleted it): this caller must not send it too."""


class ReleaseFailed(QuarantineError):
    """A release could not deliver the message; it is held again."""


@dataclass
class ReleaseClaim:
    """One release's hold on a message: its bytes and envelope as they arrived, the file in
    ``releasing/`` and the locked descriptor that says its claimer is alive."""

    id: str
    path: Path
    origin: Path
    fd: int
    data: bytes
    envelope: Envelope


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


class Quarantine:
    """Held messages under ``root`` (a Maildir)."""

    def __init__(self, root: Path, *, stale_after: float = STALE_AFTER) -> None:
        self.maildir = Maildir(root)
        self.root = root
        self.releasing = root / _RELEASING
        self.stale_after = stale_after

    def hold(
        self, data: bytes, envelope: Envelope, *, decision: str, rule: str, reason: str
    ) -> str:
        """Store ``data`` durably with its envelope; the held message's id."""
        eol = b"\r\n" if b"\r\n" in data[:4096] else b"\n"
        trace = [
            (b"From", envelope.mail_from),
            (b"To", ", ".join(envelope.rcpt_to)),
            (b"Decision", decision),
            (b"Rule", rule),
            (b"Reason", reason),
        ]
        head = b"".join(_PREFIX + name + b": " + _escape(value) + eol for name, value in trace)
        return self.maildir.deliver(head + data)

    def _path(self, held_id: str) -> Path:
        if not _NAME.match(held_id) or held_id in (".", ".."):
            raise QuarantineError(f"no held message {held_id!r}")
        for sub in ("new", "cur"):
            path = self.root / sub / held_id
            if path.is_file():
                return path
        if (self.releasing / held_id).is_file():
            raise QuarantineBusy(f"held message {held_id} is being released right now")
        raise QuarantineError(f"no held message {held_id!r} (released or deleted already?)")

    def raw(self, held_id: str) -> bytes:
        """The stored bytes (trace headers included)."""
        try:
            return self._path(held_id).read_bytes()
        except FileNotFoundError as exc:
            raise QuarantineBusy(
                f"held message {held_id} was released or deleted just now"
            ) from exc

    def original(self, held_id: str) -> tuple[bytes, Envelope]:
        """The message as it arrived, and its envelope."""
        return _original(self.raw(held_id))

    # -- release, exactly once -----------------------------------------------------------------

    def claim(self, held_id: str) -> ReleaseClaim:
        """Take ``held_id`` for one release: locked, moved to ``releasing/``, read. Raises
        :class:`QuarantineBusy` when another release has it (or it went meanwhile) and
        :class:`QuarantineError` when there is no such message. Follow with :meth:`finish`
        once it is delivered, or :meth:`abandon` when it was not."""
        if not _NAME.match(held_id) or held_id in (".", ".."):
            raise QuarantineError(f"no held message {held_id!r}")
        if (self.releasing / held_id).is_file():
            self.recover(held_id)  # a claim of a process that is gone, old enough: held again
        path = self._path(held_id)
        try:
            fd = lock_held(path)
        except FileNotFoundError as exc:
            raise QuarantineBusy(
                f"held message {held_id} was released or deleted just now, or is being released"
            ) from exc
        if fd is None:
            raise QuarantineBusy(f"held message {held_id} is being released right now")
        try:
            self.releasing.mkdir(exist_ok=True)
            target = self.releasing / held_id
            try:
                # The one step that decides: only one caller can move the file away.
                os.rename(path, target)
            except FileNotFoundError as exc:
                raise QuarantineBusy(
                    f"held message {held_id} was released or deleted just now"
                ) from exc
            data = read_held(fd)
        except BaseException:
            os.close(fd)
            raise
        message, envelope = _original(data)
        return ReleaseClaim(held_id, target, path, fd, message, envelope)

    def finish(self, claim: ReleaseClaim) -> None:
        """The claimed message is delivered (durably): it leaves the quarantine."""
        try:
            claim.path.unlink(missing_ok=True)  # missing: the store's limits removed it meanwhile
            # Gone for good before the caller says "released": a crash cannot bring it back.
            fsync_dir(self.releasing)
        finally:
            os.close(claim.fd)

    def abandon(self, claim: ReleaseClaim) -> None:
        """The claimed message was not delivered: it is held again, exactly as before."""
        try:
            os.rename(claim.path, claim.origin)
            fsync_dir(claim.origin.parent)
            fsync_dir(self.releasing)
        except FileNotFoundError:
            log.warning("quarantine: %s was removed while its release failed", claim.id)
        finally:
            os.close(claim.fd)

    def recover(self, held_id: str | None = None) -> list[str]:
        """Hold again what releases of processes that are gone left in ``releasing/`` (all,
        or only ``held_id``): files ``stale_after`` seconds old or more whose lock is free.
        The ids put back."""
        if not self.releasing.is_dir():
            return []
        names = [held_id] if held_id is not None else os.listdir(self.releasing)
        back: list[str] = []
        now = time.time()
        for name in names:
            path = self.releasing / name
            try:
                # A rename sets the change time: how long ago the release claimed it.
                if now - path.stat().st_ctime < self.stale_after:
                    continue
                fd = lock_held(path)
            except FileNotFoundError:
                continue
            if fd is None:
                continue  # its claimer is alive (and slow): still its release
            try:
                try:
                    if os.stat(path).st_ino != os.fstat(fd).st_ino:
                        continue
                except FileNotFoundError:
                    continue  # finished or put back meanwhile
                origin = self.root / ("cur" if ":2," in name else "new") / name
                origin.parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, origin)
                fsync_dir(origin.parent)
                fsync_dir(self.releasing)
            finally:
                os.close(fd)
            log.warning(
                "quarantine: %s was left mid-release by a process that is gone; held again", name
            )
            back.append(name)
        return back

    def get(self, held_id: str) -> HeldMessage:
        """What is known about one held message."""
        path = self._path(held_id)
        try:
            data = path.read_bytes()
            held_at = path.stat().st_mtime
        except FileNotFoundError as exc:
            raise QuarantineBusy(
                f"held message {held_id} was released or deleted just now"
            ) from exc
        message = parse(data[:262144])
        original, envelope = _original(data)

        def trace(name: str) -> str:
            return message.header(f"x-mailwarden-quarantine-{name}") or ""

        return HeldMessage(
            id=held_id,
            held_at=held_at,
            size=len(original),
            envelope=envelope,
            decision=trace("decision"),
            rule=trace("rule"),
            reason=trace("reason"),
            subject=message.subject or "",
            from_header=message.header("from") or "",
        )

    def held(self) -> list[HeldMessage]:
        """Every held message, newest first (a message a release is sending right now is not
        among them; one a dead process left mid-release is again, once stale)."""
        self.recover()
        held = []
        for path in reversed(self.maildir.messages()):
            try:
                held.append(self.get(path.name))
            except (QuarantineError, OSError):
                continue  # removed meanwhile
        return held

    def delete(self, held_id: str) -> None:
        """Remove a held message for good (not one a release is sending)."""
        try:
            self._path(held_id).unlink()
        except FileNotFoundError as exc:
            raise QuarantineBusy(
                f"held message {held_id} was released or deleted just now"
            ) from exc

    def messages(self) -> list[Path]:
        """The held message files, oldest first."""
        return self.maildir.messages()

    def __len__(self) -> int:
        return len(self.maildir.messages())


def _original(data: bytes) -> tuple[bytes, Envelope]:
    """Stored bytes without the trace headers, and the envelope those carried."""
    trace: dict[bytes, str] = {}
    while data.startswith(_PREFIX):
        line, _, data = data.partition(b"\n")
        name, _, value = line[len(_PREFIX) :].partition(b":")
        trace[name.lower()] = value.strip().decode("utf-8", "replace")
    recipients = [r.strip() for r in trace.get(b"to", "").split(",") if r.strip()]
    return data, Envelope(mail_from=trace.get(b"from", ""), rcpt_to=recipients)


def received_date(held: HeldMessage) -> str:
    """``held_at`` as an RFC 5322 date, for listings."""
    return email.utils.formatdate(held.held_at, localtime=True)

"""The rule quarantine: messages a rule held, with their envelope, for an admin to look at,
release or delete.

It is a Maildir (any mail client can open it), and each held message starts with trace headers
that carry what the Maildir format has no place for: the envelope sender and recipients, the
decision id and rule, and why it was held. Release strips them again and hands the original
bytes on through the normal outbound path.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from pathlib import Path

from mailwarden_native import parse
from mailwarden_sdk import Envelope

from .maildir import Maildir

__all__ = ["HeldMessage", "Quarantine", "QuarantineError"]

_PREFIX = b"X-Mailwarden-Quarantine-"
# Maildir unique names: digits, letters, dots, dashes, underscores, commas, colons, and the
# backslash escapes of the host part. Anything else (a slash above all) is not a name of ours.
_NAME = re.compile(r"^[0-9A-Za-z._,:\\-]{1,255}$")


class QuarantineError(Exception):
    """No such held message, or it cannot be read."""


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

    def __init__(self, root: Path) -> None:
        self.maildir = Maildir(root)
        self.root = root

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
        raise QuarantineError(f"no held message {held_id!r}")

    def raw(self, held_id: str) -> bytes:
        """The stored bytes (trace headers included)."""
        return self._path(held_id).read_bytes()

    def original(self, held_id: str) -> tuple[bytes, Envelope]:
        """The message as it arrived, and its envelope."""
        data = self.raw(held_id)
        trace: dict[bytes, str] = {}
        while data.startswith(_PREFIX):
            line, _, data = data.partition(b"\n")
            name, _, value = line[len(_PREFIX) :].partition(b":")
            trace[name.lower()] = value.strip().decode("utf-8", "replace")
        recipients = [r.strip() for r in trace.get(b"to", "").split(",") if r.strip()]
        return data, Envelope(mail_from=trace.get(b"from", ""), rcpt_to=recipients)

    def get(self, held_id: str) -> HeldMessage:
        """What is known about one held message."""
        path = self._path(held_id)
        data = path.read_bytes()
        message = parse(data[:262144])
        original, envelope = self.original(held_id)

        def trace(name: str) -> str:
            return message.header(f"x-mailwarden-quarantine-{name}") or ""

        return HeldMessage(
            id=held_id,
            held_at=path.stat().st_mtime,
            size=len(original),
            envelope=envelope,
            decision=trace("decision"),
            rule=trace("rule"),
            reason=trace("reason"),
            subject=message.subject or "",
            from_header=message.header("from") or "",
        )

    def held(self) -> list[HeldMessage]:
        """Every held message, newest first."""
        held = []
        for path in reversed(self.maildir.messages()):
            try:
                held.append(self.get(path.name))
            except (QuarantineError, OSError):
                continue  # removed meanwhile
        return held

    def delete(self, held_id: str) -> None:
        """Remove a held message for good."""
        self._path(held_id).unlink()

    def messages(self) -> list[Path]:
        """The held message files, oldest first."""
        return self.maildir.messages()

    def __len__(self) -> int:
        return len(self.maildir.messages())


def received_date(held: HeldMessage) -> str:
    """``held_at`` as an RFC 5322 date, for listings."""
    return email.utils.formatdate(held.held_at, localtime=True)

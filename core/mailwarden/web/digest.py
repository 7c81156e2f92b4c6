"""The end user's quarantine digest: a mail per recipient listing the spam held for them, with
links that release or delete one message, or always allow its sender, without a login.

A link carries a signed, expiring token (HMAC-SHA256 with a key kept under
``<home>/web/digest-key``) naming the quarantine, the message, the recipient and the act; it
is good for that message and that recipient only. Opening a link shows what it would do and a
button: mail scanners that fetch every link of a message (safe-link rewriters) must not
release spam by looking. A release sends the message to that recipient alone; a message held
for several recipients stays held for the others.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from mailwarden_sdk import QUARANTINE_ID, Envelope, QuarantineEntry

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = [
    "ACT_LABELS",
    "DIGEST_ACTS",
    "DigestDone",
    "DigestLink",
    "DigestSigner",
    "compose_digest",
    "digests_by_recipient",
    "send_digests",
]

DIGEST_ACTS = ("release", "delete", "allow")
# How each act reads in the digest mail and on the page it opens.
ACT_LABELS = {"release": "Release", "delete": "Delete", "allow": "Always allow"}


class _Payload(msgspec.Struct, frozen=True):
    q: str  # quarantine
    i: str  # entry id
    r: str  # recipient
    a: str  # act
    e: int  # expires (Unix time)


@dataclass(frozen=True)
class DigestLink:
    """What a valid token allows."""

    quarantine: str
    entry_id: str
    recipient: str
    act: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DigestSigner:
    """Signs and checks digest link tokens with the key under ``folder`` (made on first use,
    mode 0600, shared by every worker)."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = folder / "digest-key"
        self._clock = clock
        self._key: bytes | None = None

    def _secret(self) -> bytes:
        if self._key is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as out:
                    out.write(secrets.token_bytes(32))
            key = self.path.read_bytes()
            if len(key) < 32:
                # A key being written by another worker this instant: never sign with less.
                raise RuntimeError(f"{self.path} holds no complete key")
            self._key = key
        return self._key

    def sign(self, quarantine: str, entry_id: str, recipient: str, act: str, days: float) -> str:
        """A token for ``act`` on one message for one recipient, good for ``days``."""
        payload = _Payload(
            q=quarantine, i=entry_id, r=recipient, a=act, e=int(self._clock() + days * 86400)
        )
        body = _b64(msgspec.json.encode(payload))
        mac = hmac.new(self._secret(), body.encode("ascii"), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def check(self, token: str) -> DigestLink | str:
        """What ``token`` allows, or why it allows nothing (wrong, altered, expired)."""
        body, dot, mac = token.partition(".")
        if not dot or len(token) > 2000:
            return "this link is not a quarantine digest link"
        want = hmac.new(self._secret(), body.encode("ascii"), hashlib.sha256).digest()
        try:
            given = _unb64(mac)
            payload = msgspec.json.decode(_unb64(body), type=_Payload)
        except (ValueError, msgspec.DecodeError):
            return "this link is not a quarantine digest link"
        if not hmac.compare_digest(want, given):
            return "this link is not a quarantine digest link"
        if payload.e < self._clock():
            return "this link has expired; the next digest has new ones"
        if payload.a not in DIGEST_ACTS or not QUARANTINE_ID.match(payload.i):
            return "this link is not a quarantine digest link"
        return DigestLink(payload.q, payload.i, payload.r, payload.a, payload.e)


class DigestDone:
    """Which recipients have already released or deleted their copy of a held message (one
    small file per message under ``folder``): a message held for several recipients leaves
    the quarantine when the last of them has acted, and no link acts twice."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "digest-done"

    def _path(self, quarantine: str, entry_id: str) -> Path:
        # Both are QUARANTINE_ID-shaped (letters, digits, "_", "-"): never a path of their own.
        return self.folder / f"{quarantine}--{entry_id}"

    def recipients(self, quarantine: str, entry_id: str) -> set[str]:
        """The recipients who acted on this message already."""
        try:
            text = self._path(quarantine, entry_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        return {line for line in text.splitlines() if line}

    def mark(self, quarantine: str, entry_id: str, recipient: str) -> set[str]:
        """Record that ``recipient`` acted; every recipient who has, this one included."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # One short line appended in one write: workers marking at once never mix lines.
        fd = os.open(
            self._path(quarantine, entry_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            os.write(fd, (recipient.replace("\n", "") + "\n").encode("utf-8"))
        finally:
            os.close(fd)
        return self.recipients(quarantine, entry_id)

    def forget(self, quarantine: str, entry_id: str) -> None:
        """The message left the quarantine: nothing to remember."""
        self._path(quarantine, entry_id).unlink(missing_ok=True)


def digests_by_recipient(
    entries: Iterable[QuarantineEntry],
    since: float,
    done: Callable[[str], set[str]] = lambda entry_id: set(),
) -> dict[str, list[QuarantineEntry]]:
    """The entries held since ``since`` for each recipient (lower-case) who has not acted on
    them yet (``done``: who has, by entry id), oldest first."""
    found: dict[str, list[QuarantineEntry]] = {}
    for entry in sorted(entries, key=lambda e: e.stored_at):
        if entry.stored_at < since:
            continue
        acted = done(entry.id)
        for recipient in dict.fromkeys(r.lower() for r in entry.recipients):
            if recipient not in acted:
                found.setdefault(recipient, []).append(entry)
    return found


def compose_digest(
    *,
    recipient: str,
    entries: list[QuarantineEntry],
    quarantine: str,
    signer: DigestSigner,
    base_url: str,
    sender: str,
    days: float,
) -> bytes:
    """The digest mail for ``recipient``: one block per held message with its links."""
    base = base_url.rstrip("/")
    lines = [
        f"{len(entries)} message{'s were' if len(entries) != 1 else ' was'} held as spam "
        f"for {recipient}.",
        "Each link opens a page where you confirm; no login is needed. "
        f"The links work for {days:g} days. Always allow releases the message and delivers "
        "mail from its sender to you from now on without the spam check.",
        "",
    ]
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.stored_at))
        lines += [
            f"From:    {entry.sender or '<>'}",
            f"Subject: {entry.subject or '(no subject)'}",
            f"Held:    {when} ({entry.reason})",
        ]
        for act in DIGEST_ACTS:
            token = signer.sign(quarantine, entry.id, recipient, act, days)
            lines.append(f"  {ACT_LABELS[act]:12} {base}/digest/{token}")
        lines.append("")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = f"Quarantine digest: {len(entries)} held for you"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content("\n".join(lines))
    return message.as_bytes()


async def send_digests(
    gateway: Gateway,
    signer: DigestSigner,
    *,
    base_url: str,
    sender: str,
    since: float,
    days: float = 7.0,
    quarantine: str = "spam",
) -> dict[str, str]:
    """Send each recipient with spam held since ``since`` their digest, the way released
    mail goes; where each went, by recipient."""
    offered = gateway.plugin_quarantines().get(quarantine)
    if offered is None:
        return {}
    store = offered[1]
    entries = store.search("", limit=100_000)
    done = DigestDone(signer.path.parent)
    sent: dict[str, str] = {}
    by_recipient = digests_by_recipient(entries, since, lambda i: done.recipients(quarantine, i))
    for recipient, held in by_recipient.items():
        raw = compose_digest(
            recipient=recipient,
            entries=held,
            quarantine=quarantine,
            signer=signer,
            base_url=base_url,
            sender=sender,
            days=days,
        )
        envelope = Envelope(mail_from=sender, rcpt_to=[recipient])
        sent[recipient] = await gateway.deliver_released(raw, envelope)
    return sent

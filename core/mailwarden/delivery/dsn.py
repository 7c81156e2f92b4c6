"""Delivery status notifications (RFC 3464 multipart/report) for mail that cannot be delivered."""

from __future__ import annotations

import email.utils
import re
import uuid

__all__ = ["build_dsn"]

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _status(code: int, text: str) -> str:
    found = _STATUS.search(text)
    return found[1] if found else f"{str(code)[0]}.0.0"


def build_dsn(
    *,
    hostname: str,
    sender: str,
    original: bytes,
    failures: dict[str, tuple[int, str]],
    remote: str,
    arrival: float,
    expired: bool = False,
) -> bytes:
    """A DSN to ``sender`` for the ``failures`` (recipient -> final reply) of ``original``."""
    boundary = f"mailwarden-dsn-{uuid.uuid4().hex}"
    end = original.find(b"\r\n\r\n")
    headers = original[: end + 2] if end >= 0 else original
    reason = (
        "was not delivered before its time in the queue ran out"
        if expired
        else ("was refused by the next mail server")
    )
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        f"Your message {reason}, for these recipients:",
        "",
        *(f"  <{rcpt}>: {remote} said: {code} {text}" for rcpt, (code, text) in failures.items()),
        "",
        "The headers of your message are attached.",
    ]
    per_recipient = []
    for rcpt, (code, text) in failures.items():
        status = "4.4.7" if expired else _status(code, text)
        per_recipient.append(
            "\r\n".join(
                [
                    f"Final-Recipient: rfc822; {rcpt}",
                    "Action: failed",
                    f"Status: {status}",
                    f"Remote-MTA: dns; {remote}",
                    f"Diagnostic-Code: smtp; {code} {text}",
                ]
            )
        )
    report = "\r\n\r\n".join(
        [
            "\r\n".join(
                [
                    f"Reporting-MTA: dns; {hostname}",
                    f"Arrival-Date: {email.utils.formatdate(arrival)}",
                ]
            ),
            *per_recipient,
        ]
    )
    head = "\r\n".join(
        [
            f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
            f"To: <{sender}>",
            "Subject: Undelivered Mail Returned to Sender",
            f"Date: {email.utils.formatdate(localtime=True)}",
            f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
            "Auto-Submitted: auto-replied",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            *lines,
            "",
            f"--{boundary}",
            "Content-Type: message/delivery-status",
            "",
            report,
            "",
            f"--{boundary}",
            "Content-Type: text/rfc822-headers",
            "",
            "",
        ]
    )
    return head.encode("utf-8") + headers + f"\r\n--{boundary}--\r\n".encode()

"""One SMTP transaction to the next hop, with STARTTLS, reporting a result per recipient.

Runs in a thread (smtplib is blocking); the queue decides what each result means.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RelayResult", "parse_next_hop", "send"]

_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass
class RelayResult:
    """Per recipient, the next hop's final reply: 2xx delivered, 4xx retry, 5xx failed."""

    replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    tls: bool = False

    def with_code(self, low: int, high: int) -> list[str]:
        """Recipients whose reply code is in ``[low, high)``."""
        return [r for r, (code, _) in self.replies.items() if low <= code < high]


def parse_next_hop(value: str) -> tuple[str, int]:
    """``host:port``, ``[host]:port`` or ``host`` (port 25)."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "25"
    return host.strip("[]"), int(port)


def _text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return " ".join(text.split())[:300]


def send(
    next_hop: str,
    mail_from: str,
    recipients: list[str],
    data: bytes,
    *,
    helo: str,
    tls: str,
    context: ssl.SSLContext,
    timeout: float,
    before_dot: Callable[[], None] = lambda: None,
    settled: Callable[[RelayResult], None] = lambda _r: None,
) -> RelayResult:
    """Offer ``data`` to the next hop; connection-level problems become 4xx for everyone.

    ``before_dot`` runs when the body is sent and only the final dot is missing; ``settled``
    runs as soon as the next hop answered the dot, before QUIT, so the caller records the
    outcome while the window in which a crash could cause a duplicate is smallest.
    """
    host, port = parse_next_hop(next_hop)
    result = RelayResult()
    answered = False
    try:
        with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as client:
            client.ehlo()
            if tls != "none" and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
                result.tls = True
            elif tls == "required":
                for rcpt in recipients:
                    result.replies[rcpt] = (450, "4.7.10 next hop offers no STARTTLS")
                return result
            options = []
            if client.has_extn("size"):
                options.append(f"SIZE={len(data)}")
            if client.has_extn("8bitmime") and any(b > 127 for b in data):
                options.append("BODY=8BITMIME")
            if client.has_extn("smtputf8") and not all(
                a.isascii() for a in [mail_from, *recipients]
            ):
                options.append("SMTPUTF8")
            code, message = client.mail(mail_from, options)
            if code >= 300:
                for rcpt in recipients:
                    result.replies[rcpt] = (code, _text(message))
                return result
            accepted = []
            for rcpt in recipients:
                code, message = client.rcpt(rcpt)
                result.replies[rcpt] = (code, _text(message))
                if code < 300:
                    accepted.append(rcpt)
            if not accepted:
                return result
            code, message = client.docmd("DATA")
            if code == 354:
                body = _LEADING_DOT.sub(b"..", data)
                client.send(body if body.endswith(b"\r\n") else body + b"\r\n")
                before_dot()
                if client.sock is not None:
                    # RFC 5321 4.5.3.2.6: wait up to 10 minutes for the answer to the dot; giving
                    # up earlier turns a slow next hop into an in-doubt (quarantined) message.
                    client.sock.settimeout(max(timeout, 600.0))
                client.send(b".\r\n")
                code, message = client.getreply()
            for rcpt in accepted:
                result.replies[rcpt] = (code, _text(message))
            settled(result)
            # From here on the next hop has given its final answer; a failing QUIT must not
            # turn a delivered message into a retry (a duplicate).
            answered = True
    except (OSError, smtplib.SMTPException) as exc:
        # No final answer (refused, dropped, timed out, TLS failed): the message is not known
        # to have arrived, so it is retried. Recipients already answered 5xx keep that answer.
        for rcpt in recipients:
            if not answered and result.replies.get(rcpt, (0, ""))[0] < 500:
                result.replies[rcpt] = (451, f"4.4.1 next hop {next_hop}: {_text(str(exc))}")
    return result

"""One SMTP transaction to the next hop, with STARTTLS, reporting a result per recipient.

Runs in a thread (smtplib is blocking); the queue decides what each result means.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from .scache import ConnectionCache, Destination, Session, close_session, reset_session

__all__ = ["RelayResult", "parse_next_hop", "send"]

log = logging.getLogger(__name__)

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


def _open(
    host: str, port: int, *, helo: str, tls: str, context: ssl.SSLContext, timeout: float
) -> Session:
    client = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    try:
        client.ehlo()
        secure = False
        if tls != "none" and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
            secure = True
    except BaseException:
        client.close()
        raise
    log.debug("opened connection to %s:%d (tls %s)", host, port, secure)
    return Session(client, Destination(host, port, helo, tls, secure))


def _pipelined(
    client: smtplib.SMTP, mail_from: str, options: list[str], recipients: list[str], *, rset: bool
) -> tuple[tuple[int, bytes], list[tuple[int, bytes]]] | None:
    """RSET (when ``rset``), MAIL and every RCPT in one write (RFC 2920), then their replies:
    MAIL's and one per recipient; ``None`` when RSET was not answered 250 (or the connection
    failed before its answer).

    The commands are the ones smtplib's ``rset()``, ``mail()`` and ``rcpt()`` write, in one
    round trip instead of one each.
    """
    # As smtplib's mail() (and its rset(), which goes back to ASCII) would set it.
    client.command_encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    optionlist = " " + " ".join(options) if options else ""
    lines = ["RSET\r\n"] if rset else []
    lines.append(f"mail FROM:{smtplib.quoteaddr(mail_from)}{optionlist}\r\n")
    lines += [f"rcpt TO:{smtplib.quoteaddr(r)}\r\n" for r in recipients]
    try:
        client.send("".join(lines))
        if rset:
            code, _ = client.getreply()
            if code != 250:
                return None
    except (OSError, smtplib.SMTPException):
        if rset:
            # Gone while idle (as a failed RSET in scache): nothing of the message was sent.
            return None
        raise
    mail = client.getreply()
    if mail[0] == 421:
        # The server closes after 421 (RFC 5321 3.8): nothing more will be answered.
        return mail, []
    return mail, [client.getreply() for _ in recipients]


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
    connections: ConnectionCache | None = None,
) -> RelayResult:
    """Offer ``data`` to the next hop; connection-level problems become 4xx for everyone.

    ``before_dot`` runs when the body is sent and only the final dot is missing; ``settled``
    runs as soon as the next hop answered the dot, before QUIT, so the caller records the
    outcome while the window in which a crash could cause a duplicate is smallest.

    With ``connections`` an idle connection from an earlier message is used when one passes
    RSET, and the connection goes back there afterwards when its dialogue is in sync; without,
    every call opens its own connection and ends it with QUIT.
    """
    host, port = parse_next_hop(next_hop)
    result = RelayResult()
    answered = False
    # Set only where the last command got its reply and that reply was not 421 (RFC 5321
    # 3.8: the server closes after it): only then can the next message start with RSET.
    in_sync = False
    # A reused connection's RSET goes out with MAIL and RCPT when it offers PIPELINING.
    reusable = connections
    session: Session | None = None
    try:
        while True:
            session = None
            if reusable is not None:
                session = reusable.take(host, port, helo, tls, timeout, reset=False)
            reused = session is not None
            if session is not None and not session.client.has_extn("pipelining"):
                if not reset_session(session, timeout):
                    log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
                    close_session(session, quit=session.client.sock is not None)
                    session, reused = None, False
            if session is None:
                session = _open(host, port, helo=helo, tls=tls, context=context, timeout=timeout)
            client = session.client
            result.tls = session.destination.secure
            if tls == "required" and not result.tls:
                for rcpt in recipients:
                    result.replies[rcpt] = (450, "4.7.10 next hop offers no STARTTLS")
                in_sync = True  # ended with QUIT, but never kept: it could carry no message
                return result
            if client.sock is not None:
                # The last message on this connection raised the timeout for its final dot.
                client.sock.settimeout(timeout)
            options = []
            if client.has_extn("size"):
                options.append(f"SIZE={len(data)}")
            if client.has_extn("8bitmime") and not data.isascii():
                options.append("BODY=8BITMIME")
            if client.has_extn("smtputf8") and not all(
                a.isascii() for a in [mail_from, *recipients]
            ):
                options.append("SMTPUTF8")
            if not client.has_extn("pipelining"):
                code, message = client.mail(mail_from, options)
                rcpt_replies = None
                break
            mailed = _pipelined(client, mail_from, options, recipients, rset=reused)
            if mailed is not None:
                (code, message), rcpt_replies = mailed
                break
            # The idle connection did not answer RSET with 250 (what scache checks itself
            # without PIPELINING): a fresh one, before any byte of the message went out.
            log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
            close_session(session, quit=client.sock is not None)
            session, reusable = None, None
        session.messages += 1
        if code >= 300:
            for rcpt in recipients:
                result.replies[rcpt] = (code, _text(message))
            # A pipelined RCPT after a refused MAIL got its own (refusal) reply, read above.
            closing = code == 421 or any(c == 421 for c, _ in rcpt_replies or [])
            in_sync = not closing
            return result
        accepted = []
        closing = False
        for i, rcpt in enumerate(recipients):
            code, message = rcpt_replies[i] if rcpt_replies is not None else client.rcpt(rcpt)
            result.replies[rcpt] = (code, _text(message))
            closing = closing or code == 421
            if code < 300:
                accepted.append(rcpt)
        if not accepted:
            in_sync = not closing
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
        # From here on the next hop has given its final answer; a failing QUIT or RSET must
        # not turn a delivered message into a retry (a duplicate).
        answered = True
        in_sync = not closing and code != 421
    except (OSError, smtplib.SMTPException) as exc:
        # No final answer (refused, dropped, timed out, TLS failed): the message is not known
        # to have arrived, so it is retried. Recipients already answered 5xx keep that answer.
        for rcpt in recipients:
            if not answered and result.replies.get(rcpt, (0, ""))[0] < 500:
                result.replies[rcpt] = (451, f"4.4.1 next hop {next_hop}: {_text(str(exc))}")
    finally:
        if session is not None:
            if in_sync and connections is not None and (result.tls or tls != "required"):
                connections.give(session)
            else:
                # After an exception the dialogue is out of step (a QUIT could be taken as
                # part of the message, or wait on a peer that stopped answering): just close.
                close_session(session, quit=in_sync)
    return result

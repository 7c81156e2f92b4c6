"""One SMTP transaction to the next hop, with STARTTLS, reporting a result per recipient.

Runs on the event loop (:mod:`.smtpclient`); the queue decides what each result means.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .scache import ConnectionCache, Destination, Session, close_session, reset_session
from .smtpclient import Connection, quote

__all__ = ["RelayResult", "parse_next_hop", "send"]

log = logging.getLogger(__name__)

_LEADING_DOT = re.compile(rb"(?m)^\.")
# A body up to this size goes out with its final dot in one write, after the in-doubt flag;
# a larger one is sent (and drained) first, so the flag waits only for the dot.
_ONE_WRITE_MAX = 64 * 1024


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


async def _open(
    host: str, port: int, *, helo: str, tls: str, context: ssl.SSLContext, timeout: float
) -> Session:
    client = await Connection.open(host, port, helo=helo, tls=tls, context=context, timeout=timeout)
    log.debug("opened connection to %s:%d (tls %s)", host, port, client.secure)
    return Session(client, Destination(host, port, helo, tls, client.secure))


async def _nothing() -> None:
    return None


async def _ignore(_result: RelayResult) -> None:
    return None


async def _no_message(
    client: Connection, data_reply: tuple[int, str] | None, timeout: float
) -> bool:
    """End a DATA that a server took although no recipient was (which RFC 2920 3.1 says it
    must refuse): with an empty message, which it then refuses for want of recipients.
    True when DATA was answered 421: the server closes the connection."""
    if data_reply is None:
        return False
    if data_reply[0] == 354:
        await client.command(".", timeout)
    return data_reply[0] == 421


async def send(
    next_hop: str,
    mail_from: str,
    recipients: list[str],
    data: bytes,
    *,
    helo: str,
    tls: str,
    context: ssl.SSLContext,
    timeout: float,
    before_dot: Callable[[], Awaitable[None]] = _nothing,
    settled: Callable[[RelayResult], Awaitable[None]] = _ignore,
    connections: ConnectionCache | None = None,
) -> RelayResult:
    """Offer ``data`` to the next hop; connection-level problems become 4xx for everyone.

    ``before_dot`` runs when only the final dot is missing (for a body up to 64 KiB, before
    the body, which then goes out with the dot in one write); ``settled``
    runs as soon as the next hop answered the dot, before QUIT, so the caller records the
    outcome while the window in which a crash could cause a duplicate is smallest.

    With ``connections`` an idle connection from an earlier message is used when one passes
    RSET, and the connection goes back there afterwards when its dialogue is in sync; without,
    every call opens its own connection and ends it with QUIT.

    On a connection that offers PIPELINING (RFC 2920), RSET (on a reused connection), MAIL,
    every RCPT and DATA go out in one write and their replies are read after: one round trip
    before the message.
    """
    host, port = parse_next_hop(next_hop)
    result = RelayResult()
    answered = False
    # Set only where the last command got its reply and that reply was not 421 (RFC 5321
    # 3.8: the server closes after it): only then can the next message start with RSET.
    in_sync = False
    reusable = connections
    session: Session | None = None
    # The reply to a DATA sent with the envelope's commands (pipelining).
    data_reply: tuple[int, str] | None = None
    try:
        while True:
            session = None
            if reusable is not None:
                session = await reusable.take(host, port, helo, tls, timeout, reset=False)
            reused = session is not None
            if session is not None and not session.client.has("pipelining"):
                if not await reset_session(session, timeout):
                    log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
                    await close_session(session, quit=True)
                    session, reused = None, False
            if session is None:
                session = await _open(
                    host, port, helo=helo, tls=tls, context=context, timeout=timeout
                )
            client = session.client
            result.tls = session.destination.secure
            if tls == "required" and not result.tls:
                for rcpt in recipients:
                    result.replies[rcpt] = (450, "4.7.10 next hop offers no STARTTLS")
                in_sync = True  # ended with QUIT, but never kept: it could carry no message
                return result
            options = []
            if client.has("size"):
                options.append(f"SIZE={len(data)}")
            if client.has("8bitmime") and not data.isascii():
                options.append("BODY=8BITMIME")
            encoding = "ascii"
            if client.has("smtputf8") and not all(a.isascii() for a in [mail_from, *recipients]):
                options.append("SMTPUTF8")
                encoding = "utf-8"
            optionlist = "".join(" " + o for o in options)
            lines = [f"MAIL FROM:{quote(mail_from)}{optionlist}\r\n"]
            lines += [f"RCPT TO:{quote(r)}\r\n" for r in recipients]
            if not client.has("pipelining"):
                code, message = await client.command(lines[0][:-2], timeout, encoding)
                rcpt_lines: list[str] | None = lines[1:]
                rcpt_replies: list[tuple[int, str]] = []
                break
            if reused:
                lines.insert(0, "RSET\r\n")
            # DATA goes with them, as the last command of the group (RFC 2920 3.1): one
            # round trip less per message; the server answers it 503 or 554 when it took
            # no recipient, else 354 and waits for the message.
            lines.append("DATA\r\n")
            client.write("".join(lines).encode(encoding))
            if reused:
                try:
                    rset, _ = await client.reply(timeout)
                except OSError:
                    rset = 0  # gone while idle: nothing of the message was sent
                if rset != 250:
                    # The idle connection did not answer RSET with 250 (what scache checks
                    # itself without PIPELINING): a fresh one. The MAIL, RCPT and DATA that
                    # went with the RSET may be answered, but no message follows them here,
                    # and no QUIT either, which a server waiting for the message would take
                    # as part of it: the connection is just closed.
                    log.debug("connection to %s:%d failed RSET; opening a new one", host, port)
                    await close_session(session, quit=False)
                    session, reusable = None, None
                    continue
            code, message = await client.reply(timeout)
            rcpt_lines = None
            # The server closes after 421 (RFC 5321 3.8): nothing more will be answered.
            rcpt_replies = [] if code == 421 else [await client.reply(timeout) for _ in recipients]
            if code != 421 and all(c != 421 for c, _ in rcpt_replies):
                data_reply = await client.reply(timeout)
            break
        session.messages += 1
        if code >= 300:
            for rcpt in recipients:
                result.replies[rcpt] = (code, _text(message))
            # A pipelined RCPT after a refused MAIL got its own (refusal) reply, read above.
            closing = code == 421 or any(c == 421 for c, _ in rcpt_replies)
            closing = await _no_message(client, data_reply, timeout) or closing
            in_sync = not closing
            return result
        accepted = []
        closing = False
        for i, rcpt in enumerate(recipients):
            if rcpt_lines is not None:
                code, message = await client.command(rcpt_lines[i][:-2], timeout, encoding)
            else:
                code, message = rcpt_replies[i]
            result.replies[rcpt] = (code, _text(message))
            closing = closing or code == 421
            if code < 300:
                accepted.append(rcpt)
        if not accepted:
            closing = await _no_message(client, data_reply, timeout) or closing
            in_sync = not closing
            return result
        if data_reply is None:
            data_reply = await client.command("DATA", timeout)
        code, message = data_reply
        if code == 354:
            body = _LEADING_DOT.sub(b"..", data) if b"\n." in data or data[:1] == b"." else data
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            if len(body) <= _ONE_WRITE_MAX:
                # Flagged first, then the body and the dot in one write (one send instead of
                # two): the next hop can take the message only once it has the dot either way.
                await before_dot()
                client.write(body + b".\r\n")
            else:
                await client.send(body, timeout)
                await before_dot()
                client.write(b".\r\n")
            # RFC 5321 4.5.3.2.6: wait up to 10 minutes for the answer to the dot; giving
            # up earlier turns a slow next hop into an in-doubt (quarantined) message.
            code, message = await client.reply(max(timeout, 600.0))
        for rcpt in accepted:
            result.replies[rcpt] = (code, _text(message))
        await settled(result)
        # From here on the next hop has given its final answer; a failing QUIT or RSET must
        # not turn a delivered message into a retry (a duplicate).
        answered = True
        in_sync = not closing and code != 421
    except OSError as exc:
        # No final answer (refused, dropped, timed out, TLS failed): the message is not known
        # to have arrived, so it is retried. Recipients already answered 5xx keep that answer.
        for rcpt in recipients:
            if not answered and result.replies.get(rcpt, (0, ""))[0] < 500:
                result.replies[rcpt] = (451, f"4.4.1 next hop {next_hop}: {_text(str(exc))}")
    finally:
        if session is not None:
            if in_sync and connections is not None and (result.tls or tls != "required"):
                await connections.give(session)
            else:
                # After an exception the dialogue is out of step (a QUIT could be taken as
                # part of the message, or wait on a peer that stopped answering): just close.
                await close_session(session, quit=in_sync)
    return result

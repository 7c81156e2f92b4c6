"""The SMTP gateway listener (aiosmtpd), in front of mail servers and for ``make serve``.

The message is spooled (fsynced) and scanned during DATA and the reply reflects the decision,
so a rejected message is refused to the client instead of bounced later, and 250 is sent only
after the message is durable. The listener speaks ESMTP with SIZE, 8BITMIME, SMTPUTF8,
PIPELINING and STARTTLS, and an implicit-TLS port when ``[smtp] tls_port`` is set. Client
limits: connections in total and per client address, recipients per message, message size and
idle time.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
from collections import Counter
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailwarden_sdk import Envelope

from ..pipeline import Gateway
from ..tls import server_context
from ..workers import worker_count
from .tcp import listening_socket

__all__ = ["GatewaySMTP", "SmtpHandler", "start_smtp_server", "start_smtp_servers"]

log = logging.getLogger(__name__)


class _Limits:
    """Open connections of one listener process, in total and per client address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if sum(self.open.values()) >= self.total or self.open[address] >= self.per_ip:
            return False
        self.open[address] += 1
        return True

    def leave(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with connection limits and implicit-TLS awareness."""

    def __init__(self, *args: Any, limits: _Limits, implicit_tls: bool = False, **kw: Any):
        super().__init__(*args, **kw)
        self._limits = limits
        self._implicit_tls = implicit_tls
        self._counted: str | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and not self._refused:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) else "local"
            if not self._limits.admit(address):
                # Said before any SMTP state exists: the client retries later, as with a busy MX.
                log.warning("refusing %s: connection limit reached", address)
                self._refused = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
                transport.close()
                return
            self._counted = address
        super().connection_made(transport)
        if self._implicit_tls and self.session is not None and self.session.ssl is None:
            self.session.ssl = {"cipher": transport.get_extra_info("cipher")}

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted is not None:
            self._limits.leave(self._counted)
            self._counted = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        super().eof_received()
        # aiosmtpd cancels the session on EOF but leaves the socket half open when that
        # happens before its greeting, which would hold a connection slot until the timeout.
        if self.transport is not None:
            self.transport.close()
        return False

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in blocks rather than line by line.

        aiosmtpd reads the message one line at a time in Python, which costs more CPU than the
        whole scan of a typical message with attachments. Here the stream is read up to each
        ``.<CRLF>`` (or in blocks of the reader's limit) and the end is recognised on our own
        buffer; dot-unstuffing is one ``replace``. The rest (checks before, the handler's reply
        after) is aiosmtpd's own behaviour.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = await self._read_data()
        if data is None:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = data
        self.envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The message up to the lone dot, unstuffed; ``None`` if over the size limit."""
        buffer = bytearray()
        limit = self.data_size_limit
        too_much = False
        while True:
            try:
                buffer += await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                # No ".<CRLF>" within the reader's limit: take what is safely past it.
                buffer += await self._reader.readexactly(exc.consumed)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            # The lone dot: ".<CRLF>" at the very start, or right after a CRLF.
            if len(buffer) == 3 and buffer == b".\r\n":
                return b""
            if buffer.endswith(b"\r\n.\r\n"):
                break
            if limit and len(buffer) > limit + 5:
                # Keep reading to the end so the client gets the 552 at the right time,
                # but do not keep the bytes (RFC 5321 4.5.3.1.10).
                too_much = True
                del buffer[:-5]
        if too_much:
            return None
        del buffer[-3:]  # the lone dot
        # Transparency (RFC 5321 4.5.2): a leading dot of each line was doubled by the client.
        if buffer.startswith(b"."):
            del buffer[0]
        return bytes(buffer.replace(b"\r\n.", b"\r\n"))


class SmtpHandler:
    """aiosmtpd handler that feeds the gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd reads commands from a buffer in order, so pipelined commands already work;
        # advertising it saves clients a round trip per command (RFC 2920).
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        limit = self.gateway.config.smtp.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return "452 4.5.3 Too many recipients"
        # Recipients under different rules are all accepted here and split by rule after DATA
        # (Gateway.process), so the sender is not made to wait for a retry.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        peer: Any = session.peer
        address = peer[0] if isinstance(peer, tuple) else None
        tls = session.ssl is not None
        hostname = self.gateway.config.gateway.hostname
        # Our own trace line (RFC 5321 4.4): receivers use it for loop detection and admins to
        # follow a message through hops.
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{address or 'unix'}])\r\n"
            f"\tby {hostname} (mailwarden) with {'ESMTPS' if tls else 'ESMTP'};\r\n"
            f"\t{email.utils.formatdate(localtime=True)}\r\n"
        ).encode("ascii", "replace")
        ingress_envelope = Envelope(
            mail_from=_sender(envelope.mail_from),
            rcpt_to=list(envelope.rcpt_tos),
            client_address=address,
            client_name=session.host_name,
            helo=session.host_name,
            tls=tls,
            authenticated_user=str(session.login_data) if session.authenticated else None,
        )
        try:
            outcome = await self.gateway.process(received + raw, ingress_envelope, ingress="smtp")
        except Exception:
            log.exception("processing failed; answering 451 so the client keeps the message")
            return "451 4.3.0 Temporary processing failure; try again later"
        return outcome.reply


def _sender(mail_from: str | None) -> str:
    # aiosmtpd reports the null sender as "<>"; the Envelope's null sender is "".
    return "" if not mail_from or mail_from == "<>" else mail_from


async def start_smtp_servers(
    gateway: Gateway, *, implicit_tls: bool = True
) -> list[asyncio.Server]:
    """Listen on ``[smtp] listen:port`` (STARTTLS) and ``tls_port`` (implicit TLS) if set."""
    cfg = gateway.config.smtp
    handler = SmtpHandler(gateway)
    limits = _Limits(cfg.max_connections, cfg.max_connections_per_ip)
    context: ssl.SSLContext | None = None
    if cfg.starttls or cfg.tls_port:
        context = await asyncio.to_thread(server_context, gateway.config)

    def factory(implicit: bool) -> SMTP:
        return GatewaySMTP(
            handler,
            hostname=gateway.config.gateway.hostname,
            ident="mailwarden ESMTP",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=cfg.timeout,
            tls_context=None if implicit or not cfg.starttls else context,
            require_starttls=cfg.require_starttls and not implicit,
            limits=limits,
            implicit_tls=implicit,
        )

    loop = asyncio.get_running_loop()
    reuse_port = worker_count(cfg.workers) > 1
    servers = [
        await loop.create_server(
            lambda: factory(False), sock=listening_socket(cfg.listen, cfg.port, reuse_port)
        )
    ]
    if implicit_tls and cfg.tls_port and context is not None:
        servers.append(
            await loop.create_server(
                lambda: factory(True),
                sock=listening_socket(cfg.listen, cfg.tls_port, reuse_port),
                ssl=context,
            )
        )
    return servers


async def start_smtp_server(gateway: Gateway) -> asyncio.Server:
    """Only the ``[smtp] port`` listener (for embedders and the test harness)."""
    return (await start_smtp_servers(gateway, implicit_tls=False))[0]

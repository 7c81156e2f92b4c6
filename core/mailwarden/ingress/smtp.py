"""The SMTP gateway listener (aiosmtpd), in front of mail servers and for ``make serve``.

The message is scanned during DATA and the reply reflects the decision, so a rejected message
is refused to the client instead of bounced later, and 250 is sent only after the message is
durable where the action put it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailwarden_sdk import Envelope

from ..pipeline import Gateway

__all__ = ["SmtpHandler", "start_smtp_server"]

log = logging.getLogger(__name__)


class SmtpHandler:
    """aiosmtpd handler that feeds the gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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
        sender = envelope.mail_from or ""
        if envelope.rcpt_tos:
            # One DATA gets one reply, so one transaction must fall under one rule. A recipient
            # under another rule is deferred with 452, which every client answers by sending it
            # again in a transaction of its own: nothing is lost and each rule is applied.
            first = self.gateway.rule_for(sender, envelope.rcpt_tos[0])
            if self.gateway.rule_for(sender, address).name != first.name:
                return "452 4.5.3 Recipient under another policy; send it in a new transaction"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        peer: Any = session.peer
        ingress_envelope = Envelope(
            mail_from=envelope.mail_from or "",
            rcpt_to=list(envelope.rcpt_tos),
            client_address=peer[0] if isinstance(peer, tuple) else None,
            client_name=session.host_name,
            helo=session.host_name,
            tls=session.ssl is not None,
            authenticated_user=str(session.login_data) if session.authenticated else None,
        )
        try:
            outcome = await self.gateway.process(raw, ingress_envelope, ingress="smtp")
        except Exception:
            log.exception("processing failed; answering 451 so the client keeps the message")
            return "451 4.3.0 Temporary processing failure; try again later"
        return outcome.reply


async def start_smtp_server(gateway: Gateway) -> asyncio.Server:
    """Listen on ``[smtp] listen:port`` and serve until the returned server is closed."""
    cfg = gateway.config.smtp
    handler = SmtpHandler(gateway)

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=gateway.config.gateway.hostname,
            ident="mailwarden ESMTP",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=cfg.timeout,
        )

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=cfg.listen, port=cfg.port, reuse_address=True)

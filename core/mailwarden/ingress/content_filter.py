"""Postfix's after-queue content filter: receive over SMTP, scan, re-inject to Postfix.

Postfix hands every queued message to ``content_filter = scan:[127.0.0.1]:10025`` and waits
for our reply (postfix.org/FILTER_README.html): 2xx means we took responsibility, 4xx makes
Postfix keep the message and try again later, 5xx makes it bounce. What passes the scan goes
back to Postfix's re-injection smtpd (``127.0.0.1:10026``, no content filter there), with the
original client's attributes in XFORWARD when that smtpd offers it, so Postfix logs the real
client instead of us. The 250 is sent only after the re-injection was accepted: the message
is then Postfix's again, so nothing is kept here and a crash cannot lose it. Any failure is
answered 451 and Postfix still has it.

Recipients under different rules are scanned and acted on once per rule, as in
``Gateway.process``: if every rule refuses, the refusal is the answer (a temporary one wins);
otherwise rejected recipients are dropped rather than bounced (the sender of spam or malware
is usually forged) and temporarily refused ones are held in the quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailwarden_native import parse
from mailwarden_sdk import ActionKind, Envelope

from ..delivery.relay import parse_next_hop
from ..pipeline import settle
from .connections import ConnectionLimits, envelope_sender
from .smtp import GatewaySMTP
from .tcp import listening_socket

if TYPE_CHECKING:
    from ..pipeline import Decision, Gateway

__all__ = [
    "ContentFilterHandler",
    "ReinjectError",
    "reinject",
    "start_content_filter",
    "xtext_decode",
    "xtext_encode",
]

log = logging.getLogger(__name__)

# The attributes Postfix's smtp client sends when we advertise them (XFORWARD_README).
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_UNAVAILABLE = "[UNAVAILABLE]"
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")
# Postfix's smtpd reads an XFORWARD line of up to 512 bytes; longer sets go in several lines.
_XFORWARD_LINE = 400


class ReinjectError(Exception):
    """The re-injection smtpd did not take the message (for every recipient)."""


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: ``+HH`` is the byte HH."""
    return _XTEXT.sub(lambda m: chr(int(m[1], 16)), value)


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext for one attribute value."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}"
        for c in value.encode("utf-8", "replace").decode("latin-1")
    )


def reinject(
    next_hop: str,
    mail_from: str,
    recipients: list[str],
    data: bytes,
    *,
    helo: str,
    xforward: Mapping[str, str],
    mail_options: list[str],
    timeout: float,
) -> str:
    """One SMTP transaction to Postfix's re-injection port; the reply to the final dot.

    Runs in a thread (smtplib is blocking). XFORWARD is sent only with the attributes the
    server offers. Raises :class:`ReinjectError` unless every recipient was accepted: a
    partial acceptance is a failure too, because our one reply covers all recipients.
    """
    host, port = parse_next_hop(next_hop)
    try:
        with smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout) as client:
            client.ehlo()
            if xforward and client.has_extn("xforward"):
                offered = set(client.esmtp_features["xforward"].upper().split())
                pairs = [f"{k}={xtext_encode(v)}" for k, v in xforward.items() if k in offered]
                line: list[str] = []
                for pair in [*pairs, None]:
                    if line and (pair is None or len(" ".join([*line, pair])) > _XFORWARD_LINE):
                        code, message = client.docmd("XFORWARD", " ".join(line))
                        if code != 250:
                            raise ReinjectError(f"XFORWARD refused: {code} {message!r}")
                        line = []
                    if pair is not None:
                        line.append(pair)
            options = [f"SIZE={len(data)}"] if client.has_extn("size") else []
            if "BODY=8BITMIME" in mail_options and client.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if "SMTPUTF8" in mail_options and client.has_extn("smtputf8"):
                options.append("SMTPUTF8")
            refused = client.sendmail(mail_from, recipients, data, options)
            if refused:
                raise ReinjectError(f"recipients refused: {refused}")
            return "250 re-injected"
    except smtplib.SMTPRecipientsRefused as exc:
        raise ReinjectError(f"recipients refused: {exc.recipients}") from exc
    except smtplib.SMTPResponseException as exc:
        raise ReinjectError(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise ReinjectError(f"{next_hop}: {exc!r}") from exc


class FilterSMTP(GatewaySMTP):
    """aiosmtpd's SMTP plus the XFORWARD command Postfix's smtp client sends."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.xforward: dict[str, str] = {}

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        if self.session is None or not self.session.extended_smtp:
            await self.push("503 5.5.1 Error: send EHLO first")
            return
        if self.envelope is not None and self.envelope.mail_from:
            await self.push("503 5.5.1 Error: XFORWARD not allowed in a mail transaction")
            return
        for item in arg.split():
            name, sep, value = item.partition("=")
            if not sep or name.upper() not in XFORWARD_ATTRIBUTES:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute: {name[:40]}")
                return
            self.xforward[name.upper()] = xtext_decode(value)
        await self.push("250 2.0.0 Ok")


class ContentFilterHandler:
    """aiosmtpd handler: scan, then re-inject, quarantine or drop, and answer."""

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
        session.host_name = hostname
        # Advertising XFORWARD makes Postfix (smtp_send_xforward_command = yes) tell us who
        # the original client was; we pass it on at re-injection.
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        extra.append("250-XFORWARD " + " ".join(XFORWARD_ATTRIBUTES))
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.gateway.config.content_filter.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        xforward = dict(server.xforward) if isinstance(server, FilterSMTP) else {}
        if isinstance(server, FilterSMTP):
            # XFORWARD holds for one transaction; Postfix sends it again before the next MAIL.
            server.xforward.clear()
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        try:
            return await self.filter(raw, envelope, xforward)
        except ReinjectError as exc:
            return f"451 4.4.0 Re-injection failed ({_short(exc)}); try again later"
        except Exception:
            log.exception("content filter failed; 451 so that Postfix keeps the message")
            return "451 4.3.0 Temporary content filter failure; try again later"

    def envelope(self, envelope: SmtpEnvelope, xforward: Mapping[str, str]) -> Envelope:
        """The original client as Postfix forwarded it, else Postfix itself."""

        def attr(name: str) -> str | None:
            value = xforward.get(name)
            return None if not value or value == _UNAVAILABLE else value

        address = attr("ADDR")
        if address and address.upper().startswith("IPV6:"):
            address = address[5:]
        return Envelope(
            mail_from=envelope_sender(envelope.mail_from),
            rcpt_to=list(envelope.rcpt_tos),
            client_address=address,
            client_name=attr("NAME"),
            helo=attr("HELO"),
            queue_id=attr("IDENT"),
        )

    async def filter(
        self, raw: bytes, smtp_envelope: SmtpEnvelope, xforward: Mapping[str, str]
    ) -> str:
        """Scan per rule, act, and return the one SMTP reply for the transaction."""
        gateway = self.gateway
        envelope = self.envelope(smtp_envelope, xforward)
        groups = gateway.split_recipients(envelope)
        message = await asyncio.to_thread(parse, raw)
        decisions = [
            await gateway.scan(raw, env, message=message, dry_run=False) for _, env in groups
        ]
        try:
            await gateway.outbox.keep_backups(decisions)
        except Exception as exc:
            # Nothing is changed or dropped without its copy: Postfix keeps the message queued.
            log.warning("content filter: cannot keep a backup copy: %r", exc)
            return "451 4.3.0 Cannot keep a backup copy now"
        refusal = settle(decisions)
        if refusal is not None:
            # A 5xx makes Postfix bounce to the (often forged) sender; that is what the rule
            # asked for with "reject", as the SMTP gateway does.
            reply = f"{refusal.action.smtp_code} {refusal.action.smtp_text}"
            for d in decisions:
                self._record(d, reply)
            return reply
        replies: list[tuple[Decision, str]] = []
        for d in decisions:
            replies.append((d, await self._act(d, smtp_envelope, xforward)))
        for d, reply in replies:
            self._record(d, reply)
        ids = ", ".join(d.id[:12] for d in decisions)
        return f"250 2.0.0 Ok: filtered as {ids}"

    async def _act(
        self, d: Decision, smtp_envelope: SmtpEnvelope, xforward: Mapping[str, str]
    ) -> str:
        gateway = self.gateway
        cfg = gateway.config.content_filter
        kind = d.action.kind
        if kind is ActionKind.DELIVER:
            # Rewritten once, like every way out: the subject tag is in it already.
            data = gateway.outbox.outgoing(d)
            try:
                await asyncio.to_thread(
                    reinject,
                    cfg.reinject,
                    d.envelope.mail_from,
                    list(d.envelope.rcpt_to),
                    data,
                    helo=gateway.config.gateway.hostname,
                    xforward=xforward if cfg.xforward else {},
                    mail_options=list(smtp_envelope.mail_options),
                    timeout=cfg.reinject_timeout,
                )
            except ReinjectError as exc:
                log.warning("re-injection of %s failed: %s", d.id[:12], exc)
                self._record(d, f"451 4.4.0 re-injection failed: {exc}")
                # Raised on: one reply covers every group, and Postfix must keep the message.
                raise
            return "250 2.0.0 re-injected"
        if kind is ActionKind.QUARANTINE:
            await gateway.outbox.hold(d)
            return f"250 2.0.0 held as {d.id[:12]}"
        return f"{d.action.smtp_code} {d.action.smtp_text}"

    def _record(self, decision: Decision, reply: str) -> None:
        self.gateway.record(decision, ingress="content_filter", reply=reply)


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


async def start_content_filter(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``[content_filter] listen:port``."""
    cfg = gateway.config.content_filter
    handler = ContentFilterHandler(gateway)
    limits = ConnectionLimits(cfg.max_connections, cfg.max_connections)

    def factory() -> SMTP:
        return FilterSMTP(
            handler,
            hostname=gateway.config.gateway.hostname,
            ident="mailwarden content filter",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=cfg.timeout,
            limits=limits,
        )

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory, sock=listening_socket(cfg.listen, cfg.port, reuse_port)
    )

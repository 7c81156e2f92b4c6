"""The gateway as a milter handler: the MTA's message scanned per rule, the settled decision
turned into milter changes and one reply."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import msgspec

from mailwarden_native import parse
from mailwarden_sdk import ActionKind, Envelope, run_cpu_bound
from mailwarden_sdk.offload import INLINE_MAX_BYTES

from ...greylist import in_networks
from ...pipeline import settle
from .server import MilterMessage, MilterResult, MilterServer

if TYPE_CHECKING:
    from ...pipeline import Decision, Gateway

__all__ = [
    "GatewayMilter",
    "start_milter_server",
]

log = logging.getLogger(__name__)

# -- the gateway as a milter handler ----------------------------------------------------------


def _address(value: str) -> str:
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


class GatewayMilter:
    """Scans with the gateway and turns its decision into milter changes and a reply.

    The MTA answers once for all recipients. When they fall under different rules each rule's
    scan runs; if every rule refuses, the refusal is the answer (a temporary one wins, so
    nothing is lost); otherwise the message is accepted and the recipients whose rule refuses,
    discards or quarantines are deleted from it (SMFIR_DELRCPT) - the per-recipient policy the
    protocol allows.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        quarantine: Literal["store", "hold"] = "store",
        on_decision: Callable[[Decision], Awaitable[None]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.quarantine = quarantine
        self._on_decision = on_decision
        self._trusted = [
            ipaddress.ip_network(n, strict=False) for n in gateway.config.smtp.trusted_networks
        ]
        self._policy_hook = gateway.plugins.pm.hook.mailwarden_policy_step

    def envelope(self, m: MilterMessage) -> Envelope:
        """What the MTA told us, as the gateway's envelope."""
        macros = m.macros
        address = macros.get("client_addr") or (m.address if m.family in "46" else None)
        return Envelope(
            mail_from=_address(m.sender),
            rcpt_to=[_address(r) for r, _ in m.recipients],
            client_address=address or None,
            client_name=macros.get("client_name") or m.hostname or None,
            helo=m.helo or None,
            queue_id=m.queue_id,
            tls=bool(macros.get("tls_version")),
            authenticated_user=macros.get("auth_authen") or None,
        )

    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        gateway = self.gateway
        raw = message.raw()
        envelope = self.envelope(message)
        refused = await self._policy_steps(envelope, len(raw))
        if refused is not None:
            return refused
        groups = gateway.split_recipients(envelope)
        # run_cpu_bound's own test first: most messages are parsed here, without a coroutine.
        size = len(raw)
        parsed = parse(raw) if size <= INLINE_MAX_BYTES else await run_cpu_bound(size, parse, raw)
        decisions = [
            await gateway.scan(raw, env, message=parsed, rule=r, dry_run=False) for r, env in groups
        ]
        try:
            await gateway.outbox.keep_backups(decisions)
        except Exception as exc:
            # Nothing is changed or dropped without its copy: the MTA keeps the message.
            log.warning("milter: cannot keep a backup copy: %r", exc)
            return MilterResult("tempfail", 451, "4.3.0 Cannot keep a backup copy now")
        refusal = settle(decisions)
        if refusal is not None:
            temporary = refusal.action.kind is ActionKind.TEMPFAIL
            result = MilterResult(
                "tempfail" if temporary else "reject",
                refusal.action.smtp_code,
                refusal.action.smtp_text,
            )
            for d in decisions:
                self._record(d, f"{result.code} {result.text}")
            return result
        if len(decisions) == 1:
            result = await self._single(decisions[0])
        else:
            result = MilterResult("accept")
            by_address = {_address(r): r for r, _ in message.recipients}
            for d in decisions:
                if d.action.kind is ActionKind.DELIVER:
                    continue
                if d.action.kind is ActionKind.QUARANTINE:
                    # The MTA's hold queue holds a message for everyone: a part is ours.
                    await gateway.outbox.hold(d)
                result.delete_recipients += [by_address.get(r, r) for r in d.envelope.rcpt_to]
            delivered = [d for d in decisions if d.action.kind is ActionKind.DELIVER]
            if delivered:
                self._tag(result, delivered[0])
            else:
                result = MilterResult("discard")
        for d in decisions:
            self._record(d, f"{d.action.smtp_code} {d.action.smtp_text}")
        return result

    async def _policy_steps(self, envelope: Envelope, size: int) -> MilterResult | None:
        """Greylisting and rate limits before the scan, answered at the end of the message:
        the MTA tempfails the whole message when one recipient's triplet is deferred (each
        triplet is recorded, so the retry passes for all). "Trusted" is ``[smtp]
        trusted_networks``; authenticated is the MTA's ``{auth_authen}``."""
        if not self._policy_hook.get_hookimpls():
            # No step to ask (no plugin's, greylisting and rate limits off): nothing to pass.
            return None
        steps = self.gateway.policy_steps
        trusted = in_networks(envelope.client_address, self._trusted)
        reply = None
        for n, recipient in enumerate(envelope.rcpt_to):
            so_far = msgspec.structs.replace(envelope, rcpt_to=envelope.rcpt_to[:n])
            deferred = await steps.at_recipient(so_far, recipient, trusted=trusted)
            reply = reply or deferred
        reply = reply or await steps.at_message(envelope, size, trusted=trusted)
        if reply is None:
            return None
        code, _, text = reply.partition(" ")
        return MilterResult("tempfail" if code.startswith("4") else "reject", int(code), text)

    async def _single(self, d: Decision) -> MilterResult:
        kind = d.action.kind
        result = MilterResult("accept")
        if kind is ActionKind.DELIVER:
            self._tag(result, d)
        elif kind is ActionKind.QUARANTINE and self.quarantine == "hold" and not d.action.held_in:
            # Held in the MTA's hold queue, unless a plugin kept the one copy already (the
            # spam quarantine, with its digest and learning): then it is discarded here.
            result.add_headers = d.added_headers()
            result.quarantine = f"mailwarden {d.action.reason} {d.id[:12]}"
        elif kind is ActionKind.QUARANTINE:
            await self.gateway.outbox.hold(d)
            result = MilterResult("discard")
        else:
            result = MilterResult("discard")
        return result

    @staticmethod
    def _tag(result: MilterResult, d: Decision) -> None:
        result.add_headers = d.added_headers()
        subject = d.tagged_subject()
        if subject is not None and d.message.subject:
            result.change_headers.append(("Subject", 1, subject))
        elif subject is not None:
            result.add_headers.append(("Subject", subject))

    def _record(self, decision: Decision, reply: str) -> None:
        self.gateway.record(decision, ingress="milter", reply=reply)


async def start_milter_server(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen as ``[milter]`` says (TCP, or a UNIX socket when ``unix_socket`` is set)."""
    cfg = gateway.config.milter
    server = MilterServer(
        GatewayMilter(gateway, quarantine=cfg.quarantine),
        max_message_size=cfg.max_message_size,
        max_connections=cfg.max_connections,
        timeout=cfg.timeout,
        progress_interval=cfg.progress_interval,
    )
    if cfg.unix_socket:
        return await server.start_unix(str(gateway.config.path_in_home(cfg.unix_socket)))
    return await server.start(cfg.listen, cfg.port, reuse_port=reuse_port)

"""Policy steps written as a third party would write them: against mailwarden_sdk only."""

from __future__ import annotations

import asyncio

import msgspec

from mailwarden_sdk import Host, PolicyRequest, PolicyVerdict, hookimpl


class SenderPolicyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[senderpolicy]``: senders to hold back, senders to let through, a size cap."""

    tempfail: list[str] = msgspec.field(default_factory=list)
    accept: list[str] = msgspec.field(default_factory=list)
    max_bytes: int = 0


class SenderPolicy:
    """Tempfails listed senders at RCPT, lets trusted partners past the later steps
    (greylisting), and refuses messages over a size cap at the end of DATA."""

    requires_sdk = ">=1.15,<2"

    def __init__(self) -> None:
        self.config = SenderPolicyConfig()
        self.asked: list[tuple[str, str | None, int | None]] = []

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return "senderpolicy", SenderPolicyConfig

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for("senderpolicy")

    @hookimpl
    async def mailwarden_policy_step(self, request: PolicyRequest) -> PolicyVerdict | None:
        await asyncio.sleep(0)  # as a lookup in shared state would
        self.asked.append((request.stage, request.recipient, request.size))
        sender = request.sender.lower()
        if request.stage == "recipient" and sender in self.config.tempfail:
            return PolicyVerdict.tempfail(
                f"Sender {sender} is held back for now", code=450, status="4.7.26"
            )
        if sender in self.config.accept:
            return PolicyVerdict.accept()
        cap = self.config.max_bytes
        if request.stage == "message" and cap and (request.size or 0) > cap:
            return PolicyVerdict.reject(f"Messages over {cap} bytes are refused here")
        return None


class BrokenPolicy:
    """A step whose backend fails: the sender must be told to retry, never let through."""

    @hookimpl
    def mailwarden_policy_step(self, request: PolicyRequest) -> PolicyVerdict | None:
        if request.sender.startswith("crash@"):
            raise ConnectionError("policy backend unreachable")
        if request.sender.startswith("wrong@"):
            return "OK"  # type: ignore[return-value]
        return None


class SlowPolicy:
    """A step that does not answer in time (``[hooks] policy_step``)."""

    @hookimpl
    async def mailwarden_policy_step(self, request: PolicyRequest) -> PolicyVerdict | None:
        if request.sender.startswith("slow@"):
            await asyncio.sleep(30)
        return None

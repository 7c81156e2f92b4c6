"""SDK 1.5 hold: a plugin keeps a message until it knows more, then resubmits it through the
pipeline. Shown with a minimal third-party-style plugin, independent of the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner
from mailwarden_sdk import (
    Category,
    Envelope,
    Finding,
    Host,
    ScanContext,
    Verdict,
    hookimpl,
)
from tests.conftest import make_message

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


class Keeper:
    """Asks to hold every message; takes custody unless told to refuse."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.host: Host | None = None
        self.kept: dict[str, tuple[bytes, Envelope]] = {}

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.host = host

    @hookimpl
    def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
        if not any(f.detector == "keeper" for f in verdict.findings):
            verdict.sandbox = "hold"

    @hookimpl
    async def mailwarden_hold(self, ctx: ScanContext, verdict: Verdict) -> str | None:
        if self.refuse:
            return None
        id = f"k{len(self.kept)}"
        self.kept[id] = (ctx.raw, ctx.envelope)
        return id


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[GatewayRunner, Keeper]]:
    keeper = Keeper()
    plugins = build_plugin_manager(entry_points=False, extra={"keeper": keeper})
    config = parse_config(
        '[[rules]]\nname = "default"\nactions = { malicious = "reject" }\n',
        plugins.config_schemas(),
    )
    config.gateway.home = str(tmp_path)
    gateway = GatewayRunner(Gateway(config, plugins=plugins)).start()
    try:
        yield gateway, keeper
    finally:
        gateway.stop()


def test_hook_mailwarden_hold(runner: tuple[GatewayRunner, Keeper]) -> None:
    gateway, keeper = runner
    outcome = gateway.process(make_message(subject="later"), ENVELOPE)
    assert (outcome.reply_code, outcome.reply_text) == (250, "2.0.0 Ok: held for analysis as k0")
    assert gateway.delivered() == [] and list(gateway.gateway.spool.ids()) == []
    assert outcome.decision.action.reason == "hold"

    # The verdict arrives: clean is delivered, through the whole pipeline again.
    raw, envelope = keeper.kept["k0"]
    assert keeper.host is not None
    clean = Finding(
        code="KEEPER_CLEAN", detector="keeper", category=Category.SANDBOX, status="clean"
    )
    code, _ = gateway._call(keeper.host.resubmit(raw, envelope, [clean]))
    assert code == 250
    delivered = gateway.delivered()
    assert len(delivered) == 1 and b"X-Mailwarden-Sandbox: clean" in delivered[0]

    # Malicious after the transaction: the rule's reject becomes "blocked" (no bounce).
    gateway.process(make_message(subject="bad"), ENVELOPE)
    raw, envelope = keeper.kept["k1"]
    bad = Finding(
        code="KEEPER_BAD", detector="keeper", category=Category.SANDBOX, status="malicious"
    )
    code, text = gateway._call(keeper.host.resubmit(raw, envelope, [bad]))
    assert code == 250 and "Blocked" in text
    assert len(gateway.delivered()) == 1
    assert gateway.events()[0].ingress == "resubmit"


def test_a_hold_nobody_takes_is_a_tempfail(runner: tuple[GatewayRunner, Keeper]) -> None:
    gateway, keeper = runner
    keeper.refuse = True
    outcome = gateway.process(make_message(), ENVELOPE)
    assert outcome.reply_code == 451
    assert gateway.delivered() == [] and list(gateway.gateway.spool.ids()) == []


def test_resubmit_needs_a_gateway() -> None:
    from mailwarden.config import Config
    from mailwarden.pipeline import Host

    with pytest.raises(RuntimeError):
        Host(Config()).resubmit(b"", ENVELOPE)

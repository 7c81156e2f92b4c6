"""Policy steps of plugins (``mailwarden_policy_step``) through the real SMTP gateway.

The plugins are in tests/thirdparty/policy.py, written against mailwarden_sdk only; each gateway
listens on 127.0.0.1 in this process and the clients are raw SMTP sessions from 127.0.0.2
(outside ``trusted_networks``, so greylisting applies to them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from mailwarden.errors import PluginError
from mailwarden.ingress.milter import GatewayMilter, MilterServer
from mailwarden.testing import GatewayRunner, _gateway
from mailwarden_sdk import PolicyVerdict
from tests.conftest import make_message
from tests.integration.test_greylist_ratelimit import BASE, GREYLISTING, metric, send
from tests.integration.test_greylist_ratelimit import node as node  # the fixture
from tests.milter_mta import Answer, Mta
from tests.thirdparty.policy import BrokenPolicy, SenderPolicy, SlowPolicy

pytestmark = pytest.mark.integration

Node = Callable[..., GatewayRunner]


def test_hook_mailwarden_policy_step(node: Node) -> None:
    policy = SenderPolicy()
    config = BASE + '[senderpolicy]\ntempfail = ["held@sender.test"]\n'
    gateway = node(config, {"senderpolicy": policy})
    rcpt, _ = send(gateway, "held@sender.test", "bob@example.org")
    assert rcpt.startswith(b"450 4.7.26 Sender held@sender.test is held back for now"), rcpt
    rcpt, data = send(gateway, "fine@sender.test", "bob@example.org")
    assert rcpt.startswith(b"250") and data.startswith(b"250"), (rcpt, data)
    assert len(gateway.delivered()) == 1
    size = len(make_message())
    # Asked at each RCPT with the recipient, and once at the end of DATA with the size.
    assert policy.asked == [
        ("recipient", "bob@example.org", None),
        ("recipient", "bob@example.org", None),
        ("message", None, size),
    ]
    assert metric(gateway, "mailwarden_policy_deferrals_total", {"policy": "senderpolicy"}) == 1


def test_a_plugin_step_runs_before_the_built_in_greylisting_and_can_let_a_sender_past_it(
    node: Node,
) -> None:
    config = BASE + GREYLISTING + '[senderpolicy]\naccept = ["partner@sender.test"]\n'
    gateway = node(config, {"senderpolicy": SenderPolicy()})
    # The built-in greylisting is a step of the same list: a stranger is deferred...
    rcpt, _ = send(gateway, "stranger@sender.test", "bob@example.org")
    assert rcpt.startswith(b"451 4.7.1 Greylisted"), rcpt
    # ...and the plugin's accept, asked first, skips it for a partner.
    rcpt, data = send(gateway, "partner@sender.test", "bob@example.org")
    assert rcpt.startswith(b"250") and data.startswith(b"250"), (rcpt, data)
    assert metric(gateway, "mailwarden_policy_deferrals_total", {"policy": "greylist"}) == 1


def test_a_step_rejects_an_oversized_message_at_the_end_of_data(node: Node) -> None:
    size = len(make_message())
    config = BASE + f"[senderpolicy]\nmax_bytes = {size - 1}\n"
    gateway = node(config, {"senderpolicy": SenderPolicy()})
    rcpt, data = send(gateway, "big@sender.test", "bob@example.org")
    assert rcpt.startswith(b"250"), rcpt
    assert data.startswith(f"550 5.7.1 Messages over {size - 1} bytes are refused".encode()), data
    assert gateway.delivered() == []


def test_a_failing_or_slow_step_tempfails_and_never_lets_the_sender_through(node: Node) -> None:
    plugins = {"broken": BrokenPolicy(), "slow": SlowPolicy()}
    gateway = node(BASE + "[hooks]\npolicy_step = 0.5\n", plugins)
    for sender in ("crash@sender.test", "wrong@sender.test", "slow@sender.test"):
        rcpt, _ = send(gateway, sender, "bob@example.org")
        assert rcpt.startswith(b"451 4.3.0"), (sender, rcpt)
    assert send(gateway, "fine@sender.test", "bob@example.org")[1].startswith(b"250")
    assert len(gateway.delivered()) == 1
    errors = "mailwarden_errors_total"
    assert metric(gateway, errors, {"where": "hook timeout:mailwarden_policy_step:slow"}) == 1
    assert metric(gateway, errors, {"where": "hook error:mailwarden_policy_step:broken"}) == 2


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PolicyVerdict.tempfail("x", code=550), "needs a 4xx code"),
        (lambda: PolicyVerdict.reject("x", status="4.7.1"), "needs a 5.x.x status"),
        (lambda: PolicyVerdict.tempfail("a\r\n250 ok"), "one line"),
    ],
)
def test_a_verdict_with_a_reply_of_the_wrong_class_is_refused(
    make: Callable[[], PolicyVerdict], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_milter_asks_a_plugin_step_at_the_end_of_the_message(tmp_path: Path) -> None:
    size = len(make_message())
    config = BASE + f'[senderpolicy]\ntempfail = ["held@sender.test"]\nmax_bytes = {size - 1}\n'
    policy = SenderPolicy()

    async def main() -> tuple[Answer, Answer]:
        gateway = _gateway({"senderpolicy": policy}, False, config, tmp_path / "home")
        async with gateway:
            server = MilterServer(GatewayMilter(gateway))
            listener = await server.start("127.0.0.1", 0)
            try:
                mta = await Mta.connect(listener.sockets[0].getsockname()[1])
                await mta.optneg()
                await mta.session_start()
                held = await mta.message(make_message(), sender="held@sender.test")
                big = await mta.message(make_message(), sender="big@sender.test")
                await mta.close()
            finally:
                listener.close()
                await listener.wait_closed()
        return held, big

    held, big = asyncio.run(main())
    # The MTA gives the client our reply: one recipient's tempfail holds the whole message.
    assert held.final == "y" and held.reply_text.startswith("450 4.7.26 Sender held@"), held
    assert big.final == "y" and big.reply_text.startswith("550 5.7.1 Messages over"), big
    assert ("message", None, size) in policy.asked


def test_a_plugin_cannot_take_the_name_of_a_built_in_step(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="'greylist' is loaded, but that is the name"):
        _gateway({"greylist": SenderPolicy()}, False, BASE + GREYLISTING, tmp_path)

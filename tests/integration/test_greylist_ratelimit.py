"""Greylisting and rate limits through the SMTP gateway, one node and two sharing a real Redis.

Each node is a real gateway (no plugins) listening on 127.0.0.1 in this process, with its own
home; clients are raw SMTP sessions from 127.0.0.2, outside ``trusted_networks``, or from
127.0.0.1 inside it. Redis is Debian's redis-server on a port of its own, killed by PID to
test an outage.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import GreylistingConfig, parse_config
from mailwarden.errors import ConfigError
from mailwarden.greylist import Greylist, client_network
from mailwarden.inventory import inventory
from mailwarden.plugins import build_plugin_manager
from mailwarden.sharedstate import LocalState, RedisState, StateBackend
from mailwarden.testing import GatewayRunner, _gateway
from tests.conftest import free_port, make_message
from tests.services.redis import Redis, running_redis
from tests.unit.test_smtp_limits import Client

pytestmark = pytest.mark.integration

OUTSIDE = "127.0.0.2"
BASE = """
[gateway]
local_domains = ["example.org"]
[smtp]
trusted_networks = ["127.0.0.1/32"]
"""
GREYLISTING = """
[greylisting]
enabled = true
delay = 1.0
retry_window = 60.0
"""


def redis_section(redis: Redis, extra: str = "") -> str:
    return f'[redis]\nenabled = true\nurl = "{redis.url}"\ntimeout = 0.3\n{extra}'


@pytest.fixture
def redis() -> Iterator[Redis]:
    with running_redis() as server:
        yield server


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[..., GatewayRunner]]:
    """Starts gateway nodes (each with its own home, with ``plugins`` beside none of the
    installed ones) and stops them all at the end."""
    runners: list[GatewayRunner] = []

    def make(config: str, plugins: Mapping[str, Any] | None = None) -> GatewayRunner:
        home = tmp_path / f"node{len(runners)}"
        runner = GatewayRunner(_gateway(plugins, False, config, home)).start()
        runners.append(runner)
        runner.start_smtp()
        return runner

    yield make
    for runner in runners:
        runner.stop()


def send(
    node: GatewayRunner | int, sender: str, recipient: str, source: str = OUTSIDE
) -> tuple[bytes, bytes]:
    """One transaction with a node (or a port): the RCPT reply, and the end-of-DATA reply
    (b"" when RCPT failed)."""
    port = node if isinstance(node, int) else node.smtp_port
    assert port is not None
    client = Client(port, source)
    try:
        assert client.cmd("EHLO client.example.net").startswith(b"250")
        assert client.cmd(f"MAIL FROM:<{sender}>").startswith(b"250")
        rcpt = client.cmd(f"RCPT TO:<{recipient}>")
        if not rcpt.startswith(b"250"):
            return rcpt, b""
        assert client.cmd("DATA").startswith(b"354")
        return rcpt, client.send(make_message() + b".\r\n")
    finally:
        client.close()


def metric(runner: GatewayRunner, name: str, labels: dict[str, str] | None = None) -> float:
    value = runner.gateway.stores.metrics.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


def test_greylisting_defers_the_first_attempt_and_accepts_the_retry_on_a_second_node(
    redis: Redis, node: Callable[[str], GatewayRunner]
) -> None:
    config = BASE + GREYLISTING + redis_section(redis)
    a, b = node(config), node(config)
    rcpt, _ = send(a, "alice@sender.test", "bob@example.org")
    assert rcpt.startswith(b"451 4.7.1 Greylisted"), rcpt
    # Too early, even on the other node: the triplet is known there through Redis.
    rcpt, _ = send(b, "alice@sender.test", "bob@example.org")
    assert rcpt.startswith(b"451 4.7.1"), rcpt
    time.sleep(1.2)
    rcpt, data = send(b, "alice@sender.test", "bob@example.org")
    assert rcpt.startswith(b"250") and data.startswith(b"250"), (rcpt, data)
    assert len(b.delivered()) == 1
    # Passed: the next message of the triplet goes through at once, on either node.
    assert send(a, "alice@sender.test", "bob@example.org")[1].startswith(b"250")
    # Another sender is a new triplet; a trusted client is not greylisted (skip_trusted).
    assert send(a, "carol@sender.test", "bob@example.org")[0].startswith(b"451 4.7.1")
    assert send(a, "dave@sender.test", "bob@example.org", "127.0.0.1")[1].startswith(b"250")
    assert metric(a, "mailwarden_policy_deferrals_total", {"policy": "greylist"}) == 2
    assert metric(a, "mailwarden_shared_state_redis") == 1


def test_a_sender_over_its_rate_limit_is_refused_on_both_nodes_sharing_redis(
    redis: Redis, node: Callable[[str], GatewayRunner]
) -> None:
    # Windows are aligned to the clock: a day's keeps a test's sends in one window.
    limits = "[ratelimit]\nenabled = true\n[ratelimit.sender]\nmessages = 3\nwindow = 86400\n"
    config = BASE + limits + redis_section(redis)
    a, b = node(config), node(config)
    for runner in (a, b, a):
        assert send(runner, "bulk@sender.test", "bob@example.org")[1].startswith(b"250")
    for runner in (b, a):
        _, data = send(runner, "bulk@sender.test", "bob@example.org")
        assert data.startswith(b"451 4.7.1 Rate limit exceeded for sender bulk@sender.test"), data
    # Other senders are not held back by bulk@'s counter.
    assert send(b, "other@sender.test", "bob@example.org")[1].startswith(b"250")
    assert len(a.delivered()) + len(b.delivered()) == 4


def test_bytes_per_client_are_limited_on_one_node_without_redis(
    node: Callable[[str], GatewayRunner],
) -> None:
    size = len(make_message())
    limits = f"[ratelimit]\nenabled = true\n[ratelimit.client]\nbytes = {size * 2 + 10}\n"
    a = node(BASE + limits)
    assert send(a, "x@sender.test", "bob@example.org")[1].startswith(b"250")
    assert send(a, "y@sender.test", "bob@example.org")[1].startswith(b"250")
    _, data = send(a, "z@sender.test", "bob@example.org")
    assert data.startswith(b"451 4.7.1 Rate limit exceeded for client 127.0.0.2"), data
    # The local store is declared, capped, in the data inventory.
    states = inventory(a.gateway.config, build_plugin_manager(entry_points=False))
    policy = next(s for s in states if s.store.name == "policy state")
    assert policy.store.max_entries == 1_000_000 and policy.records == 1


def test_redis_killed_mid_run_mail_keeps_flowing_with_local_state(
    redis: Redis, node: Callable[[str], GatewayRunner], caplog: pytest.LogCaptureFixture
) -> None:
    limits = "[ratelimit]\nenabled = true\n[ratelimit.sender]\nmessages = 2\nwindow = 86400\n"
    greylisting = GREYLISTING.replace("delay = 1.0", "delay = 0.5")
    config = BASE + greylisting + limits + redis_section(redis, "breaker_failures = 2\n")
    a = node(config)
    assert send(a, "one@sender.test", "bob@example.org", "127.0.0.1")[1].startswith(b"250")
    assert metric(a, "mailwarden_shared_state_redis") == 1
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="mailwarden.sharedstate"):
        # Trusted (not greylisted) mail goes on at once, counted locally.
        for sender in ("two@sender.test", "three@sender.test"):
            assert send(a, sender, "bob@example.org", "127.0.0.1")[1].startswith(b"250")
        # Greylisting works on the local state: deferred, then accepted after the delay.
        assert send(a, "four@sender.test", "bob@example.org")[0].startswith(b"451 4.7.1")
        time.sleep(0.7)
        assert send(a, "four@sender.test", "bob@example.org")[1].startswith(b"250")
        # Rate limits too: the local counter of two@ reaches its limit of 2.
        assert send(a, "two@sender.test", "bob@example.org", "127.0.0.1")[1].startswith(b"250")
        _, data = send(a, "two@sender.test", "bob@example.org", "127.0.0.1")
        assert data.startswith(b"451 4.7.1 Rate limit exceeded"), data
    assert len(a.delivered()) == 5
    assert metric(a, "mailwarden_shared_state_redis") == 0
    assert metric(a, "mailwarden_shared_state_fallbacks_total") >= 6
    assert "going on with this node's local state" in caplog.text


def test_the_local_store_keeps_its_cap(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "state", max_entries=10)

    async def fill() -> None:
        for i in range(25):
            await state.add([(f"k{i}", 1, 60.0 + i)])
        await state.put("expired", "x", 0.001)

    asyncio.run(fill())
    assert state.usage().count <= 10
    # The entries expiring last are the ones kept.
    assert asyncio.run(state.get("k24")) == "\x00\x00\x00\x00\x00\x00\x00\x01"
    assert asyncio.run(state.get("k0")) is None
    state.env.close()


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_a_passed_triplet_in_use_keeps_passing_past_its_first_expiry(
    backend: str, tmp_path: Path
) -> None:
    config = GreylistingConfig(enabled=True, delay=0.2, retry_window=30.0, pass_expiry=1.0)

    async def run(state: StateBackend) -> list[float | None]:
        greylist = Greylist(config, state)
        seen = [await greylist.check("a@sender.test", "bob@example.org", "192.0.2.1")]
        await asyncio.sleep(0.25)
        seen.append(await greylist.check("a@sender.test", "bob@example.org", "192.0.2.1"))
        # Used every 0.6 s, it outlives the 1 s it got when it passed.
        for _ in range(3):
            await asyncio.sleep(0.6)
            seen.append(await greylist.check("a@sender.test", "bob@example.org", "192.0.2.1"))
        await state.close()
        return seen

    if backend == "local":
        seen = asyncio.run(run(LocalState(tmp_path / "state", 100)))
    else:
        with running_redis() as server:
            remote = RedisState(server.url, "t:", 1.0)
            seen = asyncio.run(run(remote))
        # Two round trips for the first attempt and two for the retry that passes; then one
        # per message: the pass is read and renewed in one script.
        assert remote.round_trips == 2 + 2 + 3
    assert seen[0] is not None and seen[1:] == [None, None, None, None], seen


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('[greylisting]\nenabled = true\ndelay = "soon"\n', "greylisting.delay", 3),
        ("[ratelimit]\n[ratelimit.sender]\nmessages = -1\n", "ratelimit.sender.messages", 3),
        ("\n[redis]\ntimeout = 0\n", "redis.timeout", 3),
    ],
)
def test_bad_values_are_named_with_key_and_line(text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key and caught.value.line == line, caught.value


def test_a_retry_window_shorter_than_the_delay_is_refused() -> None:
    with pytest.raises(ConfigError, match="retry_window"):
        parse_config("[greylisting]\ndelay = 600\nretry_window = 300\n")


def test_the_milter_tempfails_a_new_triplet_at_end_of_message_and_passes_the_retry(
    tmp_path: Path, redis: Redis
) -> None:
    from mailwarden.ingress.milter import GatewayMilter, MilterServer
    from tests.milter_mta import Mta

    config = BASE + GREYLISTING + redis_section(redis)

    async def one(port: int, client: str) -> tuple[str, str]:
        mta = await Mta.connect(port)
        try:
            await mta.optneg()
            await mta.session_start(client=client)
            answer = await mta.message(make_message(), recipients=("bob@example.org",))
            return answer.final, answer.reply_text
        finally:
            await mta.close()

    async def main() -> None:
        gateways = [_gateway(None, False, config, tmp_path / f"m{i}") for i in range(2)]
        listeners = []
        try:
            ports = []
            for gateway in gateways:
                await gateway.start()
                listener = await MilterServer(GatewayMilter(gateway)).start("127.0.0.1", 0)
                listeners.append(listener)
                ports.append(listener.sockets[0].getsockname()[1])
            final, text = await one(ports[0], "192.0.2.7")
            assert (final, text[:9]) == ("y", "451 4.7.1"), (final, text)
            await asyncio.sleep(1.2)
            # The retry reaches the other node, which knows the triplet through Redis.
            assert (await one(ports[1], "192.0.2.8"))[0] != "y"
        finally:
            for listener in listeners:
                listener.close()
            for gateway in gateways:
                await gateway.stop()

    asyncio.run(main())


def test_serve_with_two_workers_shares_limits_through_redis_and_reports_its_outage(
    redis: Redis, tmp_path: Path
) -> None:
    from tests.integration.test_gateway_relay import Serve, wait_until
    from tests.integration.test_gateway_tls import _listeners
    from tests.integration.test_metrics_workers import _scrape

    metrics_port = free_port()
    server = Serve(
        tmp_path / "serve",
        free_port(),
        'workers = 2\ntrusted_networks = ["127.0.0.1/32"]\n'
        '[gateway]\nlocal_domains = ["example.org"]\n'
        f'[metrics]\nlisten = "127.0.0.1"\nport = {metrics_port}\n'
        "[ratelimit]\nenabled = true\n[ratelimit.sender]\nmessages = 2\nwindow = 86400\n"
        + redis_section(redis),
    ).start()
    try:
        wait_until(lambda: len(_listeners(server.port)) == 2, 30, "two workers listening")
        # One connection per message, whichever worker takes it: the counter is in Redis.
        replies = [send(server.port, "bulk@sender.test", "bob@example.org")[1] for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"451", b"451"], replies
        redis.kill()
        for i in range(3):
            _, data = send(server.port, f"after{i}@sender.test", "bob@example.org")
            assert data.startswith(b"250"), data
        found = _scrape(metrics_port)
        assert found["mailwarden_shared_state_redis"] == 0
        assert found["mailwarden_shared_state_fallbacks_total"] >= 3
        assert found['mailwarden_policy_deferrals_total{policy="ratelimit"}'] == 2
    finally:
        assert server.stop() == 0
    assert "going on with this node's local state" in server.log.read_text()


def test_an_authenticated_client_is_not_greylisted(tmp_path: Path) -> None:
    from mailwarden.web.auth import WebAuth
    from tests.unit.test_smtp_limits import _send

    home = tmp_path / "auth"
    auth = WebAuth(home / "web", session_seconds=60, custom_roles={}, login_attempts=5)
    auth.set_password("alice", "correct horse battery")
    runner = GatewayRunner(_gateway(None, False, BASE + GREYLISTING, home)).start()
    try:
        port = runner.start_smtp()
        assert send(port, "alice@example.org", "bob@example.org")[0].startswith(b"451 4.7.1")
        client = Client(port, OUTSIDE)
        client.cmd("EHLO client.example.net")
        client.starttls()
        client.cmd("EHLO client.example.net")
        login = base64.b64encode(b"\0alice\0correct horse battery").decode()
        assert client.cmd(f"AUTH PLAIN {login}").startswith(b"235")
        reply = _send(client, "alice@example.org", "carol@example.org", make_message())
        assert reply.startswith(b"250"), reply
        client.cmd("QUIT")
        client.close()
    finally:
        runner.stop()


def test_allow_lists_and_client_networks(tmp_path: Path) -> None:
    config = GreylistingConfig(
        enabled=True, allow_networks=["198.51.100.0/24"], allow_domains=[".example.net", "x.test"]
    )
    greylist = Greylist(config, LocalState(tmp_path / "state", 100))
    exempt = greylist.exempt
    assert exempt("a@other.test", "192.0.2.1", authenticated=True, trusted=False)
    assert exempt("a@other.test", "192.0.2.1", authenticated=False, trusted=True)
    assert exempt("a@other.test", "198.51.100.7", authenticated=False, trusted=False)
    assert exempt("a@other.test", "::ffff:198.51.100.7", authenticated=False, trusted=False)
    for sender in ("a@example.net", "a@mail.example.net", "a@X.test"):
        assert exempt(sender, "192.0.2.1", authenticated=False, trusted=False), sender
    for sender in ("a@notexample.net", "a@sub.x.test", "", "a@other.test"):
        assert not exempt(sender, "192.0.2.1", authenticated=False, trusted=False), sender
    strict = Greylist(GreylistingConfig(skip_trusted=False), greylist.state)
    assert not strict.exempt("a@other.test", "10.0.0.1", authenticated=False, trusted=True)
    assert client_network("192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3::1", 24, 64) == "2001:db8:1:2::/64"
    # One triplet for a sender's pool: another host of the /24 retries the same triplet.
    assert greylist.key("A@x.org", "b@y.org", "192.0.2.1") == greylist.key(
        "a@x.org", "B@y.org", "192.0.2.200"
    )
    assert greylist.key("a@x.org", "b@y.org", "192.0.2.1") != greylist.key(
        "a@x.org", "b@y.org", "192.0.3.1"
    )

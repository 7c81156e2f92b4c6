"""PROXY protocol (v2 and v1) on the SMTP listener, behind a real HAProxy.

Two gateway nodes (in this process, each with its own home) listen with ``[smtp]
proxy_protocol``; HAProxy on 127.0.0.1 balances over them with ``send-proxy-v2`` (or
``send-proxy``). Clients connect to HAProxy from 127.0.0.2: the nodes must see that address
(relay control, rate limits, the event and the Received line), not HAProxy's 127.0.0.1, which
is in ``trusted_networks`` and would be allowed to relay anywhere.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest

from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from mailwarden.testing import GatewayRunner
from tests.conftest import make_message
from tests.integration.test_greylist_ratelimit import node, redis_section
from tests.services.haproxy import running_haproxy
from tests.services.redis import running_redis
from tests.unit.test_smtp_limits import Client

pytestmark = pytest.mark.integration

__all__ = ["node"]  # the fixture, imported for use here

PROXIED = """
[gateway]
local_domains = ["example.org"]
[smtp]
trusted_networks = ["127.0.0.1/32"]
proxy_protocol = true
proxy_trusted = ["127.0.0.1/32"]
"""


def transaction(client: Client, recipient: str, sender: str = "alice@sender.test") -> bytes:
    """MAIL, RCPT and DATA on an open session: the RCPT reply if refused, else DATA's."""
    assert client.cmd(f"MAIL FROM:<{sender}>").startswith(b"250")
    rcpt = client.cmd(f"RCPT TO:<{recipient}>")
    if not rcpt.startswith(b"250"):
        assert client.cmd("RSET").startswith(b"250")
        return rcpt
    assert client.cmd("DATA").startswith(b"354")
    return client.send(make_message() + b".\r\n")


def through(port: int, recipient: str, sender: str = "alice@sender.test") -> bytes:
    client = Client(port, "127.0.0.2")
    try:
        assert client.greeting.startswith(b"220"), client.greeting
        assert client.cmd("EHLO client.example.net").startswith(b"250")
        return transaction(client, recipient, sender)
    finally:
        client.close()


@pytest.mark.parametrize("version", [2, 1])
def test_the_client_behind_haproxy_reaches_relay_control_and_the_event(
    node: Callable[[str], GatewayRunner], version: int
) -> None:
    a, b = node(PROXIED), node(PROXIED)
    assert a.smtp_port and b.smtp_port
    with running_haproxy([a.smtp_port, b.smtp_port], version=version) as proxy:
        for _ in range(2):
            # HAProxy itself (127.0.0.1) may relay; the client behind it (127.0.0.2) may not.
            reply = through(proxy.port, "someone@elsewhere.test")
            assert reply.startswith(b"554 5.7.1"), reply
        for _ in range(2):  # round robin: one on each node
            assert through(proxy.port, "bob@example.org").startswith(b"250")
    events = a.events() + b.events()
    assert [e.client_address for e in events] == ["127.0.0.2"] * 2, events
    delivered = a.delivered() + b.delivered()
    assert len(a.delivered()) == len(b.delivered()) == 1
    assert all(b"([127.0.0.2])" in m for m in delivered)


def test_a_sender_over_its_limit_through_the_balancer_is_refused_on_every_node(
    node: Callable[[str], GatewayRunner],
) -> None:
    with running_redis() as redis:
        limits = "[ratelimit]\nenabled = true\n[ratelimit.client]\nmessages = 2\nwindow = 86400\n"
        config = PROXIED + limits + redis_section(redis)
        a, b = node(config), node(config)
        assert a.smtp_port and b.smtp_port
        with running_haproxy([a.smtp_port, b.smtp_port]) as proxy:
            replies = [through(proxy.port, "bob@example.org") for _ in range(4)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"451", b"451"], replies
    assert b"Rate limit exceeded for client 127.0.0.2" in replies[2]
    assert len(a.delivered()) == len(b.delivered()) == 1


def test_a_proxy_header_survives_starttls(node: Callable[[str], GatewayRunner]) -> None:
    a = node(PROXIED)
    assert a.smtp_port
    # A v2 header by hand: PROXY, TCP over IPv4, from 198.51.100.9:40000.
    header = b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
    header += socket.inet_aton("198.51.100.9") + socket.inet_aton("127.0.0.1")
    header += struct.pack("!HH", 40000, 25)
    sock = socket.create_connection(("127.0.0.1", a.smtp_port), 10)
    sock.sendall(header)
    client = Client.__new__(Client)
    client.sock, client.file = sock, sock.makefile("rb")
    try:
        assert client.reply().startswith(b"220")
        assert client.cmd("EHLO client.example.net").startswith(b"250")
        client.starttls()
        assert client.cmd("EHLO client.example.net").startswith(b"250")
        reply = transaction(client, "someone@elsewhere.test")
        assert reply.startswith(b"554 5.7.1"), reply
        assert transaction(client, "bob@example.org").startswith(b"250")
    finally:
        client.close()
    assert [e.client_address for e in a.events()] == ["198.51.100.9"]


def test_a_proxy_header_from_outside_proxy_trusted_is_refused(
    node: Callable[[str], GatewayRunner],
) -> None:
    a = node(PROXIED)
    assert a.smtp_port
    sock = socket.create_connection(("127.0.0.1", a.smtp_port), 10, ("127.0.0.2", 0))
    sock.settimeout(10)
    sock.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 25\r\n")
    try:
        # Closed without a greeting: a client cannot claim a trusted address.
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert a.events() == []


def test_proxy_protocol_without_trusted_balancers_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match="proxy_trusted") as caught:
        parse_config("[gateway]\n[smtp]\nproxy_protocol = true\n")
    assert caught.value.line == 2


def test_a_balancer_outside_trusted_networks_gets_its_v2_header_past_the_bare_lf_check(
    node: Callable[[str], GatewayRunner],
) -> None:
    # The balancer is no relay of ours (not in trusted_networks), so bare LFs are refused on
    # its connections; the v2 signature's own LF must not count as one.
    config = PROXIED.replace('trusted_networks = ["127.0.0.1/32"]', "trusted_networks = []")
    a = node(config)
    assert a.smtp_port
    with running_haproxy([a.smtp_port], version=2) as proxy:
        assert through(proxy.port, "bob@example.org").startswith(b"250")
        # A bare LF after the greeting is still refused.
        client = Client(proxy.port, "127.0.0.2")
        try:
            assert client.greeting.startswith(b"220")
            client.sock.sendall(b"EHLO client.example.net\n")
            assert client.reply().startswith(b"550 5.5.2")
        finally:
            client.close()
    assert len(a.delivered()) == 1

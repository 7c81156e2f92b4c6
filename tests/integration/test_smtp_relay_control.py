"""Relay control end to end: ``mailwarden serve`` in front of a real Postfix, clients on two
addresses.

Two network namespaces of the test's own, joined by a veth pair on 192.0.2.0/30 (TEST-NET-1,
never routed): the server side (mailwarden on 0.0.0.0, Postfix as its next hop on 127.0.0.1,
Postfix's smtp-sink behind it) and the client side at 192.0.2.2. Nothing in them reaches the
host's network. A client outside ``trusted_networks`` may send to ``[gateway] local_domains``
only, or anywhere after AUTH; a client on the server's loopback (trusted) anywhere; what is
accepted is what Postfix passes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailwarden.web.auth import WebAuth
from tests.conftest import free_port, make_message, need
from tests.integration.test_gateway_relay import Serve, Sink, relay_config, wait_until
from tests.services.postfix import Postfix

pytestmark = pytest.mark.integration

_CLONE_NEWNET = 0x40000000
SERVER_ADDRESS, CLIENT_ADDRESS, NETWORK = "192.0.2.1", "192.0.2.2", "192.0.2.0/30"
PASSWORD = "correct horse battery"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run this thread (and the processes it starts) in ``namespace``'s network."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        yield
    finally:
        if libc.setns(home, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the host namespace")
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def namespaces() -> Iterator[tuple[str, str]]:
    """A server and a client namespace joined by a veth pair on 192.0.2.0/30."""
    need(shutil.which("ip") is not None, "iproute2's ip is not installed")
    need(os.geteuid() == 0, "network namespaces need root")
    tag = str(os.getpid())
    server, client = f"mwrs{tag}", f"mwrc{tag}"
    made = _ip("netns", "add", server)
    need(made.returncode == 0, f"ip netns add is not possible here: {made.stderr.strip()}")
    try:
        assert _ip("netns", "add", client).returncode == 0
        steps = [
            ("link", "add", f"vs{tag}", "netns", server, "type", "veth", "peer", "name",
             f"vc{tag}", "netns", client),
            ("-n", server, "addr", "add", f"{SERVER_ADDRESS}/30", "dev", f"vs{tag}"),
            ("-n", client, "addr", "add", f"{CLIENT_ADDRESS}/30", "dev", f"vc{tag}"),
            ("-n", server, "link", "set", f"vs{tag}", "up"),
            ("-n", client, "link", "set", f"vc{tag}", "up"),
            ("-n", server, "link", "set", "lo", "up"),
            ("-n", client, "link", "set", "lo", "up"),
        ]  # fmt: skip
        for step in steps:
            result = _ip(*step)
            need(result.returncode == 0, f"ip {' '.join(step)}: {result.stderr.strip()}")
        yield server, client
    finally:
        _ip("netns", "del", client)
        _ip("netns", "del", server)


@dataclass
class Rig:
    server_ns: str
    client_ns: str
    port: int
    sink: Sink
    postfix: Postfix

    def client(self, trusted: bool) -> smtplib.SMTP:
        """A session from the server's loopback (trusted) or from 192.0.2.2 (untrusted)."""
        if trusted:
            with inside(self.server_ns):
                return smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        with inside(self.client_ns):
            return smtplib.SMTP(
                SERVER_ADDRESS, self.port, timeout=30, source_address=(CLIENT_ADDRESS, 0)
            )

    def arrived(self, subject: str) -> bytes:
        found: list[bytes] = []

        def check() -> bool:
            found[:] = [m for m in self.sink.messages() if f"Subject: {subject}".encode() in m]
            return bool(found)

        wait_until(check, 60, f"{subject!r} through Postfix")
        return found[0]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("relay-control")
    with namespaces() as (server_ns, client_ns), _netguard_allows(server_ns, client_ns):
        sink = Sink(work / "sink", free_port())
        postfix = Postfix(sink.port)
        upstream, port = free_port(), free_port()
        postfix.add_smtpd(upstream, "upstream")
        serve = Serve(
            work / "home",
            port,
            'listen = "0.0.0.0"\n'
            + relay_config(upstream, '[gateway]\nlocal_domains = ["example.org"]\n'),
        )
        WebAuth(
            serve.home / "web", session_seconds=60, custom_roles={}, login_attempts=5
        ).set_password("alice", PASSWORD, roles=["Operator"])
        try:
            # Started from inside the server namespace, so they live there; the test itself
            # goes back to the host's and enters a namespace only to open a connection.
            with inside(server_ns):
                sink.start()
                postfix.start([upstream])
                serve.start()
            yield Rig(server_ns, client_ns, port, sink, postfix)
        finally:
            serve.stop()
            postfix.stop()
            sink.stop(remove=True)


@contextlib.contextmanager
def _netguard_allows(*names: str, nets: str = NETWORK) -> Iterator[None]:
    # The test's veth addresses exist only inside its namespaces (tests/netguard).
    allowed = {
        "MAILWARDEN_NETGUARD_NETNS": ",".join(names),
        "MAILWARDEN_NETGUARD_NETNS_NETS": nets,
    }
    previous = {key: os.environ.get(key) for key in allowed}
    os.environ.update(allowed)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _send(client: smtplib.SMTP, sender: str, recipient: str, subject: str) -> None:
    message = make_message(subject=subject, sender=sender, recipient=recipient)
    assert client.sendmail(sender, [recipient], message) == {}


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_untrusted_client_is_refused_relaying_at_rcpt(rig: Rig) -> None:
    with rig.client(trusted=False) as client:
        client.ehlo("outside.example.net")
        assert client.mail("spammer@outside.example.net")[0] == 250
        code, text = client.rcpt("victim@far-away.test")
        assert (code, text[:5]) == (554, b"5.7.1"), text
        assert b"Relay access denied" in text
        # A transaction with no accepted recipient: DATA is refused, nothing is queued.
        assert client.docmd("DATA")[0] == 503
    assert not any(b"victim@far-away.test" in m for m in rig.sink.messages())


def test_local_domain_is_accepted_from_anyone(rig: Rig) -> None:
    with rig.client(trusted=False) as client:
        _send(client, "friend@outside.example.net", "bob@example.org", "inbound")
    message = rig.arrived("inbound")
    assert f"([{CLIENT_ADDRESS}])".encode() in message


def test_trusted_network_may_relay(rig: Rig) -> None:
    with rig.client(trusted=True) as client:
        _send(client, "alice@example.org", "friend@far-away.test", "from-inside")
    assert b"([127.0.0.1])" in rig.arrived("from-inside")


def test_untrusted_client_may_relay_after_auth_over_tls(rig: Rig) -> None:
    with rig.client(trusted=False) as client:
        client.ehlo("laptop.example.net")
        assert not client.has_extn("auth")  # never offered in clear text
        client.starttls(context=_unverified())
        client.ehlo("laptop.example.net")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "not the password")
        client.login("alice", PASSWORD)
        _send(client, "alice@example.org", "friend@far-away.test", "submitted")
    message = rig.arrived("submitted")
    assert b"with ESMTPSA" in message
    assert f"([{CLIENT_ADDRESS}])".encode() in message


def test_auth_against_the_directory_by_ldap_bind(tmp_path: Path) -> None:
    from mailwarden.testing import GatewayRunner, _gateway
    from tests.services.slapd import BASE_DN, directory_section, running_slapd

    with running_slapd() as slapd:
        slapd.ldapadd(
            f"dn: cn=Bob Jones,ou=Users,{BASE_DN}\nchangetype: modify\n"
            f"replace: userPassword\nuserPassword: {PASSWORD}\n"
        )
        config = (
            '[smtp]\ntrusted_networks = ["127.0.0.1/32"]\n'
            + '[gateway]\nlocal_domains = ["example.org"]\n'
            + directory_section(slapd)
        )
        runner = GatewayRunner(_gateway(None, False, config, tmp_path / "home")).start()
        try:
            port = runner.start_smtp()
            with smtplib.SMTP(
                "127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)
            ) as client:
                client.starttls(context=_unverified())
                client.ehlo("laptop.example.net")
                assert client.has_extn("auth")  # no local accounts: the directory checks
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    client.login("bob@example.test", "not the password")
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    client.login("nobody@example.test", PASSWORD)
                client.login("bob@example.test", PASSWORD)
                refused = client.sendmail(
                    "bob@example.test",
                    ["friend@far-away.test"],
                    make_message(subject="by-ldap", sender="bob@example.test"),
                )
                assert refused == {}
            [message] = runner.delivered()
            assert b"with ESMTPSA" in message
        finally:
            runner.stop()


def test_netguard_allows_the_test_network_only_inside_the_test_namespaces(rig: Rig) -> None:
    from tests.netguard.sitecustomize import _loopback

    target = (SERVER_ADDRESS, rig.port)
    assert not _loopback(target)  # from the host's namespace: still loopback only
    with inside(rig.client_ns):
        assert _loopback(target)
        assert not _loopback(("198.51.100.1", 25))  # any other address stays refused

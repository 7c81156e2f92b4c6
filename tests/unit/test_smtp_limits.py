"""The SMTP listener against hostile clients: relay control, address syntax, bare LF (SMTP
smuggling), CR in HELO, mail loops, STARTTLS twice, AUTH, the timeout from the last byte, the
junk-command cap and one address crowding out the others.

A real gateway (no plugins) listens on 127.0.0.1; clients are raw sockets bound to other
loopback addresses (127.0.0.2, ...) where a test needs an address outside
``trusted_networks``.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.testing import GatewayRunner, _gateway
from mailwarden.web.auth import WebAuth
from tests.conftest import make_message

# Keys main already had, so that a test fails there for its behaviour, not for the config.
LOCAL_CONFIG = """
[gateway]
local_domains = ["example.org"]
[smtp]
"""
RELAY_CONFIG = LOCAL_CONFIG + 'trusted_networks = ["127.0.0.1/32"]\n'


class Client:
    """A line-oriented SMTP client on a raw socket (so it can send what smtplib will not)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout, (source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """One (possibly multi-line) reply; b"" when the server closed the connection."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                break
            lines.append(line)
            if line[3:4] != b"-":
                break
        return b"".join(lines)

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def cmd(self, line: str) -> bytes:
        return self.send(line.encode() + b"\r\n")

    def starttls(self) -> None:
        assert self.cmd("STARTTLS").startswith(b"220")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname="mailwarden.localhost")
        self.file = self.sock.makefile("rb")

    def pending(self, wait: float = 1.0) -> bytes:
        """A reply the server sent unasked within ``wait`` seconds, else b""."""
        self.sock.settimeout(wait)
        try:
            return self.reply()
        except TimeoutError:
            return b""

    def closed(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    runners: list[GatewayRunner] = []

    def make(
        config: str = LOCAL_CONFIG,
        accounts: dict[str, str] | None = None,
        plugins: list[object] | None = None,
    ) -> GatewayRunner:
        home = tmp_path / f"home{len(runners)}"
        if accounts:
            auth = WebAuth(home / "web", session_seconds=60, custom_roles={}, login_attempts=5)
            for name, password in accounts.items():
                auth.set_password(name, password)
        runner = GatewayRunner(_gateway(plugins, False, config, home)).start()
        runners.append(runner)
        runner.start_smtp()
        return runner

    yield make
    for runner in runners:
        runner.stop()


def _session(runner: GatewayRunner, source: str = "127.0.0.1") -> Client:
    assert runner.smtp_port is not None
    client = Client(runner.smtp_port, source)
    assert client.cmd("EHLO client.example.net").startswith(b"250")
    return client


def _send(client: Client, sender: str, recipient: str, message: bytes) -> bytes:
    assert client.cmd(f"MAIL FROM:<{sender}>").startswith(b"250")
    reply = client.cmd(f"RCPT TO:<{recipient}>")
    if not reply.startswith(b"250"):
        return reply
    assert client.cmd("DATA").startswith(b"354")
    return client.send(message + b".\r\n")


# -- relay control ---------------------------------------------------------------------------


def test_untrusted_client_cannot_relay_but_reaches_local_domains(start) -> None:  # type: ignore[no-untyped-def]
    runner = start(RELAY_CONFIG)
    outside = _session(runner, "127.0.0.2")
    assert outside.cmd("MAIL FROM:<someone@elsewhere.test>").startswith(b"250")
    refused = outside.cmd("RCPT TO:<victim@far-away.test>")
    assert refused.startswith(b"554 5.7.1"), refused
    assert b"Relay access denied" in refused
    assert outside.cmd("RCPT TO:<bob@example.org>").startswith(b"250")
    assert outside.cmd("RCPT TO:<postmaster>").startswith(b"250")
    outside.close()
    inside = _session(runner, "127.0.0.1")
    reply = _send(inside, "alice@example.org", "friend@far-away.test", make_message())
    assert reply.startswith(b"250"), reply
    inside.close()
    assert len(runner.delivered()) == 1


def test_without_local_domains_an_untrusted_client_can_send_nothing(start) -> None:  # type: ignore[no-untyped-def]
    runner = start('[smtp]\ntrusted_networks = ["127.0.0.1/32"]\n')
    client = _session(runner, "127.0.0.3")
    assert client.cmd("MAIL FROM:<a@b.test>").startswith(b"250")
    assert client.cmd("RCPT TO:<x@example.org>").startswith(b"554 5.7.1")


# -- address syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("MAIL FROM:not-an-address", b"501 5.1.7"),
        ("MAIL FROM:<not an address>", b"501 5.1.7"),
        ("MAIL FROM:<a@b@c.test>", b"501 5.1.7"),
        ("MAIL FROM:<a..b@c.test>", b"501 5.1.7"),
        ("MAIL FROM:<>", b"250"),
        ('MAIL FROM:<"john doe"@example.org>', b"250"),
        ("MAIL FROM:<user@[192.0.2.1]>", b"250"),
    ],
)
def test_mail_from_must_be_a_mailbox_or_null(start, command: str, expected: bytes) -> None:  # type: ignore[no-untyped-def]
    client = _session(start())
    reply = client.cmd(command)
    assert reply.startswith(expected), reply


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("<not an address>", b"501 5.1.3"),
        ("<nobody>", b"501 5.1.3"),
        ("<>", b"501 5.1.3"),
        ("<x@-bad-.example.org>", b"501 5.1.3"),
        ("<bob@example.org>", b"250"),
        ("<Postmaster>", b"250"),
    ],
)
def test_rcpt_to_must_be_a_mailbox(start, argument: str, expected: bytes) -> None:  # type: ignore[no-untyped-def]
    client = _session(start())
    assert client.cmd("MAIL FROM:<a@example.org>").startswith(b"250")
    reply = client.cmd(f"RCPT TO:{argument}")
    assert reply.startswith(expected), reply


# -- SMTP smuggling, CR in HELO, loops ------------------------------------------------------


def test_bare_lf_in_a_command_ends_the_session_with_550(start) -> None:  # type: ignore[no-untyped-def]
    client = Client(start(RELAY_CONFIG).smtp_port, "127.0.0.2")
    reply = client.send(b"EHLO client.example.net\n")
    assert reply.startswith(b"550 5.5.2"), reply
    assert b"bare <LF>" in reply
    assert client.closed()


SMUGGLED = [b"\n.\n", b"\r\n.\n", b"\n.\r\n"]


def _smuggle(client: Client, smuggled: bytes) -> bytes:
    assert client.cmd("MAIL FROM:<alice@example.org>").startswith(b"250")
    assert client.cmd("RCPT TO:<bob@example.org>").startswith(b"250")
    assert client.cmd("DATA").startswith(b"354")
    payload = (
        b"Subject: first\r\n\r\nhello"
        + smuggled
        + b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\npay me\r\n.\r\n"
    )
    return client.send(payload)


@pytest.mark.parametrize("smuggled", SMUGGLED, ids=["LF.LF", "CRLF.LF", "LF.CRLF"])
def test_smuggled_end_of_data_delivers_nothing(start, smuggled: bytes) -> None:  # type: ignore[no-untyped-def]
    runner = start(RELAY_CONFIG)
    client = _session(runner, "127.0.0.2")
    reply = _smuggle(client, smuggled)
    assert reply.startswith(b"550 5.5.2"), reply
    assert client.closed()
    assert runner.delivered() == []


@pytest.mark.parametrize("smuggled", SMUGGLED, ids=["LF.LF", "CRLF.LF", "LF.CRLF"])
def test_a_trusted_client_may_send_bare_lf_but_never_splits_a_message(
    start, smuggled: bytes
) -> None:  # type: ignore[no-untyped-def]
    # As Postfix's smtpd_forbid_bare_newline_exclusions = $mynetworks.
    runner = start(RELAY_CONFIG)
    client = _session(runner, "127.0.0.1")
    reply = _smuggle(client, smuggled)
    assert reply.startswith(b"250"), reply
    [message] = runner.delivered()
    assert b"Subject: smuggled" in message  # one message, the "second" is its body


@pytest.mark.parametrize("command", ["EHLO", "HELO"])
def test_cr_in_helo_is_refused_and_never_reaches_received(start, command: str) -> None:  # type: ignore[no-untyped-def]
    runner = start()
    client = Client(runner.smtp_port)
    reply = client.send(f"{command} evil.test\rX-Injected: yes\r\n".encode())
    assert reply.startswith(b"501"), reply
    assert client.cmd(f"{command} good.example.net").startswith(b"250")
    assert _send(client, "a@example.org", "b@example.org", make_message()).startswith(b"250")
    [message] = runner.delivered()
    assert b"X-Injected" not in message
    assert b"Received: from good.example.net" in message


def test_control_characters_in_an_auth_name_are_refused(start) -> None:  # type: ignore[no-untyped-def]
    runner = start(LOCAL_CONFIG, accounts={"alice": "correct horse battery"})
    client = _session(runner)
    client.starttls()
    assert client.cmd("EHLO client.example.net").startswith(b"250")
    blob = base64.b64encode(b"\0alice\r\nX-Injected: yes\0correct horse battery").decode()
    assert client.cmd(f"AUTH PLAIN {blob}").startswith(b"501")


@pytest.mark.parametrize(("hops", "expected"), [(49, b"250"), (50, b"554 5.4.6")])
def test_a_message_with_too_many_received_lines_is_a_loop(
    start, hops: int, expected: bytes
) -> None:  # type: ignore[no-untyped-def]
    runner = start()
    trace = b"".join(
        b"Received: from hop%d.example by hop%d.example; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        % (i, i + 1)
        for i in range(hops)
    )
    client = _session(runner)
    reply = _send(client, "a@example.org", "b@example.org", trace + make_message())
    assert reply.startswith(expected), reply
    assert len(runner.delivered()) == (1 if expected == b"250" else 0)


# -- TLS and AUTH ----------------------------------------------------------------------------


def test_starttls_inside_tls_is_refused(start) -> None:  # type: ignore[no-untyped-def]
    client = _session(start())
    client.starttls()
    assert client.cmd("EHLO client.example.net").startswith(b"250")
    assert client.cmd("STARTTLS").startswith(b"503 5.5.1")
    assert client.cmd("NOOP").startswith(b"250")


def test_auth_is_not_offered_when_nothing_can_check_it(start) -> None:  # type: ignore[no-untyped-def]
    client = _session(start())
    client.starttls()
    features = client.cmd("EHLO client.example.net")
    assert b"AUTH" not in features
    assert client.cmd("AUTH PLAIN " + base64.b64encode(b"\0a\0b").decode()).startswith(b"503")


def test_auth_over_tls_against_local_accounts_allows_relaying(start) -> None:  # type: ignore[no-untyped-def]
    runner = start(RELAY_CONFIG, accounts={"alice": "correct horse battery"})
    client = _session(runner, "127.0.0.2")
    assert b"AUTH" not in client.cmd("EHLO client.example.net")  # never in clear text
    client.starttls()
    features = client.cmd("EHLO client.example.net")
    assert b"250-AUTH PLAIN LOGIN" in features
    wrong = base64.b64encode(b"\0alice\0wrong password").decode()
    assert client.cmd(f"AUTH PLAIN {wrong}").startswith(b"535")
    assert client.cmd("MAIL FROM:<alice@example.org>").startswith(b"250")
    assert client.cmd("RCPT TO:<friend@far-away.test>").startswith(b"554 5.7.1")
    assert client.cmd("RSET").startswith(b"250")
    assert client.cmd("AUTH LOGIN").startswith(b"334")
    assert client.cmd(base64.b64encode(b"alice").decode()).startswith(b"334")
    assert client.cmd(base64.b64encode(b"correct horse battery").decode()).startswith(b"235")
    reply = _send(client, "alice@example.org", "friend@far-away.test", make_message())
    assert reply.startswith(b"250"), reply
    [message] = runner.delivered()
    assert b"with ESMTPSA" in message


# -- time and connection limits --------------------------------------------------------------


def test_slow_but_live_data_completes_past_the_timeout(start) -> None:  # type: ignore[no-untyped-def]
    runner = start(LOCAL_CONFIG + "timeout = 1.0\n")
    client = _session(runner)
    assert client.cmd("MAIL FROM:<a@example.org>").startswith(b"250")
    assert client.cmd("RCPT TO:<b@example.org>").startswith(b"250")
    assert client.cmd("DATA").startswith(b"354")
    message = make_message()
    chunks = [
        message[i : i + len(message) // 8 + 1]
        for i in range(0, len(message), len(message) // 8 + 1)
    ]
    for chunk in chunks:  # about 3 s in all, never more than 0.4 s without a byte
        client.sock.sendall(chunk)
        time.sleep(0.4)
    reply = client.send(b".\r\n")
    assert reply.startswith(b"250"), reply
    assert len(runner.delivered()) == 1


def test_a_scan_longer_than_the_timeout_is_not_the_clients_silence(start) -> None:  # type: ignore[no-untyped-def]
    from tests.thirdparty.detectors import SlowSyncDetector  # 3 s per message

    runner = start(LOCAL_CONFIG + "timeout = 1.0\n", plugins=[SlowSyncDetector])
    client = _session(runner)
    reply = _send(client, "a@example.org", "b@example.org", make_message())
    assert reply.startswith(b"250"), reply
    assert client.cmd("NOOP").startswith(b"250")


def test_an_idle_client_is_closed_with_421(start) -> None:  # type: ignore[no-untyped-def]
    client = _session(start(LOCAL_CONFIG + "timeout = 1.0\n"))
    reply = client.reply()  # nothing sent: the server speaks first after the timeout
    assert reply.startswith(b"421 4.4.2"), reply
    assert client.closed()


def test_noop_does_not_keep_a_session_forever(start) -> None:  # type: ignore[no-untyped-def]
    client = _session(start())
    for _ in range(100):  # Postfix's smtpd_junk_command_limit, our default
        assert client.cmd("NOOP").startswith(b"250")
    assert client.cmd("NOOP").startswith(b"421")
    assert client.closed()


def test_idle_connections_of_a_few_addresses_do_not_lock_out_others(start) -> None:  # type: ignore[no-untyped-def]
    runner = start(LOCAL_CONFIG + "max_connections = 4\nmax_connections_per_ip = 2\n")
    held = [Client(runner.smtp_port, f"127.0.0.{n}") for n in (2, 2, 3, 3)]
    try:
        assert all(c.greeting.startswith(b"220") for c in held)
        # The per-address cap still holds.
        assert Client(runner.smtp_port, "127.0.0.2").greeting.startswith(b"421")
        newcomer = Client(runner.smtp_port, "127.0.0.4")
        assert newcomer.greeting.startswith(b"220"), newcomer.greeting
        assert newcomer.cmd("EHLO client.example.net").startswith(b"250")
        # One of the idle connections made room, told why.
        evicted = [c for c in held if c.pending().startswith(b"421")]
        assert len(evicted) == 1
    finally:
        for c in held:
            c.close()


# -- config check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("smtp", "gateway", "warned"),
    [
        ('listen = "127.0.0.1"\ntrusted_networks = ["0.0.0.0/0"]', "", []),
        ('listen = "0.0.0.0"\ntrusted_networks = ["0.0.0.0/0"]', 'local_domains = ["a.test"]',
         ["open relay"]),
        ('listen = "0.0.0.0"\ntrusted_networks = ["8.8.0.0/16"]', 'local_domains = ["a.test"]',
         ["not a private network"]),
        ('listen = "0.0.0.0"', "", ["local_domains is empty"]),
        ('listen = "0.0.0.0"', 'local_domains = ["a.test"]', []),
    ],
)  # fmt: skip
def test_config_check_warns_when_an_exposed_listener_could_relay(
    tmp_path: Path, smtp: str, gateway: str, warned: list[str]
) -> None:
    from click.testing import CliRunner

    from mailwarden.cli import cli

    path = tmp_path / "mailwarden.toml"
    path.write_text(f"[gateway]\n{gateway}\n[smtp]\n{smtp}\n")
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(warned), result.stderr
    for warning, expected in zip(warnings, warned, strict=True):
        assert expected in warning


def test_auth_works_on_the_implicit_tls_port(tmp_path: Path) -> None:
    import smtplib

    from mailwarden.ingress.smtp import start_smtp_servers
    from tests.conftest import free_port

    home = tmp_path / "home"
    WebAuth(home / "web", session_seconds=60, custom_roles={}, login_attempts=5).set_password(
        "alice", "correct horse battery"
    )
    tls_port = free_port()
    config = f"{RELAY_CONFIG}port = {free_port()}\ntls_port = {tls_port}\n"
    runner = GatewayRunner(_gateway(None, False, config, home)).start()
    try:
        runner._servers += runner._call(start_smtp_servers(runner.gateway))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP_SSL(
            "127.0.0.1", tls_port, context=context, timeout=30, source_address=("127.0.0.2", 0)
        ) as client:
            client.ehlo("laptop.example.net")
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
            assert client.login("alice", "correct horse battery")[0] == 235
            assert client.sendmail("alice@example.org", ["x@far-away.test"], make_message()) == {}
    finally:
        runner.stop()


def test_failed_auth_is_counted_per_address_across_sessions(start, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mailwarden.ingress import smtp

    monkeypatch.setattr(smtp, "_AUTH_FAILURES_PER_ADDRESS", 2)
    runner = start(RELAY_CONFIG, accounts={"alice": "correct horse battery"})
    right = "AUTH PLAIN " + base64.b64encode(b"\0alice\0correct horse battery").decode()
    wrong = "AUTH PLAIN " + base64.b64encode(b"\0alice\0guess").decode()

    def session(source: str) -> Client:
        client = _session(runner, source)
        client.starttls()
        assert client.cmd("EHLO client.example.net").startswith(b"250")
        return client

    for _ in range(2):  # two sessions, one guess each
        assert session("127.0.0.2").cmd(wrong).startswith(b"535")
    # From there even the right password is no longer checked; elsewhere it works.
    assert session("127.0.0.2").cmd(right).startswith(b"454 4.7.0")
    assert session("127.0.0.3").cmd(right).startswith(b"235")

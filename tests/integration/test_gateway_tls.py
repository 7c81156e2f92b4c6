"""The SMTP gateway's listener: STARTTLS, implicit TLS, ESMTP extensions, client limits, and
worker processes sharing the port."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port, make_message
from tests.integration.test_gateway_relay import Serve, serve_factory, wait_until

pytestmark = pytest.mark.integration

__all__ = ["serve_factory"]  # the fixture, imported for use here


def _unverified() -> ssl.SSLContext:
    # The gateway's generated certificate is self-signed, as with opportunistic TLS between MTAs.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _delivered(server: Serve) -> list[bytes]:
    new = server.home / "maildir" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def test_starttls_and_implicit_tls_deliver_and_the_generated_key_is_private(
    serve_factory: Callable[..., Serve],
) -> None:
    tls_port = free_port()
    server = serve_factory(f"tls_port = {tls_port}\n").start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example.org")
        features = set(client.esmtp_features)
        assert {"starttls", "size", "8bitmime", "smtputf8", "pipelining"} <= features
        assert client.esmtp_features["size"] == str(50 * 1024 * 1024)
        client.starttls(context=_unverified())
        client.ehlo("client.example.org")
        assert "starttls" not in client.esmtp_features
        client.sendmail(
            "alice@example.org", ["bob@example.net"], make_message(subject="via starttls")
        )
    wait_until(lambda: port_ready(tls_port), 10, "the implicit TLS port")
    with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=30, context=_unverified()) as client:
        client.ehlo("client.example.org")
        assert "starttls" not in client.esmtp_features
        client.sendmail("alice@example.org", ["bob@example.net"], make_message(subject="via smtps"))
    messages = _delivered(server)
    assert len(messages) == 2
    assert all(b"with ESMTPS" in m for m in messages)
    key = server.home / "tls" / "key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in (server.log.read_text())


def port_ready(port: int) -> bool:
    """True when 127.0.0.1:``port`` accepts connections."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_required_starttls_refuses_mail_in_clear(serve_factory: Callable[..., Serve]) -> None:
    server = serve_factory("require_starttls = true\n").start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.example.org")
        code, _ = client.mail("alice@example.org")
        assert code == 530
    assert _delivered(server) == []


def test_pipelined_transaction_and_8bit_utf8_mail(serve_factory: Callable[..., Serve]) -> None:
    server = serve_factory("").start()
    body = "Subject: grüße\r\nMessage-ID: <p@example.org>\r\n\r\nÄpfel und Birnen\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO client.example.org\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        # One write for the whole envelope, as a PIPELINING client sends it (RFC 2920).
        sock.sendall(
            "MAIL FROM:<jörg@example.org> BODY=8BITMIME SMTPUTF8\r\n"
            "RCPT TO:<bob@example.net>\r\nDATA\r\n".encode()
        )
        replies = [reader.readline() for _ in range(3)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"354"], replies
        sock.sendall(body + b".\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"QUIT\r\n")
    [message] = _delivered(server)
    assert "Äpfel und Birnen".encode() in message


def test_connections_over_the_per_client_limit_get_421(
    serve_factory: Callable[..., Serve],
) -> None:
    server = serve_factory("max_connections_per_ip = 2\n").start()
    time.sleep(0.3)  # let the server see the start-up probe's connection close
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
            assert extra.makefile("rb").readline().startswith(b"421 4.7.0")
    finally:
        for sock in held:
            sock.close()
    # Once the others left, the client is served again.
    time.sleep(0.2)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.noop()[0] == 250


def _listeners(port: int) -> set[int]:
    out = subprocess.run(
        ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_two_workers_share_the_port_and_a_killed_one_is_replaced(
    serve_factory: Callable[..., Serve],
) -> None:
    server = serve_factory("workers = 2\n").start()
    assert server.process is not None
    deadline = time.monotonic() + 30
    while len(workers := _listeners(server.port)) != 2:
        assert time.monotonic() < deadline, f"listeners {workers}: {server.log.read_text()}"
        time.sleep(0.1)
    assert server.process.pid not in workers
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel had already queued on the victim's socket are reset with it (as
    # with any crashed MX, clients retry); once it is gone the survivor takes every connection
    # while the parent starts a replacement.
    wait_until(lambda: victim not in _listeners(server.port), 10, "the victim's socket to close")
    for i in range(5):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], make_message(subject=f"w{i}"))
    wait_until(lambda: len(_listeners(server.port) - {victim}) == 2, 20, "a replacement worker")
    assert len(_delivered(server)) == 5
    assert server.stop() == 0
    for pid in _listeners(server.port) | workers - {victim}:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )

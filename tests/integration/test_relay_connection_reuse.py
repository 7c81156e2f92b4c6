"""Connections to the next hop are reused across messages, and never where that could hurt.

The next hop is aiosmtpd on 127.0.0.1 recording every TCP connection and the commands on it;
most tests drive ``mailwarden serve`` in relay mode with ``concurrency = 1``, so messages go
out one after the other and the number of connections is exact.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from mailwarden.delivery.relay import send
from mailwarden.delivery.scache import ConnectionCache
from mailwarden.tls import client_context, ensure_certificate
from tests.conftest import free_port, make_message
from tests.integration.test_gateway_relay import Serve, serve_factory, wait_until

__all__ = ["serve_factory"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

_Method = Callable[[str], Coroutine[Any, Any, None]]


class Hop:
    """An aiosmtpd next hop that records each connection's commands and what it received.

    ``refuse_rset``: RSET is answered 451 (a next hop that wants no reuse); ``drop_data_to``:
    the first DATA for that recipient gets no answer, the connection is closed instead;
    ``slow_mail_from``: the first MAIL from that sender is answered after ``slow_seconds``.
    """

    def __init__(
        self,
        *,
        refuse_rset: bool = False,
        drop_data_to: str = "",
        slow_mail_from: str = "",
        slow_seconds: float = 0.0,
        rcpt_reply: dict[str, str] | None = None,
        pipelining: bool = False,
    ) -> None:
        self.connections: list[list[str]] = []
        self.received: list[tuple[int, bytes, bool]] = []  # (connection, data, over TLS)
        self.refuse_rset = refuse_rset
        self.drop_data_to = drop_data_to
        self.slow_mail_from = slow_mail_from
        self.slow_seconds = slow_seconds
        self.rcpt_reply = rcpt_reply or {}
        self.pipelining = pipelining
        # Commands that arrived while another command's line was still unread (pipelined).
        self.pipelined: list[str] = []

    def has_received(self, count: int) -> Callable[[], bool]:
        """A check for ``wait_until``: ``count`` messages have arrived."""
        return lambda: len(self.received) == count

    def commands(self, verb: str) -> list[int]:
        """How often each connection saw ``verb``."""
        return [commands.count(verb) for commands in self.connections]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address == self.slow_mail_from:
            self.slow_mail_from = ""
            await asyncio.sleep(self.slow_seconds)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_reply:
            return self.rcpt_reply[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        return "451 4.3.0 no reuse here" if self.refuse_rset else "250 2.0.0 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        number = server.connection_number
        self.received.append((number, envelope.original_content, session.ssl is not None))
        return "250 2.0.0 Ok: queued"


class _RecordingSMTP(SMTP):
    def __init__(self, hop: Hop, **kwargs: Any) -> None:
        super().__init__(hop, **kwargs)
        self.hop = hop
        self.connection_number = -1
        self._smtp_methods = {
            verb: self._recorded(verb, method) for verb, method in self._smtp_methods.items()
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # a new TCP connection, not the STARTTLS layer
            self.connection_number = len(self.hop.connections)
            self.hop.connections.append([])
        super().connection_made(transport)

    def _recorded(self, verb: str, method: _Method) -> _Method:
        @functools.wraps(method)
        async def run(arg: str) -> None:
            self.hop.connections[self.connection_number].append(verb)
            if b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
                self.hop.pipelined.append(verb)
            if verb == "DATA" and self.envelope is not None:
                if self.hop.drop_data_to in self.envelope.rcpt_tos:
                    self.hop.drop_data_to = ""
                    assert self.transport is not None
                    self.transport.close()  # gone before answering: a crash, a restart
                    return
            await method(arg)

        return run


class _HopController(Controller):
    def factory(self) -> SMTP:
        assert isinstance(self.handler, Hop)
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def hop_factory() -> Iterator[Callable[..., tuple[Hop, int]]]:
    """Starts recording next hops; stops them all at the end."""
    running: list[Controller] = []

    def start(hop: Hop, **smtp: Any) -> tuple[Hop, int]:
        port = free_port()
        controller = _HopController(hop, hostname="127.0.0.1", port=port, **smtp)
        controller.start()
        running.append(controller)
        # start() has made and closed a connection of its own, to see the server answer.
        hop.connections.clear()
        return hop, port

    yield start
    for controller in running:
        controller.stop()


def config(port: int, **delivery: object) -> str:
    """Relay mode, one delivery at a time; ``delivery`` adds or overrides ``[delivery]`` keys."""
    keys: dict[str, object] = {
        "mode": "relay",
        "next_hop": f"127.0.0.1:{port}",
        "tls": "none",
        "concurrency": 1,
        "retry_initial": 0.5,
        "retry_max_interval": 1.0,
        "queue_scan_interval": 0.3,
        "connect_timeout": 5.0,
        **delivery,
    }

    def toml(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return f'"{value}"' if isinstance(value, str) else str(value)

    return "[delivery]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items())


def submit(server: Serve, messages: list[bytes], rcpt: str = "bob@example.net") -> None:
    """Hand ``messages`` to the gateway in one SMTP session; each must get its 250."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        for message in messages:
            assert client.sendmail("alice@example.org", [rcpt], message) == {}


def messages(n: int, tag: str) -> list[bytes]:
    return [make_message(subject=f"{tag} {i}", body=f"body {tag} {i}\n" * 50) for i in range(n)]


@pytest.mark.parametrize("tls", ["none", "required"])
def test_messages_in_sequence_share_one_connection_and_arrive_intact(
    tls: str,
    tmp_path: Path,
    hop_factory: Callable[..., tuple[Hop, int]],
    serve_factory: Callable[..., Serve],
) -> None:
    smtp: dict[str, Any] = {}
    if tls == "required":
        cert, key = tmp_path / "hop.pem", tmp_path / "hop.key"
        ensure_certificate(cert, key, "hop.example")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        smtp = {"tls_context": context, "require_starttls": True}
    hop, port = hop_factory(Hop(), **smtp)
    server = serve_factory(config(port, tls=tls)).start()
    sent = messages(10, "reused")
    submit(server, sent)
    wait_until(lambda: len(hop.received) == 10, 20, "ten messages at the next hop")
    # One connect, EHLO and (with TLS) handshake for all ten; each later message began with RSET.
    assert len(hop.connections) == 1, hop.connections
    assert hop.commands("MAIL") == [10] and hop.commands("RSET") == [9]
    assert hop.commands("STARTTLS") == [1 if tls == "required" else 0]
    assert all(over_tls == (tls == "required") for _, _, over_tls in hop.received)
    # Intact: each arrives once, in full, behind the headers the gateway adds.
    arrived = sorted(data for _, data, _ in hop.received)
    assert len({data.split(b"Subject: ")[1][:12] for data in arrived}) == 10
    for original in sent:
        assert sum(data.endswith(original) for data in arrived) == 1
    # The idle connection is ended with QUIT when the gateway stops.
    assert server.stop() == 0
    wait_until(lambda: hop.connections[0][-1] == "QUIT", 5, "QUIT at shutdown")


def test_without_reuse_every_message_opens_its_own_connection(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    hop, port = hop_factory(Hop())
    server = serve_factory(config(port, connection_reuse=False)).start()
    submit(server, messages(5, "single"))
    wait_until(lambda: len(hop.received) == 5, 20, "five messages at the next hop")
    wait_until(lambda: hop.commands("QUIT") == [1] * 5, 5, "a QUIT on every connection")
    assert len(hop.connections) == 5 and hop.commands("RSET") == [0] * 5


def test_a_connection_the_next_hop_closed_while_idle_costs_no_retry(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    # The next hop drops connections idle for half a second (a server timeout, a restart);
    # with an hour before any retry, a deferral would miss every deadline below.
    hop, port = hop_factory(Hop(), timeout=0.5)
    server = serve_factory(config(port, retry_initial=3600.0, retry_max_interval=3600.0)).start()
    for i, message in enumerate(messages(3, "after idle close")):
        submit(server, [message])
        wait_until(hop.has_received(i + 1), 10, f"message {i} at once")
        time.sleep(1.0)
    assert not server.spooled()
    # Each closed connection was noticed without a command: no RSET was lost on it.
    assert len(hop.connections) == 3 and hop.commands("RSET") == [0, 0, 0]


def test_a_connection_that_refuses_rset_is_replaced_before_the_message(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    hop, port = hop_factory(Hop(refuse_rset=True))
    server = serve_factory(config(port, retry_initial=3600.0, retry_max_interval=3600.0)).start()
    submit(server, messages(3, "rset refused"))
    wait_until(lambda: len(hop.received) == 3, 10, "three messages, none deferred")
    assert not server.spooled()
    # Every reuse was tried, refused and replaced by a new connection; no MAIL followed a 451.
    assert len(hop.connections) == 3
    for refused in hop.connections[:2]:
        assert refused == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "QUIT"]


def test_a_pipelining_next_hop_gets_rset_mail_and_rcpt_in_one_round_trip(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    hop, port = hop_factory(Hop(pipelining=True))
    cache = ConnectionCache()
    for rcpt in ("bob@example.net", "nobody@example.net", "bob@example.net"):
        assert _send(port, rcpt, cache)[rcpt][0] == 250
    _run(cache.close())
    assert len(hop.connections) == 1 and len(hop.received) == 3
    # The commands after RSET, MAIL and RCPT were already there when those were read (RFC
    # 2920): DATA went with them, one round trip before the message instead of two.
    assert hop.pipelined.count("RSET") == 2 and hop.pipelined.count("MAIL") == 3
    assert hop.pipelined.count("RCPT") == 3 and hop.commands("DATA") == [3]


def test_a_pipelined_data_after_refused_recipients_sends_no_message(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    # Every recipient refused: the DATA sent with them is refused as well (503), the dialogue
    # stays in step and the connection carries the next message.
    hop, port = hop_factory(
        Hop(pipelining=True, rcpt_reply={"nobody@example.net": "550 5.1.1 no such user"})
    )
    cache = ConnectionCache()
    assert _send(port, "nobody@example.net", cache)["nobody@example.net"][0] == 550
    assert _send(port, "bob@example.net", cache)["bob@example.net"][0] == 250
    _run(cache.close())
    assert len(hop.connections) == 1 and len(hop.received) == 1
    assert hop.connections[0][:5] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET"]


def test_a_pipelining_connection_that_refuses_rset_is_replaced_before_the_message(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    hop, port = hop_factory(Hop(refuse_rset=True, pipelining=True))
    cache = ConnectionCache()
    for _ in range(3):
        assert _send(port, "bob@example.net", cache)["bob@example.net"][0] == 250
    _run(cache.close())
    # Each message went out once, on a new connection: the DATA that went with a refused RSET
    # got no message, and no QUIT (which a server waiting for one would take as its text).
    assert [n for n, _, _ in hop.received] == [0, 1, 2]
    for refused in hop.connections[:2]:
        assert refused[:4] == ["EHLO", "MAIL", "RCPT", "DATA"]
        assert refused[4] == "RSET" and "QUIT" not in refused[4:]


def test_a_connection_carries_at_most_reuse_limit_messages(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    hop, port = hop_factory(Hop())
    server = serve_factory(config(port, connection_reuse_limit=3)).start()
    submit(server, messages(7, "limited"))
    wait_until(lambda: len(hop.received) == 7, 20, "seven messages at the next hop")
    wait_until(lambda: len(hop.connections) == 3, 5, "three connections")
    assert hop.commands("MAIL") == [3, 3, 1]
    # A used-up connection is ended politely, not dropped.
    wait_until(lambda: hop.commands("QUIT")[:2] == [1, 1], 5, "QUIT on the used-up ones")


def test_an_idle_connection_past_its_timeout_is_closed_not_reused(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    hop, port = hop_factory(Hop())
    server = serve_factory(config(port, connection_idle_timeout=1.0)).start()
    first, second = messages(2, "idle")
    submit(server, [first])
    wait_until(lambda: len(hop.received) == 1, 10, "the first message")
    began = time.monotonic()
    # Closed by the queue's sweep, not by the next hop: it ends with our QUIT.
    wait_until(lambda: hop.connections[0][-1:] == ["QUIT"], 10, "QUIT on the idle connection")
    assert time.monotonic() - began >= 0.5
    submit(server, [second])
    wait_until(lambda: len(hop.received) == 2, 10, "the second message")
    assert len(hop.connections) == 2 and hop.commands("RSET") == [0, 0]
    assert [number for number, _, _ in hop.received] == [0, 1]


def test_a_connection_dropped_mid_transaction_is_not_reused_and_the_message_is_retried(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    hop, port = hop_factory(Hop(drop_data_to="carol@example.net"))
    server = serve_factory(config(port)).start()
    first, dropped, last = messages(3, "dropped")
    submit(server, [first])
    wait_until(lambda: len(hop.received) == 1, 10, "the first message")
    submit(server, [dropped], rcpt="carol@example.net")
    wait_until(lambda: len(hop.received) == 2, 15, "the dropped message, retried")
    wait_until(lambda: not server.spooled(), 5, "the spool to empty")
    submit(server, [last])
    wait_until(lambda: len(hop.received) == 3, 10, "the last message")
    # The drop came on the reused connection; the retry and the next message share a new one.
    assert hop.connections[0] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]
    assert len(hop.connections) == 2 and hop.commands("MAIL") == [2, 2]
    assert [number for number, _, _ in hop.received] == [0, 1, 1]
    assert hop.received[1][1].endswith(dropped)
    assert not list((server.home / "quarantine" / "held").glob("*"))


def test_a_connection_that_timed_out_is_never_reused(
    hop_factory: Callable[..., tuple[Hop, int]], serve_factory: Callable[..., Serve]
) -> None:
    # The late 250 to MAIL would be read as the answer to the next RSET if the connection were
    # used again: the dialogue would be one reply behind from then on.
    hop, port = hop_factory(Hop(slow_mail_from="slow@example.org", slow_seconds=2.5))
    server = serve_factory(config(port, connect_timeout=1.0)).start()
    first, slow, last = messages(3, "timeout")
    submit(server, [first])
    wait_until(lambda: len(hop.received) == 1, 10, "the first message")
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("slow@example.org", ["bob@example.net"], slow)
    wait_until(lambda: len(hop.received) == 2, 15, "the slow message, retried")
    submit(server, [last])
    wait_until(lambda: len(hop.received) == 3, 10, "the last message")
    assert hop.connections[0] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL"]
    assert len(hop.connections) == 2 and [n for n, _, _ in hop.received] == [0, 1, 1]


# send() itself, without the gateway: replies that end or keep the dialogue in sync. Every
# call of a test runs on one event loop, the one its cached connections belong to (as the
# delivery queue's loop in mailwarden serve).

_runner: asyncio.Runner | None = None


@pytest.fixture(autouse=True)
def _loop() -> Iterator[None]:
    global _runner
    with asyncio.Runner() as runner:
        _runner = runner
        yield
    _runner = None


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    assert _runner is not None
    return _runner.run(coroutine)


async def _nothing() -> None:
    return None


def _send(
    port: int,
    rcpt: str,
    cache: ConnectionCache | None,
    before_dot: Callable[[], Coroutine[Any, Any, None]] = _nothing,
    message: bytes = b"",
    tls: str = "none",
) -> dict[str, tuple[int, str]]:
    result = _run(
        send(
            f"127.0.0.1:{port}",
            "alice@example.org",
            [rcpt],
            message or make_message(),
            helo="gw.example",
            tls=tls,
            context=client_context(False),
            timeout=5.0,
            before_dot=before_dot,
            connections=cache,
        )
    )
    replies: dict[str, tuple[int, str]] = result.replies
    return replies


def test_send_never_reuses_a_connection_after_an_exception(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    # The spool failing to flag the message leaves the next hop waiting for the rest of the
    # body on a socket that is still open: reused, RSET and the next message would become
    # part of this one.
    hop, port = hop_factory(Hop())
    cache = ConnectionCache()

    async def spool_fails() -> None:
        raise OSError(28, "No space left on device")

    first, second = messages(2, "after exception")
    replies = _send(port, "bob@example.net", cache, before_dot=spool_fails, message=first)
    assert replies["bob@example.net"][0] == 451
    assert cache.idle_count() == 0  # (an RSET probe would only notice after its timeout)
    assert _send(port, "bob@example.net", cache, message=second)["bob@example.net"][0] == 250
    assert hop.connections[0] == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert len(hop.connections) == 2
    assert [n for n, _, _ in hop.received] == [1] and hop.received[0][1].endswith(second)
    _run(cache.close())


def test_send_reuses_after_a_refusal_but_not_after_421(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    hop, port = hop_factory(
        Hop(
            rcpt_reply={
                "nobody@example.net": "550 5.1.1 no such user",
                "busy@example.net": "421 4.3.2 closing",
            }
        )
    )
    cache = ConnectionCache()
    assert _send(port, "nobody@example.net", cache)["nobody@example.net"][0] == 550
    assert _send(port, "bob@example.net", cache)["bob@example.net"][0] == 250
    assert len(hop.connections) == 1  # a refused RCPT leaves the dialogue in sync
    assert _send(port, "busy@example.net", cache)["busy@example.net"][0] == 421
    assert cache.idle_count() == 0
    assert _send(port, "bob@example.net", cache)["bob@example.net"][0] == 250
    assert len(hop.connections) == 2 and hop.connections[0][-1] == "RCPT"
    _run(cache.close())
    wait_until(lambda: hop.connections[1][-1] == "QUIT", 5, "QUIT when the cache closes")
    # A connection given back after close() is ended at once.
    _send(port, "bob@example.net", cache)
    wait_until(lambda: hop.commands("QUIT") == [0, 1, 1], 5, "QUIT after close()")


def test_send_without_a_cache_opens_and_quits_a_connection_per_message(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    hop, port = hop_factory(Hop())
    for _ in range(3):
        assert _send(port, "bob@example.net", None)["bob@example.net"][0] == 250
    wait_until(lambda: hop.commands("QUIT") == [1, 1, 1], 5, "three connections, each QUIT")
    assert hop.commands("RSET") == [0, 0, 0]


class _RefusingTlsHop(Hop):
    """Offers STARTTLS in its EHLO reply but has no certificate: STARTTLS gets 454."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-STARTTLS", responses[-1]]


@pytest.mark.parametrize("tls", ["required", "may"])
def test_a_refused_starttls_never_falls_back_to_clear_text(
    tls: str, hop_factory: Callable[..., tuple[Hop, int]]
) -> None:
    hop, port = hop_factory(_RefusingTlsHop())
    cache = ConnectionCache()
    code, text = _send(port, "bob@example.net", cache, tls=tls)["bob@example.net"]
    # Deferred with the refusal named; the session ended there, before any MAIL.
    assert code == 451 and "454" in text, text
    assert hop.connections == [["EHLO", "STARTTLS"]] and not hop.received
    assert cache.idle_count() == 0


def test_required_tls_without_starttls_offered_sends_nothing(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    hop, port = hop_factory(Hop())
    cache = ConnectionCache()
    assert _send(port, "bob@example.net", cache, tls="required")["bob@example.net"] == (
        450,
        "4.7.10 next hop offers no STARTTLS",
    )
    assert cache.idle_count() == 0
    wait_until(lambda: hop.connections == [["EHLO", "QUIT"]], 5, "QUIT after EHLO")
    assert not hop.received


def test_required_tls_with_a_failed_handshake_sends_nothing(
    tmp_path: Path, hop_factory: Callable[..., tuple[Hop, int]]
) -> None:
    cert, key = tmp_path / "hop.pem", tmp_path / "hop.key"
    ensure_certificate(cert, key, "hop.example")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hop, port = hop_factory(Hop(), tls_context=context)
    # The next hop's self-signed certificate does not verify: no session at all.
    result = _run(
        send(
            f"127.0.0.1:{port}",
            "alice@example.org",
            ["bob@example.net"],
            make_message(),
            helo="gw.example",
            tls="required",
            context=client_context(True),
            timeout=5.0,
        )
    )
    code, text = result.replies["bob@example.net"]
    assert code == 451 and "CERTIFICATE_VERIFY_FAILED" in text, text
    assert hop.connections == [["EHLO", "STARTTLS"]] and not hop.received


def test_a_large_message_is_sent_whole_before_the_dot(
    hop_factory: Callable[..., tuple[Hop, int]],
) -> None:
    # 20 MB: far more than the socket and the transport take at once, so the body goes out
    # over many writes while the in-doubt flag waits for it.
    hop, port = hop_factory(Hop(pipelining=True), data_size_limit=64 << 20)
    body = b"".join(b"line %07d of a large message\r\n" % i for i in range(640_000))
    message = make_message(subject="large") + body
    flagged: list[int] = []

    async def before_dot() -> None:
        flagged.append(len(hop.received))

    cache = ConnectionCache()
    assert (
        _send(port, "bob@example.net", cache, before_dot=before_dot, message=message)[
            "bob@example.net"
        ][0]
        == 250
    )
    _run(cache.close())
    assert flagged == [0] and len(hop.received) == 1
    assert hop.received[0][1] == message


@pytest.mark.parametrize("lines", [10, 5_000])
def test_lines_that_start_with_a_dot_reach_the_next_hop_unchanged(
    lines: int, hop_factory: Callable[..., tuple[Hop, int]]
) -> None:
    # A small body goes out with its dot in one write, a large one (5,000 lines: over
    # 64 KiB) before it: both dot-stuffed, and the flag set before the dot either way.
    hop, port = hop_factory(Hop(pipelining=True), data_size_limit=64 << 20)
    body = b"".join(b".line %d\r\n..two dots\r\n.\r\nend.\r\n" % i for i in range(lines))
    message = make_message(subject=f"dots {lines}") + body
    flagged: list[int] = []

    async def before_dot() -> None:
        flagged.append(len(hop.received))

    cache = ConnectionCache()
    replies = _send(port, "bob@example.net", cache, before_dot=before_dot, message=message)
    _run(cache.close())
    assert replies["bob@example.net"][0] == 250
    assert flagged == [0] and len(hop.received) == 1
    assert hop.received[0][1] == message

"""Replies to pipelined commands (RFC 2920): the same replies as aiosmtpd's one write per
reply, in fewer writes, however the client's bytes are cut."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.ingress.connections import ConnectionLimits
from mailwarden.ingress.smtp import GatewaySMTP


class _Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


class _Transport(asyncio.Transport):
    """What the protocol writes, one item per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def _settle() -> None:
    for _ in range(40):
        await asyncio.sleep(0)


async def _session(chunks: list[bytes], cork: bool) -> list[bytes]:
    """The writes of one session fed ``chunks`` as they arrive, replies held back or not."""
    server = GatewaySMTP(
        _Handler(),
        limits=ConnectionLimits(10, 10),
        decode_data=False,
        hostname="mx.example",
        ident="test",
        strict=True,
    )
    server.cork_replies = cork
    transport = _Transport()
    server.connection_made(transport)
    await _settle()
    for chunk in chunks:
        server.data_received(chunk)
        await _settle()
    server.connection_lost(None)
    await _settle()
    return transport.writes


_COMMANDS = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<no address>\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"RCPT TO:<>\r\n",
    b"NOOP\r\n",
    b"RSET\r\n",
    b"VRFY bob\r\n",
    b"BOGUS command\r\n",
    b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n",
]


@settings(max_examples=150, deadline=None)
@given(
    commands=st.lists(st.sampled_from(_COMMANDS), max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_pipelined_replies_are_aiosmtpd_s_in_fewer_writes(
    commands: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(commands) + b"QUIT\r\n"
    chunks, at = [], 0
    for cut in sorted(set(cuts)):
        if at < cut < len(stream):
            chunks.append(stream[at:cut])
            at = cut
    chunks.append(stream[at:])

    async def both() -> tuple[list[bytes], list[bytes]]:
        return await _session(chunks, True), await _session(chunks, False)

    held, each = asyncio.run(both())
    assert b"".join(held) == b"".join(each)
    assert len(held) <= len(each)
    assert b"".join(held).endswith(b"221 Bye\r\n")


def test_a_pipelined_transaction_is_answered_in_one_write() -> None:
    # Postfix's smtp client sends MAIL, the RCPTs and DATA in one go when PIPELINING is offered
    # and reads the replies after: they go out together, the 354 last.
    group = (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
        b"RCPT TO:<carol@example.net>\r\nDATA\r\n"
    )
    writes = asyncio.run(
        _session([b"EHLO client.example\r\n", group, b"body\r\n.\r\nQUIT\r\n"], True)
    )
    replies = [w for w in writes if w.startswith(b"250 2.0.0 Ok") or b"354" in w]
    assert replies[0] == (
        b"250 OK\r\n250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    ), writes
    # The message's 250 and QUIT's 221 came in one segment too: one write.
    assert writes[-1] == b"250 2.0.0 Ok: queued\r\n221 Bye\r\n"

"""The SMTP listener's DATA reader: what a client sends is what the gateway gets, byte for byte."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.ingress.connections import ConnectionLimits
from mailwarden.ingress.smtp import GatewaySMTP


class Recorder:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.original_content)
        return "250 2.0.0 Ok"


async def _exchange(payloads: list[bytes], size_limit: int = 1 << 20) -> tuple[list[bytes], bytes]:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GatewaySMTP(
            recorder, limits=ConnectionLimits(10, 10), data_size_limit=size_limit, decode_data=False
        ),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transcript = bytearray(await reader.readline())
    writer.write(b"EHLO client.example\r\n")
    for payload in payloads:
        writer.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        writer.write(payload)
    # QUIT pipelined right behind the last dot: it must not be swallowed by DATA.
    writer.write(b"QUIT\r\n")
    await writer.drain()
    async with asyncio.timeout(20):
        while chunk := await reader.read(65536):
            transcript += chunk
    writer.close()
    server.close()
    await server.wait_closed()
    return recorder.received, bytes(transcript)


def _stuff(message: bytes) -> bytes:
    # What every SMTP client does (RFC 5321 4.5.2), then the terminating lone dot.
    lines = message.split(b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + (b"" if body.endswith(b"\r\n") or not body else b"\r\n") + b".\r\n"


CASES = [
    b"Subject: plain\r\n\r\nhello\r\n",
    b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nend of sentence.\r\n.\r\n",
    b"",
    b"Subject: long line\r\n\r\n" + b"x" * 5000 + b"\r\n",
    b"Subject: big\r\n\r\n" + b"line of text.\r\n" * 20000,
    b".starts with a dot\r\nand .\r\n",
]


@pytest.mark.parametrize("message", CASES, ids=["plain", "dots", "empty", "long", "big", "first"])
def test_data_arrives_unstuffed_and_whole(message: bytes) -> None:
    received, transcript = asyncio.run(_exchange([_stuff(message)]))
    expected = message if not message or message.endswith(b"\r\n") else message + b"\r\n"
    assert received == [expected]
    assert transcript.count(b"250 2.0.0 Ok") == 1 and b"221" in transcript


def test_two_messages_on_one_connection_stay_apart() -> None:
    first, second = CASES[1], CASES[0]
    received, _ = asyncio.run(_exchange([_stuff(first), _stuff(second)]))
    assert received == [first, second]


def test_too_much_data_is_refused_after_the_dot_and_the_session_goes_on() -> None:
    big = b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n"
    received, transcript = asyncio.run(_exchange([_stuff(big), _stuff(CASES[0])], size_limit=1000))
    assert b"552 Error: Too much mail data" in transcript
    assert received == [CASES[0]]  # the next transaction on the same connection works


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"..", b"a", b"a.", b". ", b"\r\n", b"x" * 300]), max_size=40)
)
def test_any_line_mix_round_trips(pieces: list[bytes]) -> None:
    message = b"".join(pieces).replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    received, _ = asyncio.run(_exchange([_stuff(message)]))
    assert received == [message]

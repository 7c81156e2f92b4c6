"""The MTA side of the milter protocol, for tests and the benchmark: drives a real socket.

It speaks exactly what Postfix's milter8.c sends (OPTNEG, macros per stage, CONNECT, HELO,
MAIL, RCPT, DATA, HEADER, EOH, BODY chunks, EOB, ABORT, QUIT, QUIT_NC) and collects the
filter's end-of-message changes and final reply.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from mailwarden.ingress.milter import (
    P_HDR_LEADSPC,
    P_NR_BODY,
    P_NR_CONN,
    P_NR_DATA,
    P_NR_EOH,
    P_NR_HDR,
    P_NR_HELO,
    P_NR_MAIL,
    P_NR_RCPT,
    encode_packet,
)

ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF
FINAL = set("acrtdyf4")


@dataclass
class Answer:
    """What the filter sent after EOB: changes in order, progress count, the final reply."""

    changes: list[tuple[str, bytes]] = field(default_factory=list)
    progress: int = 0
    final: str = ""
    data: bytes = b""

    @property
    def reply_text(self) -> str:
        return self.data.rstrip(b"\0").decode()

    def headers_added(self) -> list[tuple[str, str]]:
        out = []
        for code, data in self.changes:
            if code == "h":
                name, value, _ = data.split(b"\0")
                out.append((name.decode(), value.decode().strip()))
        return out


def headers_and_body(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Split a message as an MTA does for HEADER packets (folded lines kept inside values)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[tuple[str, str]] = []
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        headers.append((name.decode(), value.decode("utf-8", "surrogateescape")))
    return headers, body


class MemoryTransport(asyncio.Transport):
    """The filter's side of a connection kept in memory, to feed a ``MilterConnection``
    bytes directly: what it wrote, and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Mta:
    """One milter connection from the MTA side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.actions = 0
        self.protocol = 0
        self.macro_lists: dict[int, str] = {}

    @classmethod
    async def connect(cls, port: int) -> Mta:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass

    def send(self, code: str, data: bytes = b"") -> None:
        self.writer.write(encode_packet(code, data))

    async def read(self) -> tuple[str, bytes]:
        (length,) = struct.unpack("!I", await self.reader.readexactly(4))
        packet = await self.reader.readexactly(length)
        return chr(packet[0]), packet[1:]

    async def expect(self, stage_flag: int) -> str | None:
        """The reply to a stage unless it was negotiated as no-reply."""
        await self.writer.drain()
        if self.protocol & stage_flag:
            return None
        code, _ = await self.read()
        return code

    async def optneg(
        self, version: int = 6, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL
    ) -> tuple[int, int, int]:
        self.send("O", struct.pack("!III", version, actions, protocol))
        await self.writer.drain()
        code, data = await self.read()
        assert code == "O", (code, data)
        got = struct.unpack_from("!III", data)
        self.actions, self.protocol = got[1], got[2]
        rest = data[12:]
        while rest:
            (stage,) = struct.unpack_from("!I", rest)
            end = rest.index(b"\0", 4)
            self.macro_lists[stage] = rest[4:end].decode()
            rest = rest[end + 1 :]
        return got

    def macro(self, stage: str, **values: str) -> None:
        data = stage.encode()
        for name, value in values.items():
            data += f"{{{name}}}".encode() + b"\0" + value.encode() + b"\0"
        self.send("D", data)

    async def session_start(self, client: str = "192.0.2.7", helo: str = "client.test") -> None:
        self.macro("C", client_addr=client, client_name="client.test", daemon_name="mx")
        host = socket.inet_aton(client)
        assert host
        self.send("C", b"client.test\0" + b"4" + struct.pack("!H", 40000) + client.encode() + b"\0")
        assert await self.expect(P_NR_CONN) in (None, "c")
        self.send("H", helo.encode() + b"\0")
        assert await self.expect(P_NR_HELO) in (None, "c")

    async def message(
        self,
        raw: bytes,
        sender: str = "alice@example.org",
        recipients: tuple[str, ...] = ("bob@example.net",),
        chunk: int = 65535,
        queue_id: str = "ABC123",
    ) -> Answer:
        """MAIL ... EOB for one message; returns the filter's answer."""
        self.macro("M", mail_addr=sender)
        self.send("M", f"<{sender}>\0SIZE={len(raw)}\0".encode())
        assert await self.expect(P_NR_MAIL) in (None, "c")
        for rcpt in recipients:
            self.macro("R", rcpt_addr=rcpt)
            self.send("R", f"<{rcpt}>\0".encode())
            assert await self.expect(P_NR_RCPT) in (None, "c")
        self.send("D", b"T" + b"i\0" + queue_id.encode() + b"\0")
        self.send("T")
        assert await self.expect(P_NR_DATA) in (None, "c")
        headers, body = headers_and_body(raw)
        space = " " if self.protocol & P_HDR_LEADSPC else ""
        for name, value in headers:
            value = value if space else value.lstrip(" ")
            self.send("L", name.encode() + b"\0" + value.encode("utf-8", "surrogateescape") + b"\0")
            assert await self.expect(P_NR_HDR) in (None, "c")
        self.send("N")
        assert await self.expect(P_NR_EOH) in (None, "c")
        for i in range(0, len(body), chunk):
            self.send("B", body[i : i + chunk])
            assert await self.expect(P_NR_BODY) in (None, "c")
        self.send("D", b"E" + b"i\0" + queue_id.encode() + b"\0")
        self.send("E")
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> Answer:
        answer = Answer()
        while True:
            code, data = await self.read()
            if code == "p":
                answer.progress += 1
            elif code in FINAL:
                answer.final, answer.data = code, data
                return answer
            else:
                answer.changes.append((code, data))


NO_REPLIES = P_NR_CONN | P_NR_HELO | P_NR_MAIL | P_NR_RCPT | P_NR_DATA | P_NR_HDR | P_NR_EOH
NO_REPLIES |= P_NR_BODY

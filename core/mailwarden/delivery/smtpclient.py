"""The relay's SMTP client: one connection to the next hop on the event loop.

asyncio rather than ``smtplib`` in a thread: a session in a thread hands the GIL to and from
the event loop around every send and receive (about twenty times per message), which cost
more CPU than the session itself. aiosmtplib was not taken: it reads one reply per wait and
drops bytes that arrive while a reply waits to be picked up, so it cannot read the replies
to pipelined commands (RFC 2920), which the relay sends on every reused connection.

Replies are parsed as bytes arrive into a queue of whole replies, so any number of them in
any cut of segments come out in order. Every wait has a timeout; a broken reply line, a
reply longer than :data:`MAX_REPLY` bytes, an EOF or a reset raise :class:`SMTPClientError`
(an ``OSError``), the one error type callers need to catch with timeouts and TLS failures.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections import deque
from typing import cast

__all__ = ["MAX_REPLY", "Connection", "ReplyError", "ReplyReader", "SMTPClientError", "quote"]

#: The longest reply accepted, all its lines together (EHLO replies are well below 4 KiB).
MAX_REPLY = 64 * 1024
# A path of plain characters is quoted as it is; anything else as smtplib.quoteaddr does.
_PLAIN_PATH = re.compile(r"[^\s<>\"(),;:\\\[\]]*\Z")


class SMTPClientError(ConnectionError):
    """The next hop broke the dialogue: EOF, reset, a malformed or oversized reply."""


class ReplyError(SMTPClientError):
    """A refusal where the dialogue cannot go on: the greeting, EHLO and HELO, STARTTLS."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def quote(address: str) -> str:
    """``address`` as a path in angle brackets (``<>`` for the null sender)."""
    if "\r" in address or "\n" in address:
        # No command may carry a line end: it would start a command of the sender's choice.
        raise SMTPClientError(f"line end in the address {address!r}")
    if _PLAIN_PATH.match(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


class ReplyReader:
    """Whole replies out of the bytes of a connection, however they were cut."""

    def __init__(self) -> None:
        self.replies: deque[tuple[int, str]] = deque()
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """Bytes that are not yet a whole reply."""
        return bool(self._buffer or self._lines)

    def feed(self, data: bytes) -> None:
        """Take ``data``; complete replies go to :attr:`replies`. Raises on a broken one."""
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            code, mark = line[:3], line[3:4]
            if not (len(code) == 3 and code.isdigit()) or mark not in (b"", b" ", b"-", b"\r"):
                raise SMTPClientError(f"malformed reply line {line[:80]!r}")
            self._size += len(line)
            if self._size > MAX_REPLY:
                raise SMTPClientError(f"reply longer than {MAX_REPLY} bytes")
            self._lines.append(line[4:].strip(b" \t\r"))
            if mark != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "replace")
                self.replies.append((int(code), text))
                self._lines, self._size = [], 0
        del buffer[:start]
        if self._size + len(buffer) > MAX_REPLY:
            raise SMTPClientError(f"reply longer than {MAX_REPLY} bytes")


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = ReplyReader()
        self.error = ""  # why no more replies will come
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # the transport holds more than its high-water mark
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except SMTPClientError as exc:
            self._fail(str(exc))
            if self.transport is not None:
                self.transport.abort()
            return
        if self.reader.replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail("connection closed by the next hop")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(f"connection lost: {exc}" if exc else "connection closed")
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self, timeout: float) -> None:
        # The time limit is on progress, as a blocking send's is: a large message on a slow
        # link may take far longer than ``timeout`` as long as bytes keep leaving.
        sent_down_to = -1
        while self._paused:
            transport = self.transport
            if transport is None or self.error:
                raise SMTPClientError(self.error or "connection closed")
            left = transport.get_write_buffer_size()
            if left == sent_down_to:
                raise SMTPClientError(f"no data taken for {timeout:g} s")
            sent_down_to = left
            drained = self._drained = self.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await drained
            except TimeoutError:
                pass
            finally:
                self._drained = None

    def _fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def reply(self, timeout: float) -> tuple[int, str]:
        replies = self.reader.replies
        while not replies:
            if self.error:
                raise SMTPClientError(self.error)
            waiter = self._waiter = self.loop.create_future()
            # A bare timer on the waiter: asyncio.timeout's context (its Timeout, the task's
            # cancel and uncancel) costs more than the wait, five replies a message.
            timer = self.loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return replies.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Connection:
    """One SMTP connection to the next hop, after its greeting and EHLO (and STARTTLS)."""

    def __init__(self, protocol: _Protocol, host: str, port: int) -> None:
        self._protocol = protocol
        self.host = host
        self.port = port
        self.extensions: dict[str, str] = {}
        self.secure = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        helo: str,
        tls: str,
        context: ssl.SSLContext,
        timeout: float,
    ) -> Connection:
        """Connect, read the greeting, EHLO; STARTTLS and EHLO again when ``tls`` is not
        ``"none"`` and the server offers it. A refusal of any step raises
        :class:`ReplyError`: with STARTTLS offered, no session goes on in clear text."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(lambda: _Protocol(loop), host, port)
        connection = cls(protocol, host, port)
        try:
            code, text = await protocol.reply(timeout)
            if code != 220:
                raise ReplyError(code, text)
            await connection._hello(helo, timeout)
            if tls != "none" and connection.has("starttls"):
                await connection._starttls(context, timeout)
                await connection._hello(helo, timeout)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _hello(self, helo: str, timeout: float) -> None:
        self.extensions = {}
        code, text = await self.command(f"EHLO {helo}", timeout)
        if code == 250:
            for line in text.split("\n")[1:]:
                word, _, params = line.partition(" ")
                self.extensions[word.lower()] = params
            return
        code, text = await self.command(f"HELO {helo}", timeout)
        if code != 250:
            raise ReplyError(code, text)

    async def _starttls(self, context: ssl.SSLContext, timeout: float) -> None:
        code, text = await self.command("STARTTLS", timeout)
        if code != 220:
            raise ReplyError(code, text)
        protocol = self._protocol
        if protocol.reader.replies or protocol.reader.pending:
            # Bytes after the 220 came before the handshake: in clear text, from anyone on
            # the path (RFC 3207 5), so never read as part of the protected session.
            raise SMTPClientError("data after the STARTTLS reply, before the handshake")
        transport = protocol.transport
        if transport is None:
            raise SMTPClientError(protocol.error or "connection closed")
        tls_transport = await protocol.loop.start_tls(
            transport,
            protocol,
            context,
            server_hostname=self.host,
            ssl_handshake_timeout=timeout,
        )
        if tls_transport is None:
            raise SMTPClientError("connection closed during the TLS handshake")
        protocol.transport = tls_transport
        self.secure = True

    def has(self, extension: str) -> bool:
        """The server named ``extension`` (lower case) in its last EHLO reply."""
        return extension in self.extensions

    @property
    def connected(self) -> bool:
        """The transport is open and nothing ended the dialogue."""
        transport = self._protocol.transport
        return transport is not None and not transport.is_closing() and not self._protocol.error

    @property
    def has_spoken(self) -> bool:
        """The server sent something, or went away, while no command was waiting: between
        transactions an in-sync server says nothing, so the connection is of no more use."""
        protocol = self._protocol
        return bool(protocol.reader.replies or protocol.reader.pending) or not self.connected

    def write(self, data: bytes) -> None:
        """Queue ``data`` on the connection (asyncio sends what the socket takes at once)."""
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise SMTPClientError(self._protocol.error or "connection closed")
        transport.write(data)

    async def send(self, data: bytes, timeout: float) -> None:
        """Write ``data`` and wait until the socket has taken all but the transport's low-water
        mark of it, ``timeout`` being the limit on progress: a message body, whose transfer
        the wait for the answer to the final dot must not include."""
        self.write(data)
        await self._protocol.drain(timeout)

    async def reply(self, timeout: float) -> tuple[int, str]:
        """The next reply, in the order the commands went out."""
        return await self._protocol.reply(timeout)

    async def command(self, line: str, timeout: float, encoding: str = "ascii") -> tuple[int, str]:
        """Send ``line`` and read its reply."""
        self.write(line.encode(encoding) + b"\r\n")
        return await self._protocol.reply(timeout)

    async def quit(self, timeout: float) -> None:
        """QUIT, wait for its reply up to ``timeout``, then close; errors are of no interest."""
        try:
            await self.command("QUIT", timeout)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close at once (what was written still goes out first)."""
        transport = self._protocol.transport
        if transport is not None:
            transport.close()

"""The milter server on asyncio: one protocol object per MTA connection, one answer per
message at end of body from a :class:`MilterHandler`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from mailwarden_native import milter_headers, tcp_quickack

from ...hookcalls import Resumed
from ..tcp import listening_socket, quickack_socket, stream_transport
from .codec import (
    ABORT,
    BODY,
    BODYEOB,
    CHUNK,
    CONNECT,
    DATA,
    EOH,
    F_ADDHDRS,
    F_ADDRCPT,
    F_CHGBODY,
    F_CHGFROM,
    F_CHGHDRS,
    F_DELRCPT,
    F_QUARANTINE,
    HEADER,
    HELO,
    MACRO,
    MACROS,
    MAIL,
    MAX_MACRO_BYTES,
    MAX_MACRO_PACKET,
    MAX_PACKET,
    NO_REPLY,
    OPTNEG,
    P_HDR_LEADSPC,
    QUIT,
    QUIT_NC,
    R_ACCEPT,
    R_ADDHEADER,
    R_ADDRCPT,
    R_CHGFROM,
    R_CHGHEADER,
    R_CONTINUE,
    R_DELRCPT,
    R_DISCARD,
    R_INSHEADER,
    R_PROGRESS,
    R_QUARANTINE,
    R_REJECT,
    R_REPLBODY,
    R_TEMPFAIL,
    RCPT,
    UNKNOWN,
    VERSION,
    WANTED_ACTIONS,
    WANTED_PROTOCOL,
    MilterProtocolError,
    decode_args,
    decode_connect,
    decode_header,
    decode_macros,
    decode_optneg,
    encode_cstrings,
    encode_optneg,
    encode_packet,
    encode_replycode,
    packet_end,
)

__all__ = [
    "MilterConnection",
    "MilterHandler",
    "MilterMessage",
    "MilterResult",
    "MilterServer",
]

log = logging.getLogger(__name__)

# -- what the handler sees and answers ---------------------------------------------------------


@dataclass
class MilterMessage:
    """One message as the MTA described it, reassembled at end of body."""

    macros: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    family: str = ""
    address: str = ""
    port: int = 0
    helo: str = ""
    sender: str = ""
    sender_args: list[str] = field(default_factory=list)
    #: Recipients as the MTA gave them (``<a@b>``), each with its ESMTP arguments.
    recipients: list[tuple[str, list[str]]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    #: The message exceeded the size limit: body bytes beyond it were not kept.
    oversized: bool = False
    leading_space: bool = False

    @property
    def queue_id(self) -> str | None:
        return self.macros.get("i") or None

    def raw(self) -> bytes:
        """Headers and body as one RFC 5322 message with CR LF line ends."""
        sep = ":" if self.leading_space else ": "
        head = "".join([f"{name}{sep}{value}\r\n" for name, value in self.headers])
        head_bytes = (head + "\r\n").encode("utf-8", "surrogateescape")
        # Postfix sends folded header lines joined by a bare LF; make every line end CR LF.
        # The head ends in CR LF, so each part can be mended on its own, and only when it
        # has a bare LF (the body, from the MTA's queue file, has none): no copy of the
        # whole message per replace.
        body = self.body
        return _crlf(head_bytes) + (_crlf(body) if _bare_lf(body) else body)


def _bare_lf(data: bytes | bytearray) -> bool:
    lf = data.count(b"\n")
    return lf != 0 and lf != data.count(b"\r\n")


def _crlf(data: bytes | bytearray) -> bytes:
    """``data`` with every line ending in CR LF (a bare LF gets its CR)."""
    if not _bare_lf(data):
        return bytes(data)
    return bytes(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass
class MilterResult:
    """The answer at end of message: changes first, then one final reply.

    ``reply`` is ``accept``, ``continue``, ``reject``, ``tempfail`` or ``discard``; with
    ``code`` and ``text`` a reject or tempfail carries our own SMTP reply.
    """

    reply: Literal["accept", "continue", "reject", "tempfail", "discard"] = "accept"
    code: int | None = None
    text: str = ""
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    #: (index, name, value): inserted at 0-based position ``index``.
    insert_headers: list[tuple[int, str, str]] = field(default_factory=list)
    #: (name, occurrence, value): 1-based occurrence of ``name``; an empty value deletes it.
    change_headers: list[tuple[str, int, str]] = field(default_factory=list)
    body: bytes | None = None
    sender: str | None = None
    add_recipients: list[str] = field(default_factory=list)
    delete_recipients: list[str] = field(default_factory=list)
    quarantine: str | None = None


class MilterHandler(Protocol):
    """Decides about one reassembled message."""

    async def end_of_message(self, message: MilterMessage) -> MilterResult: ...


# -- the server ---------------------------------------------------------------------------------


class MilterServer:
    """Serves the milter protocol for ``handler``: a :class:`MilterConnection` per connection."""

    def __init__(
        self,
        handler: MilterHandler,
        *,
        max_message_size: int = 50 * 1024 * 1024,
        max_connections: int = 500,
        timeout: float = 300.0,
        progress_interval: float = 10.0,
        protocol: int = WANTED_PROTOCOL,
    ) -> None:
        self.handler = handler
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.timeout = timeout
        self.progress_interval = progress_interval
        self.wanted_protocol = protocol
        self.connections = 0
        # The loop the server listens on, for its connections: asking for the running loop
        # per connection costs a getpid system call (Python 3.11 checks for a fork).
        self.loop: asyncio.AbstractEventLoop | None = None

    def _connection(self) -> MilterConnection:
        return MilterConnection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        """Listen on TCP ``host:port``."""
        self.loop = loop = asyncio.get_running_loop()
        return await loop.create_server(
            self._connection, sock=listening_socket(host, port, reuse_port)
        )

    async def start_unix(self, path: str) -> asyncio.Server:
        """Listen on a UNIX socket (Postfix ``unix:path``); a stale socket file is replaced."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.loop = loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(self._connection, path=path)
        # The MTA runs as its own user; the socket's directory is what protects it.
        os.chmod(path, 0o666)
        return server


class MilterConnection(asyncio.Protocol):
    """One MTA connection: packets are decoded and handled as they arrive, in one call.

    A protocol rather than a stream reader with a task: with the no-reply flags the MTA sends
    a dozen small packets per message, and two awaits and a timeout context per packet were
    most of the milter's CPU time (Postfix + milter, 1 KiB messages). Every command but
    end-of-body is answered (or not) synchronously; at end-of-body reading pauses until the
    decision has been sent, as the MTA sends nothing more before it.
    """

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.loop = server.loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session: _Session | None = None
        self.peer: object = "unix"
        self.buffer = bytearray()
        self.deciding: asyncio.Task[None] | None = None
        self.paused = False
        self.counted = False
        # The socket's descriptor for TCP_QUICKACK (-1: not TCP): set through the C core, as
        # a socket object per call (uvloop's transport socket makes one) also costs a
        # getsockname system call.
        self.quickack = -1
        self.last_seen = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = stream_transport(transport)
        self.peer = transport.get_extra_info("peername") or "unix"
        server = self.server
        if server.connections >= server.max_connections:
            # The MTA applies its milter_default_action; for Postfix's tempfail nothing is lost.
            log.warning("milter: refusing %s: %d connections open", self.peer, server.connections)
            transport.close()
            return
        server.connections += 1
        self.counted = True
        self.session = _Session(server, transport, self.loop)
        sock = quickack_socket(transport)
        self.quickack = -1 if sock is None else sock.fileno()
        self.idle_timer = self.loop.call_at(self.last_seen + server.timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        self.buffer += data
        session = self.session
        if self.deciding is None and session is not None:
            session.answered = False
            self._process()
            if self.quickack >= 0 and not (session.answered or self.deciding):
                # With the NR_* flags the MTA writes several packets per stage without
                # waiting for a reply: acknowledge at once so its next write does not wait
                # (tcp.py). Not needed when we answered (the answer carries the ACK) or
                # the message is being decided (the MTA waits for that answer): a system
                # call fewer at the option negotiation and at the end of each message.
                tcp_quickack(self.quickack)
        elif self.quickack >= 0:
            tcp_quickack(self.quickack)
        if self.deciding is not None and len(self.buffer) > _HELD_WHILE_DECIDING:
            if self.paused:
                return
            # The MTA sends nothing between EOB and our reply; a peer that does is read
            # again once the decision is sent, so what it sends meanwhile stays bounded.
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("milter: connection from %s lost: %r", self.peer, exc)
        elif self.buffer and self.deciding is None:
            log.warning("milter: %s closed the connection inside a packet", self.peer)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        # The descriptor is the transport's: closed now, and soon another connection's.
        self.quickack = -1
        if self.counted:
            self.counted = False
            self.server.connections -= 1
        # A decision under way finishes (its records and copies are kept); its reply has
        # nowhere to go and the MTA applies its own default, as with any lost milter.

    # -- packets ---------------------------------------------------------------------------------

    def _process(self) -> None:
        buffer, session, transport = self.buffer, self.session, self.transport
        if session is None or transport is None or transport.is_closing():
            return
        offset = 0
        done = False
        try:
            # Packets are decoded where they lie: a body chunk goes from the read buffer into
            # the message through a view, the other packets' data is one slice each.
            with memoryview(buffer) as view:
                while (end := packet_end(buffer, offset)) >= 0:
                    code, start = buffer[offset + 4], offset + 5
                    if code == _HEADER and session.negotiated:
                        # The headers in a row in one call to the C core (a message has a
                        # dozen, each a packet); one it does not take goes the codec's way.
                        taken = session.headers(buffer, offset)
                        if taken > offset:
                            offset = taken
                            continue
                    offset = end
                    if code == _BODY or code == _BODYEOB:
                        done = session.body(view, start, end, end_of_body=code == _BODYEOB)
                    else:
                        done = session.packet(code, buffer[start:end])
                    if done:
                        break
        except _Closed:
            transport.close()
            # No quick ACK after QUIT: the FIN carries it (a system call per connection).
            self.quickack = -1
        except MilterProtocolError as exc:
            log.warning("milter: closing the connection from %s: %s", self.peer, exc)
            buffer.clear()
            transport.close()
            self.quickack = -1
        finally:
            del buffer[:offset]
        if done:
            # End of body: decide, then go on with what the MTA sent after it. Reading goes
            # on (bytes that come meanwhile wait in the buffer): pausing and resuming cost
            # two epoll_ctl calls per message, and the MTA waits for the reply anyway.
            self.deciding = self.loop.create_task(self._decide())

    async def _decide(self) -> None:
        assert self.session is not None and self.transport is not None
        try:
            await self.session.end_of_message()
        finally:
            self.deciding = None
            self.last_seen = self.loop.time()
            if not self.transport.is_closing():
                if self.paused:
                    self.paused = False
                    self.transport.resume_reading()
                self._process()

    def _check_idle(self) -> None:
        timeout = self.server.timeout
        if self.deciding is None and self.loop.time() - self.last_seen >= timeout:
            log.warning("milter: %s sent nothing for %g s; closing", self.peer, timeout)
            if self.transport is not None:
                self.transport.close()
            return
        base = self.loop.time() if self.deciding is not None else self.last_seen
        self.idle_timer = self.loop.call_at(base + timeout, self._check_idle)


_BODY, _BODYEOB, _HEADER, _OPTNEG = ord(BODY), ord(BODYEOB), ord(HEADER), ord(OPTNEG)
# Bytes kept unread while a message is decided before reading pauses: one largest packet.
_HELD_WHILE_DECIDING = MAX_PACKET + 5
_CONTINUE, _PROGRESS = encode_packet(R_CONTINUE), encode_packet(R_PROGRESS)
# The final replies without a code of ours, encoded once.
_FINAL = {
    reply: encode_packet(code)
    for reply, code in (
        ("accept", R_ACCEPT),
        ("continue", R_CONTINUE),
        ("reject", R_REJECT),
        ("tempfail", R_TEMPFAIL),
        ("discard", R_DISCARD),
    )
}


_OPTNEG_REPLIES: dict[tuple[int, int, int], bytes] = {}


# The same few macro names in every packet (Postfix's "{client_addr}"...), each with the key
# it is stored under; bounded in count and size, as a peer chooses the names.
_MACRO_KEYS: dict[str, str] = {}


def _macro_key(name: str) -> str:
    # Postfix sends "{name}" and Sendmail sometimes "name": store one form.
    key = name[1:-1] if name.startswith("{") and name.endswith("}") else name
    if len(_MACRO_KEYS) < 256 and len(name) <= 64:
        _MACRO_KEYS[name] = key
    return key


def _macro_bytes(macros: dict[str, str]) -> int:
    return sum(map(len, macros)) + sum(map(len, macros.values()))


class _Closed(Exception):
    """The session ends (QUIT)."""


class _Session:
    """The state of one milter connection (one SMTP session, or several with QUIT_NC)."""

    def __init__(
        self, server: MilterServer, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.server = server
        self.transport = transport
        self.loop = loop
        self.actions = 0
        self.protocol = 0
        self.negotiated = False
        self.connection = MilterMessage()
        self.message = MilterMessage()
        self.in_message = False
        self.pending: MilterMessage | None = None
        # The bytes of macro names and values in ``connection.macros`` and
        # ``message.macros``, kept as they change (the cap is checked at every MACRO packet).
        self.connection_macro_bytes = 0
        self.message_macro_bytes = 0
        #: Something was written back since the connection last read (its ACK went with it).
        self.answered = False

    def reply(self, stage: str) -> bool:
        """Continue, unless the MTA agreed that ``stage`` gets no reply; False (not EOB)."""
        if not self.protocol & NO_REPLY[stage]:
            self.transport.write(_CONTINUE)
            self.answered = True
        return False

    def _new_message(self) -> MilterMessage:
        """A message with the connection's state, to become ``self.message``."""
        c = self.connection
        self.message_macro_bytes = self.connection_macro_bytes
        return MilterMessage(
            macros=dict(c.macros),
            hostname=c.hostname,
            family=c.family,
            address=c.address,
            port=c.port,
            helo=c.helo,
            leading_space=bool(self.protocol & P_HDR_LEADSPC),
        )

    def packet(self, code: int, data: bytearray) -> bool:
        """Handle one command but a body chunk (:meth:`body`); ``True`` at end of body."""
        if code == _OPTNEG:
            self._optneg(data)
            return False
        handler = _HANDLERS.get(code)
        if handler is None:
            raise MilterProtocolError(f"unknown command {chr(code)!r}")
        if not self.negotiated:
            raise MilterProtocolError(f"command {chr(code)!r} before option negotiation")
        return handler(self, data)

    def body(self, view: memoryview, start: int, end: int, *, end_of_body: bool) -> bool:
        """The body chunk at ``view[start:end]`` (BODY, or EOB with the last one): ``True``
        at end of body, when :meth:`end_of_message` is due."""
        if not self.negotiated:
            raise MilterProtocolError(
                f"command {BODYEOB if end_of_body else BODY!r} before option negotiation"
            )
        if end > start:
            self._count(end - start)
            if not self.message.oversized:
                # Copied straight from the read buffer; the slice is gone when this returns,
                # so no view holds the buffer when the reader trims it (or an error clears it).
                self.message.body += view[start:end]
        if not end_of_body:
            return self.reply(BODY)
        self.pending, self.message = self.message, self._new_message()
        self.in_message = False
        return True

    def headers(self, buffer: bytearray, offset: int) -> int:
        """The well-formed header packets in a row from ``buffer[offset]``, taken in one
        call; the offset after them (``offset`` when the first is not taken)."""
        end, parts = milter_headers(buffer, offset, MAX_PACKET)
        if not parts:
            return offset
        count = len(parts) // 2
        # Each header counts as its name, value and ": " CR LF, as _header counts one.
        self._count(sum(map(len, parts)) + 4 * count)
        if not self.message.oversized:
            self.message.headers += zip(parts[::2], parts[1::2], strict=True)
        if not self.protocol & NO_REPLY[HEADER]:
            self.transport.write(_CONTINUE * count)
            self.answered = True
        return end

    def _macro(self, data: bytearray) -> bool:
        stage, pairs = decode_macros(data)
        self._check_macros(pairs)
        connection = not self.in_message and stage not in "MRTLNEB"
        macros = (self.connection if connection else self.message).macros
        message_macros = self.message.macros
        added = added_to_message = 0
        keys = _MACRO_KEYS
        for name, value in zip(pairs[::2], pairs[1::2], strict=True):
            key = keys.get(name)
            if key is None:
                key = _macro_key(name)
            size = len(key) + len(value)
            old = macros.get(key)
            added += size if old is None else size - len(key) - len(old)
            macros[key] = value
            if connection:
                old = message_macros.get(key)
                added_to_message += size if old is None else size - len(key) - len(old)
                message_macros[key] = value
        if connection:
            self.connection_macro_bytes += added
            self.message_macro_bytes += added_to_message
        else:
            self.message_macro_bytes += added
        return False

    def _connect(self, data: bytearray) -> bool:
        c = self.connection
        c.hostname, c.address, c.family, c.port = decode_connect(data)
        self.message = self._new_message()
        return self.reply(CONNECT)

    def _helo(self, data: bytearray) -> bool:
        self.connection.helo = self.message.helo = decode_args(HELO, data)[0]
        return self.reply(HELO)

    def _mail(self, data: bytearray) -> bool:
        args = decode_args(MAIL, data)
        macros = self.message.macros
        self.message = self._new_message()
        self.message.macros.update(macros)
        self.message_macro_bytes = _macro_bytes(self.message.macros)
        self.in_message = True
        self.message.sender, self.message.sender_args = args[0], args[1:]
        return self.reply(MAIL)

    def _rcpt(self, data: bytearray) -> bool:
        args = decode_args(RCPT, data)
        self.message.recipients.append((args[0], args[1:]))
        return self.reply(RCPT)

    def _header(self, data: bytearray) -> bool:
        name, value = decode_header(data)
        self._count(len(name) + len(value) + 4)
        if not self.message.oversized:
            self.message.headers.append((name, value))
        return self.reply(HEADER)

    def _unknown(self, data: bytearray) -> bool:
        decode_args(UNKNOWN, data)
        return self.reply(UNKNOWN)

    def _data(self, _data: bytearray) -> bool:
        return self.reply(DATA)

    def _end_of_headers(self, _data: bytearray) -> bool:
        return self.reply(EOH)

    def _abort(self, _data: bytearray) -> bool:
        self.message = self._new_message()
        self.in_message = False
        return False

    def _quit(self, _data: bytearray) -> bool:
        raise _Closed

    def _quit_nc(self, _data: bytearray) -> bool:
        # The MTA keeps the connection for a new SMTP session: forget this one's state.
        self.connection = MilterMessage()
        self.connection_macro_bytes = 0
        self.message = self._new_message()
        self.in_message = False
        return False

    def _check_macros(self, pairs: list[str]) -> None:
        size = sum(map(len, pairs))
        if size > MAX_MACRO_PACKET:
            raise MilterProtocolError(
                f"MACRO packet of {size} bytes exceeds the limit of {MAX_MACRO_PACKET}"
            )
        # Both stores may keep a pair (connection-stage macros are copied into the message).
        kept = self.connection_macro_bytes + self.message_macro_bytes
        if kept + size > MAX_MACRO_BYTES:
            raise MilterProtocolError(
                f"macros would hold {kept + size} bytes, over the limit of {MAX_MACRO_BYTES}"
            )

    def _count(self, size: int) -> None:
        self.message.size += size
        if self.message.size > self.server.max_message_size:
            # Stop keeping data but keep reading: the answer (552) is given at end of body.
            self.message.oversized = True
            self.message.body.clear()

    def _optneg(self, data: bytearray) -> None:
        offered, actions, protocol = decode_optneg(data)
        if offered < 2:
            raise MilterProtocolError(f"MTA speaks milter protocol {offered}; need 2 or more")
        version = min(offered, VERSION)
        self.actions = WANTED_ACTIONS & actions
        self.protocol = self.server.wanted_protocol & protocol
        self.negotiated = True
        # The same few answers on every connection (one per MTA configuration): made once.
        key = (version, self.actions, self.protocol)
        reply = _OPTNEG_REPLIES.get(key)
        if reply is None:
            reply = encode_optneg(version, self.actions, self.protocol, MACROS)
            if len(_OPTNEG_REPLIES) < 64:
                _OPTNEG_REPLIES[key] = reply
        self.transport.write(reply)
        self.answered = True

    async def end_of_message(self) -> None:
        message, self.pending = self.pending, None
        assert message is not None
        if message.oversized:
            result = MilterResult("reject", 552, "5.3.4 Message too big for the content filter")
        else:
            result = await self._decide(message)
        self._send_result(result)

    async def _decide(self, message: MilterMessage) -> MilterResult:
        progress = self.server.progress_interval
        loop = self.loop
        timer: asyncio.TimerHandle | None = None

        def keep_alive() -> None:
            # Resets the MTA's timer (Postfix milter_content_timeout) while we scan.
            nonlocal timer
            if not self.transport.is_closing():
                self.transport.write(_PROGRESS)
            timer = loop.call_later(progress, keep_alive)

        try:
            coroutine = self.server.handler.end_of_message(message)
            try:
                # Its first step, here: a decision with nothing to wait for (no detector that
                # waits, the verdict hooks on the loop) needs no keep-alive timer to set and
                # cancel. One that does not wait could not be interrupted to send one either.
                waiting = coroutine.send(None)
            except StopIteration as done:
                result: MilterResult = done.value
                return result
            timer = loop.call_later(progress, keep_alive)
            resumed: MilterResult = await Resumed(coroutine, waiting)
            return resumed
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("milter: deciding about %s failed; tempfail", message.queue_id)
            return MilterResult("tempfail", 451, "4.3.0 Temporary content filter failure")
        finally:
            if timer is not None:
                timer.cancel()

    def _allowed(self, flag: int, what: str) -> bool:
        if self.actions & flag:
            return True
        log.warning("milter: the MTA did not allow %s; skipped", what)
        return False

    def _send_result(self, r: MilterResult) -> None:
        space = " " if self.protocol & P_HDR_LEADSPC else ""
        out: list[bytes] = []
        if r.add_headers and self._allowed(F_ADDHDRS, "adding headers"):
            out += [
                encode_packet(R_ADDHEADER, encode_cstrings(n, space + v)) for n, v in r.add_headers
            ]
        if r.insert_headers and self._allowed(F_ADDHDRS, "inserting headers"):
            out += [
                encode_packet(R_INSHEADER, struct.pack("!I", i) + encode_cstrings(n, space + v))
                for i, n, v in r.insert_headers
            ]
        if r.change_headers and self._allowed(F_CHGHDRS, "changing headers"):
            out += [
                encode_packet(
                    R_CHGHEADER, struct.pack("!I", i) + encode_cstrings(n, space + v if v else "")
                )
                for n, i, v in r.change_headers
            ]
        if r.body is not None and self._allowed(F_CHGBODY, "replacing the body"):
            body = r.body or b""
            out += [
                encode_packet(R_REPLBODY, body[i : i + CHUNK]) for i in range(0, len(body), CHUNK)
            ] or [encode_packet(R_REPLBODY)]
        if r.sender is not None and self._allowed(F_CHGFROM, "changing the sender"):
            out.append(encode_packet(R_CHGFROM, encode_cstrings(r.sender)))
        if r.add_recipients and self._allowed(F_ADDRCPT, "adding recipients"):
            out += [encode_packet(R_ADDRCPT, encode_cstrings(a)) for a in r.add_recipients]
        if r.delete_recipients and self._allowed(F_DELRCPT, "deleting recipients"):
            out += [encode_packet(R_DELRCPT, encode_cstrings(a)) for a in r.delete_recipients]
        if r.quarantine is not None and self._allowed(F_QUARANTINE, "quarantine"):
            out.append(encode_packet(R_QUARANTINE, encode_cstrings(r.quarantine or "held")))
        if r.reply in ("reject", "tempfail") and r.code is not None:
            out.append(encode_replycode(r.code, r.text))
        else:
            out.append(_FINAL[r.reply])
        self.transport.write(b"".join(out))


# Each command byte's handler (BODY and EOB go to :meth:`_Session.body`, OPTNEG is handled
# first); a byte not here is an unknown command.
_HANDLERS: dict[int, Callable[[_Session, bytearray], bool]] = {
    ord(code): handler
    for code, handler in (
        (ABORT, _Session._abort),
        (CONNECT, _Session._connect),
        (MACRO, _Session._macro),
        (HELO, _Session._helo),
        (QUIT_NC, _Session._quit_nc),
        (HEADER, _Session._header),
        (MAIL, _Session._mail),
        (EOH, _Session._end_of_headers),
        (QUIT, _Session._quit),
        (RCPT, _Session._rcpt),
        (DATA, _Session._data),
        (UNKNOWN, _Session._unknown),
    )
}

"""The milter ingress: a Sendmail/Postfix milter (protocol version 6) server on asyncio.

The MTA keeps the message and the SMTP session; we answer once per message at end-of-body
(EOB), after the headers and body chunks have been reassembled and scanned once. Replies
are accept, reject or tempfail with our own code and text (SMFIR_REPLYCODE), discard, or
quarantine (SMFIR_QUARANTINE: Postfix's hold queue), preceded by end-of-message changes
(headers added, changed or inserted, body replaced, sender changed, recipients added or
deleted).

Written by hand rather than on a library: pymilter needs libmilter and a thread per
connection, purepythonmilter has no progress replies, no UNIX sockets and no state across
stages, and the protocol is small (docs/embedding.md). The codec below is pure functions
(``split_packets``, ``decode_command``, the ``encode_*`` helpers) so that it can be tested on
its own, fuzzed with hypothesis, and reused by a test MTA.

Wire format (Sendmail mfdef.h, Postfix milter8.c): ``u32 length`` (network order, counting
the command byte), one command byte, then ``length - 1`` bytes of data; strings end in NUL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from mailwarden_native import parse
from mailwarden_sdk import ActionKind, Envelope, run_cpu_bound

from ..greylist import in_networks
from .tcp import listening_socket, quick_ack, quickack_socket

if TYPE_CHECKING:
    from ..pipeline import Decision, Gateway

__all__ = [
    "GatewayMilter",
    "MilterHandler",
    "MilterMessage",
    "MilterProtocolError",
    "MilterResult",
    "MilterServer",
    "decode_command",
    "encode_packet",
    "split_packets",
    "start_milter_server",
]

log = logging.getLogger(__name__)

VERSION = 6

# Commands from the MTA (SMFIC_*).
ABORT, BODY, CONNECT, MACRO, BODYEOB, HELO = "A", "B", "C", "D", "E", "H"
QUIT_NC, HEADER, MAIL, EOH, OPTNEG, QUIT = "K", "L", "M", "N", "O", "Q"
RCPT, DATA, UNKNOWN = "R", "T", "U"

# Replies and end-of-message changes (SMFIR_*).
R_ADDRCPT, R_DELRCPT, R_ADDRCPT_PAR, R_SHUTDOWN = "+", "-", "2", "4"
R_ACCEPT, R_REPLBODY, R_CONTINUE, R_DISCARD, R_CHGFROM = "a", "b", "c", "d", "e"
R_CONN_FAIL, R_ADDHEADER, R_INSHEADER, R_CHGHEADER = "f", "h", "i", "m"
R_PROGRESS, R_QUARANTINE, R_REJECT, R_SKIP, R_TEMPFAIL, R_REPLYCODE = "p", "q", "r", "s", "t", "y"

# Actions the filter may take (SMFIF_*).
F_ADDHDRS, F_CHGBODY, F_ADDRCPT, F_DELRCPT = 0x1, 0x2, 0x4, 0x8
F_CHGHDRS, F_QUARANTINE, F_CHGFROM, F_ADDRCPT_PAR, F_SETSYMLIST = 0x10, 0x20, 0x40, 0x80, 0x100

# Protocol steps (SMFIP_*): NO* the MTA skips a stage, NR_* we send no reply to it.
P_NOCONNECT, P_NOHELO, P_NOMAIL, P_NORCPT, P_NOBODY, P_NOHDRS = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
P_NOEOH, P_NR_HDR, P_NOUNKNOWN, P_NODATA, P_SKIP, P_RCPT_REJ = (
    0x40,
    0x80,
    0x100,
    0x200,
    0x400,
    0x800,
)
P_NR_CONN, P_NR_HELO, P_NR_MAIL, P_NR_RCPT = 0x1000, 0x2000, 0x4000, 0x8000
P_NR_DATA, P_NR_UNKN, P_NR_EOH, P_NR_BODY = 0x10000, 0x20000, 0x40000, 0x80000
P_HDR_LEADSPC = 0x100000

# Everything we can do at end of message; the MTA's offer trims it.
WANTED_ACTIONS = (
    F_ADDHDRS | F_CHGBODY | F_ADDRCPT | F_DELRCPT | F_CHGHDRS | F_QUARANTINE | F_CHGFROM
)
WANTED_ACTIONS |= F_ADDRCPT_PAR | F_SETSYMLIST
# We decide once, at EOB, so no earlier stage needs a reply: each NR_* saves a round trip
# per command. HDR_LEADSPC keeps header values byte-exact for the reassembled message.
WANTED_PROTOCOL = (
    P_NR_CONN | P_NR_HELO | P_NR_MAIL | P_NR_RCPT | P_NR_DATA | P_NR_UNKN | P_NR_EOH | P_NR_BODY
)
WANTED_PROTOCOL |= P_NR_HDR | P_HDR_LEADSPC
# Stages we have no use for are not sent at all: DATA and end-of-headers carry nothing the
# message does not, unknown commands are the MTA's business. Two packets and their macro
# packets fewer per message for the MTA to write and for us to read.
WANTED_PROTOCOL |= P_NODATA | P_NOEOH | P_NOUNKNOWN

# The stage each no-reply flag covers.
_NO_REPLY = {
    CONNECT: P_NR_CONN,
    HELO: P_NR_HELO,
    MAIL: P_NR_MAIL,
    RCPT: P_NR_RCPT,
    DATA: P_NR_DATA,
    UNKNOWN: P_NR_UNKN,
    EOH: P_NR_EOH,
    HEADER: P_NR_HDR,
    BODY: P_NR_BODY,
}

# Macros asked for per stage with SETSYMLIST (stage number, names). Postfix replaces its own
# lists with these, so each names everything the envelope is built from.
MACROS: dict[int, str] = {
    0: "j _ {daemon_name} {client_addr} {client_name} {client_port} {client_ptr}",
    1: "{tls_version} {cipher}",
    2: "i {auth_authen} {mail_addr}",
    3: "{rcpt_addr}",
    5: "i",
}

# Body chunks we send are at most this (MILTER_CHUNK_SIZE, Postfix milter8.c).
CHUNK = 65535
# A packet larger than this is a broken or hostile peer (the MTA's largest is a body chunk).
MAX_PACKET = 1 << 20
# Macro values are names and addresses (Postfix's longest are a few hundred bytes). Without a
# cap, 500 MACRO packets of 1 MB with new names kept 463 MB; past either cap the connection is
# closed with a log line, and the MTA applies its milter_default_action (tempfail).
MAX_MACRO_PACKET = 64 * 1024
MAX_MACRO_BYTES = 256 * 1024

_COMMANDS = frozenset("ABCDEHKLMNOQRTU")


class MilterProtocolError(ValueError):
    """A packet that does not follow the milter protocol; the connection is closed."""


# -- codec -------------------------------------------------------------------------------------


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and a dozen
# commands are decoded per message.
@dataclass(slots=True)
class Command:
    """One decoded command from the MTA. Which fields are set depends on ``code``."""

    code: str
    args: tuple[str, ...] = ()
    data: bytes = b""
    version: int = 0
    actions: int = 0
    protocol: int = 0
    stage: str = ""
    macros: tuple[tuple[str, str], ...] = ()
    family: str = ""
    port: int = 0


def encode_packet(code: str, data: bytes = b"") -> bytes:
    """One packet: length, command byte, data."""
    return struct.pack("!I", len(data) + 1) + code.encode("latin-1") + data


def split_packets(buffer: bytes, limit: int = MAX_PACKET) -> tuple[list[tuple[str, bytes]], bytes]:
    """The complete packets at the start of ``buffer`` and the bytes left over.

    Raises :class:`MilterProtocolError` for a length of zero or above ``limit``.
    """
    packets: list[tuple[str, bytes]] = []
    offset = 0
    while (packet := next_packet(buffer, offset, limit)) is not None:
        code, data, offset = packet
        packets.append((code, data))
    return packets, bytes(buffer[offset:])


def next_packet(
    buffer: bytes | bytearray, offset: int, limit: int = MAX_PACKET
) -> tuple[str, bytes, int] | None:
    """The packet starting at ``offset`` (command, data, offset after it), or ``None`` while
    it is incomplete. Raises :class:`MilterProtocolError` for a length of zero or above
    ``limit`` as soon as the length is known."""
    if len(buffer) - offset < 4:
        return None
    (length,) = struct.unpack_from("!I", buffer, offset)
    check_length(length, limit)
    start = offset + 4
    end = start + length
    if len(buffer) < end:
        return None
    return chr(buffer[start]), bytes(buffer[start + 1 : end]), end


def check_length(length: int, limit: int = MAX_PACKET) -> None:
    """Refuse a packet length that cannot be valid before reading its data."""
    if length < 1:
        raise MilterProtocolError("packet of length 0 (no command byte)")
    if length > limit:
        raise MilterProtocolError(f"packet of {length} bytes exceeds the limit of {limit}")


def _text(raw: bytes) -> str:
    # Addresses and header values may carry 8-bit bytes; surrogateescape keeps them exact.
    return raw.decode("utf-8", "surrogateescape")


def _cstrings(data: bytes, what: str) -> list[str]:
    if not data:
        return []
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: string not NUL-terminated")
    return [_text(part) for part in data[:-1].split(b"\0")]


def decode_command(code: str, data: bytes) -> Command:
    """Decode the payload of one command; :class:`MilterProtocolError` when it is malformed."""
    if code not in _COMMANDS:
        raise MilterProtocolError(f"unknown command {code!r}")
    if code == OPTNEG:
        if len(data) < 12:
            raise MilterProtocolError(f"OPTNEG: {len(data)} bytes, need 12")
        version, actions, protocol = struct.unpack_from("!III", data)
        return Command(code, version=version, actions=actions, protocol=protocol)
    if code == MACRO:
        if not data:
            raise MilterProtocolError("MACRO without a stage")
        pairs = _cstrings(data[1:], "MACRO")
        if len(pairs) % 2:
            raise MilterProtocolError("MACRO: a name without a value")
        macros = tuple(zip(pairs[::2], pairs[1::2], strict=True))
        return Command(code, stage=chr(data[0]), macros=macros)
    if code == CONNECT:
        end = data.find(b"\0")
        if end < 0 or len(data) < end + 2:
            raise MilterProtocolError("CONNECT: no host name or family")
        host, family = _text(data[:end]), chr(data[end + 1])
        if family == "U":
            return Command(code, args=(host, ""), family=family)
        rest = data[end + 2 :]
        if len(rest) < 3 or family not in "L46":
            raise MilterProtocolError(f"CONNECT: bad family {family!r} or address")
        (port,) = struct.unpack_from("!H", rest)
        address = _cstrings(rest[2:], "CONNECT")
        if len(address) != 1:
            raise MilterProtocolError("CONNECT: address is not one string")
        return Command(code, args=(host, address[0]), family=family, port=port)
    if code in (HELO, MAIL, RCPT, UNKNOWN):
        args = _cstrings(data, code)
        if not args:
            raise MilterProtocolError(f"command {code!r} without an argument")
        return Command(code, args=tuple(args))
    if code == HEADER:
        parts = _cstrings(data, "HEADER")
        if len(parts) != 2:
            raise MilterProtocolError("HEADER: need a name and a value")
        return Command(code, args=(parts[0], parts[1]))
    # BODY, and EOB which may carry a last chunk (Sendmail); the rest carry nothing.
    return Command(code, data=data if code in (BODY, BODYEOB) else b"")


def encode_optneg(version: int, actions: int, protocol: int, macros: dict[int, str]) -> bytes:
    """Our OPTNEG reply, with the macro lists per stage when SETSYMLIST was agreed."""
    data = struct.pack("!III", version, actions, protocol)
    if actions & F_SETSYMLIST:
        for stage, names in sorted(macros.items()):
            data += struct.pack("!I", stage) + names.encode("ascii") + b"\0"
    return encode_packet(OPTNEG, data)


def _cs(*values: str) -> bytes:
    return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)


def encode_replycode(code: int, text: str) -> bytes:
    """SMFIR_REPLYCODE: ``"550 5.7.1 text"``; ``%`` is doubled (the MTA formats it)."""
    if not 400 <= code <= 599:
        raise ValueError(f"a milter reply code must be 4xx or 5xx, not {code}")
    clean = " ".join(text.split()).replace("%", "%%")
    return encode_packet(R_REPLYCODE, _cs(f"{code} {clean}"))


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
        out = bytearray()
        for name, value in self.headers:
            sep = ":" if self.leading_space else ": "
            out += (name + sep + value).encode("utf-8", "surrogateescape")
            out += b"\r\n"
        out += b"\r\n"
        out += self.body
        # Postfix sends folded header lines joined by a bare LF; make every line end CR LF.
        return bytes(out).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


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
    """Serves the milter protocol for ``handler``; one :class:`_Connection` per MTA connection."""

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

    def _connection(self) -> _Connection:
        return _Connection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        """Listen on TCP ``host:port``."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self._connection, sock=listening_socket(host, port, reuse_port)
        )

    async def start_unix(self, path: str) -> asyncio.Server:
        """Listen on a UNIX socket (Postfix ``unix:path``); a stale socket file is replaced."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.get_running_loop().create_unix_server(self._connection, path=path)
        # The MTA runs as its own user; the socket's directory is what protects it.
        os.chmod(path, 0o666)
        return server


class _Connection(asyncio.Protocol):
    """One MTA connection: packets are decoded and handled as they arrive, in one call.

    A protocol rather than a stream reader with a task: with the no-reply flags the MTA sends
    a dozen small packets per message, and two awaits and a timeout context per packet were
    most of the milter's CPU time (Postfix + milter, 1 KiB messages). Every command but
    end-of-body is answered (or not) synchronously; at end-of-body reading pauses until the
    decision has been sent, as the MTA sends nothing more before it.
    """

    def __init__(self, server: MilterServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.session: _Session | None = None
        self.peer: object = "unix"
        self.buffer = bytearray()
        self.deciding: asyncio.Task[None] | None = None
        self.counted = False
        self.quickack: socket.socket | None = None
        self.last_seen = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or "unix"
        server = self.server
        if server.connections >= server.max_connections:
            # The MTA applies its milter_default_action; for Postfix's tempfail nothing is lost.
            log.warning("milter: refusing %s: %d connections open", self.peer, server.connections)
            transport.close()
            return
        server.connections += 1
        self.counted = True
        self.session = _Session(server, transport)
        self.quickack = quickack_socket(transport)
        self.idle_timer = self.loop.call_at(self.last_seen + server.timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.quickack is not None:
            # With the NR_* flags the MTA writes several packets per stage without waiting
            # for a reply: acknowledge at once so its next write does not wait (tcp.py).
            quick_ack(self.quickack)
        self.last_seen = self.loop.time()
        self.buffer += data
        if self.deciding is None:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("milter: connection from %s lost: %r", self.peer, exc)
        elif self.buffer and self.deciding is None:
            log.warning("milter: %s closed the connection inside a packet", self.peer)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
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
        try:
            while (packet := next_packet(buffer, offset)) is not None:
                code, data, offset = packet
                if session.handle(decode_command(code, data)):
                    # End of body: decide, then go on with what the MTA sent after it.
                    del buffer[:offset]
                    offset = 0
                    transport.pause_reading()
                    self.deciding = self.loop.create_task(self._decide())
                    return
        except _Closed:
            transport.close()
        except MilterProtocolError as exc:
            log.warning("milter: closing the connection from %s: %s", self.peer, exc)
            buffer.clear()
            transport.close()
        finally:
            del buffer[:offset]

    async def _decide(self) -> None:
        assert self.session is not None and self.transport is not None
        try:
            await self.session.end_of_message()
        finally:
            self.deciding = None
            self.last_seen = self.loop.time()
            if not self.transport.is_closing():
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


class _Closed(Exception):
    """The session ends (QUIT)."""


class _Session:
    """The state of one milter connection (one SMTP session, or several with QUIT_NC)."""

    def __init__(self, server: MilterServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self.actions = 0
        self.protocol = 0
        self.negotiated = False
        self.connection = MilterMessage()
        self.message = MilterMessage()
        self.in_message = False
        self.pending: MilterMessage | None = None

    def reply(self, code: str, stage: str) -> None:
        if not self.protocol & _NO_REPLY.get(stage, 0):
            self.transport.write(encode_packet(code))

    def _new_message(self) -> MilterMessage:
        c = self.connection
        return MilterMessage(
            macros=dict(c.macros),
            hostname=c.hostname,
            family=c.family,
            address=c.address,
            port=c.port,
            helo=c.helo,
            leading_space=bool(self.protocol & P_HDR_LEADSPC),
        )

    def handle(self, cmd: Command) -> bool:
        """Handle one command; ``True`` at end of body, when :meth:`end_of_message` is due."""
        code = cmd.code
        if code == OPTNEG:
            self._optneg(cmd)
            return False
        if not self.negotiated:
            raise MilterProtocolError(f"command {code!r} before option negotiation")
        if code == MACRO:
            self._check_macros(cmd.macros)
            target = self.message if self.in_message or cmd.stage in "MRTLNEB" else None
            for name, value in cmd.macros:
                # Postfix sends "{name}" and Sendmail sometimes "name": store one form.
                key = name[1:-1] if name.startswith("{") and name.endswith("}") else name
                (target or self.connection).macros[key] = value
                if target is None:
                    self.message.macros[key] = value
            return False
        if code == CONNECT:
            c = self.connection
            c.hostname, c.address, c.family, c.port = cmd.args[0], cmd.args[1], cmd.family, cmd.port
            self.message = self._new_message()
        elif code == HELO:
            self.connection.helo = self.message.helo = cmd.args[0]
        elif code == MAIL:
            macros = self.message.macros
            self.message = self._new_message()
            self.message.macros.update(macros)
            self.in_message = True
            self.message.sender, self.message.sender_args = cmd.args[0], list(cmd.args[1:])
        elif code == RCPT:
            self.message.recipients.append((cmd.args[0], list(cmd.args[1:])))
        elif code == HEADER:
            self._count(len(cmd.args[0]) + len(cmd.args[1]) + 4)
            if not self.message.oversized:
                self.message.headers.append((cmd.args[0], cmd.args[1]))
        elif code == BODY:
            self._body(cmd.data)
        elif code == BODYEOB:
            self._body(cmd.data)
            self.pending, self.message = self.message, self._new_message()
            self.in_message = False
            return True
        elif code == ABORT:
            self.message = self._new_message()
            self.in_message = False
            return False
        elif code == QUIT:
            raise _Closed
        elif code == QUIT_NC:
            # The MTA keeps the connection for a new SMTP session: forget this one's state.
            self.connection = MilterMessage()
            self.message = self._new_message()
            self.in_message = False
            return False
        self.reply(R_CONTINUE, code)
        return False

    def _check_macros(self, pairs: tuple[tuple[str, str], ...]) -> None:
        size = sum(len(name) + len(value) for name, value in pairs)
        if size > MAX_MACRO_PACKET:
            raise MilterProtocolError(
                f"MACRO packet of {size} bytes exceeds the limit of {MAX_MACRO_PACKET}"
            )
        # Both stores may keep a pair (connection-stage macros are copied into the message).
        kept = sum(
            len(name) + len(value)
            for macros in (self.connection.macros, self.message.macros)
            for name, value in macros.items()
        )
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

    def _body(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._count(len(chunk))
        if not self.message.oversized:
            self.message.body += chunk

    def _optneg(self, cmd: Command) -> None:
        if cmd.version < 2:
            raise MilterProtocolError(f"MTA speaks milter protocol {cmd.version}; need 2 or more")
        version = min(cmd.version, VERSION)
        self.actions = WANTED_ACTIONS & cmd.actions
        self.protocol = self.server.wanted_protocol & cmd.protocol
        self.negotiated = True
        self.transport.write(encode_optneg(version, self.actions, self.protocol, MACROS))

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
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def keep_alive() -> None:
            # Resets the MTA's timer (Postfix milter_content_timeout) while we scan.
            nonlocal timer
            if not self.transport.is_closing():
                self.transport.write(encode_packet(R_PROGRESS))
            timer = loop.call_later(progress, keep_alive)

        timer = loop.call_later(progress, keep_alive)
        try:
            return await self.server.handler.end_of_message(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("milter: deciding about %s failed; tempfail", message.queue_id)
            return MilterResult("tempfail", 451, "4.3.0 Temporary content filter failure")
        finally:
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
            out += [encode_packet(R_ADDHEADER, _cs(n, space + v)) for n, v in r.add_headers]
        if r.insert_headers and self._allowed(F_ADDHDRS, "inserting headers"):
            out += [
                encode_packet(R_INSHEADER, struct.pack("!I", i) + _cs(n, space + v))
                for i, n, v in r.insert_headers
            ]
        if r.change_headers and self._allowed(F_CHGHDRS, "changing headers"):
            out += [
                encode_packet(R_CHGHEADER, struct.pack("!I", i) + _cs(n, space + v if v else ""))
                for n, i, v in r.change_headers
            ]
        if r.body is not None and self._allowed(F_CHGBODY, "replacing the body"):
            body = r.body or b""
            out += [
                encode_packet(R_REPLBODY, body[i : i + CHUNK]) for i in range(0, len(body), CHUNK)
            ] or [encode_packet(R_REPLBODY)]
        if r.sender is not None and self._allowed(F_CHGFROM, "changing the sender"):
            out.append(encode_packet(R_CHGFROM, _cs(r.sender)))
        if r.add_recipients and self._allowed(F_ADDRCPT, "adding recipients"):
            out += [encode_packet(R_ADDRCPT, _cs(a)) for a in r.add_recipients]
        if r.delete_recipients and self._allowed(F_DELRCPT, "deleting recipients"):
            out += [encode_packet(R_DELRCPT, _cs(a)) for a in r.delete_recipients]
        if r.quarantine is not None and self._allowed(F_QUARANTINE, "quarantine"):
            out.append(encode_packet(R_QUARANTINE, _cs(r.quarantine or "held")))
        if r.reply in ("reject", "tempfail") and r.code is not None:
            out.append(encode_replycode(r.code, r.text))
        else:
            final = {
                "accept": R_ACCEPT,
                "continue": R_CONTINUE,
                "reject": R_REJECT,
                "tempfail": R_TEMPFAIL,
                "discard": R_DISCARD,
            }[r.reply]
            out.append(encode_packet(final))
        self.transport.write(b"".join(out))


# -- the gateway as a milter handler ----------------------------------------------------------


def _address(value: str) -> str:
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


class GatewayMilter:
    """Scans with the gateway and turns its decision into milter changes and a reply.

    The MTA answers once for all recipients. When they fall under different rules each rule's
    scan runs; if every rule refuses, the refusal is the answer (a temporary one wins, so
    nothing is lost); otherwise the message is accepted and the recipients whose rule refuses,
    discards or quarantines are deleted from it (SMFIR_DELRCPT) - the per-recipient policy the
    protocol allows.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        quarantine: Literal["store", "hold"] = "store",
        on_decision: Callable[[Decision], Awaitable[None]] | None = None,
    ) -> None:
        self.gateway = gateway
        self.quarantine = quarantine
        self._on_decision = on_decision
        self._trusted = [
            ipaddress.ip_network(n, strict=False) for n in gateway.config.smtp.trusted_networks
        ]

    def envelope(self, m: MilterMessage) -> Envelope:
        """What the MTA told us, as the gateway's envelope."""
        macros = m.macros
        address = macros.get("client_addr") or (m.address if m.family in "46" else None)
        return Envelope(
            mail_from=_address(m.sender),
            rcpt_to=[_address(r) for r, _ in m.recipients],
            client_address=address or None,
            client_name=macros.get("client_name") or m.hostname or None,
            helo=m.helo or None,
            queue_id=m.queue_id,
            tls=bool(macros.get("tls_version")),
            authenticated_user=macros.get("auth_authen") or None,
        )

    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        from ..pipeline import settle

        gateway = self.gateway
        raw = message.raw()
        envelope = self.envelope(message)
        refused = await self._policy_steps(envelope, len(raw))
        if refused is not None:
            return refused
        groups = gateway.split_recipients(envelope)
        parsed = await run_cpu_bound(len(raw), parse, raw)
        decisions = [await gateway.scan(raw, env, message=parsed) for _, env in groups]
        try:
            await gateway.outbox.keep_backups(decisions)
        except Exception as exc:
            # Nothing is changed or dropped without its copy: the MTA keeps the message.
            log.warning("milter: cannot keep a backup copy: %r", exc)
            return MilterResult("tempfail", 451, "4.3.0 Cannot keep a backup copy now")
        refusal = settle(decisions)
        if refusal is not None:
            temporary = refusal.action.kind is ActionKind.TEMPFAIL
            result = MilterResult(
                "tempfail" if temporary else "reject",
                refusal.action.smtp_code,
                refusal.action.smtp_text,
            )
            for d in decisions:
                self._record(d, f"{result.code} {result.text}")
            return result
        if len(decisions) == 1:
            result = await self._single(decisions[0])
        else:
            result = MilterResult("accept")
            by_address = {_address(r): r for r, _ in message.recipients}
            for d in decisions:
                if d.action.kind is ActionKind.DELIVER:
                    continue
                if d.action.kind is ActionKind.QUARANTINE:
                    # The MTA's hold queue holds a message for everyone: a part is ours.
                    await gateway.outbox.hold(d)
                result.delete_recipients += [by_address.get(r, r) for r in d.envelope.rcpt_to]
            delivered = [d for d in decisions if d.action.kind is ActionKind.DELIVER]
            if delivered:
                self._tag(result, delivered[0])
            else:
                result = MilterResult("discard")
        for d in decisions:
            self._record(d, f"{d.action.smtp_code} {d.action.smtp_text}")
        return result

    async def _policy_steps(self, envelope: Envelope, size: int) -> MilterResult | None:
        """Greylisting and rate limits before the scan, answered at the end of the message:
        the MTA tempfails the whole message when one recipient's triplet is deferred (each
        triplet is recorded, so the retry passes for all). "Trusted" is ``[smtp]
        trusted_networks``; authenticated is the MTA's ``{auth_authen}``."""
        steps = self.gateway.policy_steps
        client = envelope.client_address
        trusted = in_networks(client, self._trusted)
        reply = None
        for recipient in envelope.rcpt_to:
            deferred = await steps.at_recipient(
                envelope.mail_from,
                recipient,
                client,
                authenticated=envelope.authenticated_user is not None,
                trusted=trusted,
            )
            reply = reply or deferred
        reply = reply or await steps.at_message(envelope.mail_from, client, envelope.rcpt_to, size)
        if reply is None:
            return None
        code, _, text = reply.partition(" ")
        return MilterResult("tempfail", int(code), text)

    async def _single(self, d: Decision) -> MilterResult:
        kind = d.action.kind
        result = MilterResult("accept")
        if kind is ActionKind.DELIVER:
            self._tag(result, d)
        elif kind is ActionKind.QUARANTINE and self.quarantine == "hold":
            result.add_headers = d.added_headers()
            result.quarantine = f"mailwarden {d.action.reason} {d.id[:12]}"
        elif kind is ActionKind.QUARANTINE:
            await self.gateway.outbox.hold(d)
            result = MilterResult("discard")
        else:
            result = MilterResult("discard")
        return result

    @staticmethod
    def _tag(result: MilterResult, d: Decision) -> None:
        result.add_headers = d.added_headers()
        subject = d.tagged_subject()
        if subject is not None and d.message.subject:
            result.change_headers.append(("Subject", 1, subject))
        elif subject is not None:
            result.add_headers.append(("Subject", subject))

    def _record(self, decision: Decision, reply: str) -> None:
        self.gateway.record(decision, ingress="milter", reply=reply)


async def start_milter_server(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen as ``[milter]`` says (TCP, or a UNIX socket when ``unix_socket`` is set)."""
    cfg = gateway.config.milter
    server = MilterServer(
        GatewayMilter(gateway, quarantine=cfg.quarantine),
        max_message_size=cfg.max_message_size,
        max_connections=cfg.max_connections,
        timeout=cfg.timeout,
        progress_interval=cfg.progress_interval,
    )
    if cfg.unix_socket:
        return await server.start_unix(str(gateway.config.path_in_home(cfg.unix_socket)))
    return await server.start(cfg.listen, cfg.port, reuse_port=reuse_port)

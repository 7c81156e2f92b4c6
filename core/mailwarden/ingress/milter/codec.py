"""The milter wire codec (protocol version 6): pure functions, so that it can be tested on its
own, fuzzed with hypothesis, and reused by a test MTA.

Wire format (Sendmail mfdef.h, Postfix milter8.c): ``u32 length`` (network order, counting
the command byte), one command byte, then ``length - 1`` bytes of data; strings end in NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "ABORT",
    "BODY",
    "BODYEOB",
    "CHUNK",
    "CONNECT",
    "DATA",
    "EOH",
    "F_ADDHDRS",
    "F_ADDRCPT",
    "F_ADDRCPT_PAR",
    "F_CHGBODY",
    "F_CHGFROM",
    "F_CHGHDRS",
    "F_DELRCPT",
    "F_QUARANTINE",
    "F_SETSYMLIST",
    "HEADER",
    "HELO",
    "MACRO",
    "MACROS",
    "MAIL",
    "MAX_MACRO_BYTES",
    "MAX_MACRO_PACKET",
    "MAX_PACKET",
    "NO_REPLY",
    "OPTNEG",
    "P_HDR_LEADSPC",
    "P_NOBODY",
    "P_NOCONNECT",
    "P_NODATA",
    "P_NOEOH",
    "P_NOHDRS",
    "P_NOHELO",
    "P_NOMAIL",
    "P_NORCPT",
    "P_NOUNKNOWN",
    "P_NR_BODY",
    "P_NR_CONN",
    "P_NR_DATA",
    "P_NR_EOH",
    "P_NR_HDR",
    "P_NR_HELO",
    "P_NR_MAIL",
    "P_NR_RCPT",
    "P_NR_UNKN",
    "P_RCPT_REJ",
    "P_SKIP",
    "QUIT",
    "QUIT_NC",
    "RCPT",
    "R_ACCEPT",
    "R_ADDHEADER",
    "R_ADDRCPT",
    "R_ADDRCPT_PAR",
    "R_CHGFROM",
    "R_CHGHEADER",
    "R_CONN_FAIL",
    "R_CONTINUE",
    "R_DELRCPT",
    "R_DISCARD",
    "R_INSHEADER",
    "R_PROGRESS",
    "R_QUARANTINE",
    "R_REJECT",
    "R_REPLBODY",
    "R_REPLYCODE",
    "R_SHUTDOWN",
    "R_SKIP",
    "R_TEMPFAIL",
    "UNKNOWN",
    "VERSION",
    "WANTED_ACTIONS",
    "WANTED_PROTOCOL",
    "Command",
    "MilterProtocolError",
    "check_length",
    "decode_args",
    "decode_command",
    "decode_connect",
    "decode_header",
    "decode_macros",
    "decode_optneg",
    "encode_cstrings",
    "encode_optneg",
    "encode_packet",
    "encode_replycode",
    "next_packet",
    "packet_end",
    "split_packets",
]

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
NO_REPLY = {
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
    end = packet_end(buffer, offset, limit)
    if end < 0:
        return None
    return chr(buffer[offset + 4]), bytes(buffer[offset + 5 : end]), end


def packet_end(buffer: bytes | bytearray, offset: int, limit: int = MAX_PACKET) -> int:
    """Where the packet starting at ``offset`` ends, or -1 while it is incomplete; its
    command byte is at ``offset + 4``, its data from ``offset + 5``. Raises
    :class:`MilterProtocolError` for a length of zero or above ``limit`` as soon as the
    length is known. Allocates nothing, for a reader that slices the data itself."""
    if len(buffer) - offset < 4:
        return -1
    length = _LENGTH(buffer, offset)[0]
    if not 0 < length <= limit:
        check_length(length, limit)
    end = offset + 4 + length
    return end if end <= len(buffer) else -1


_LENGTH = struct.Struct("!I").unpack_from


def check_length(length: int, limit: int = MAX_PACKET) -> None:
    """Refuse a packet length that cannot be valid before reading its data."""
    if length < 1:
        raise MilterProtocolError("packet of length 0 (no command byte)")
    if length > limit:
        raise MilterProtocolError(f"packet of {length} bytes exceeds the limit of {limit}")


# Addresses and header values may carry 8-bit bytes; surrogateescape keeps them exact.
_ESCAPE = "surrogateescape"

# The data of a packet is bytes, or a bytearray slice when a reader cut it from its buffer:
# both have the methods used here.
Data: TypeAlias = bytes | bytearray


def _cstrings(data: Data, what: str) -> list[str]:
    if not data:
        return []
    if data[-1]:
        raise MilterProtocolError(f"{what}: string not NUL-terminated")
    # Decoded whole, then split: one string and the parts, not a slice and a bytes object
    # per part as well. The same strings: a NUL byte is never inside a UTF-8 sequence, and
    # surrogateescape decodes the bytes around it one by one when they are not UTF-8.
    return str(data, "utf-8", _ESCAPE)[:-1].split("\0")


def decode_optneg(data: Data) -> tuple[int, int, int]:
    """OPTNEG: the MTA's version, actions and protocol steps."""
    if len(data) < 12:
        raise MilterProtocolError(f"OPTNEG: {len(data)} bytes, need 12")
    version, actions, protocol = _OPTNEG(data)
    return version, actions, protocol


_OPTNEG = struct.Struct("!III").unpack_from


def decode_macros(data: Data) -> tuple[str, list[str]]:
    """MACRO: the stage and the names and values, alternating."""
    if not data:
        raise MilterProtocolError("MACRO without a stage")
    pairs = _cstrings(data[1:], "MACRO")
    if len(pairs) % 2:
        raise MilterProtocolError("MACRO: a name without a value")
    return chr(data[0]), pairs


def decode_connect(data: Data) -> tuple[str, str, str, int]:
    """CONNECT: host name, address, family (``4``, ``6``, ``L``, ``U``) and port."""
    end = data.find(b"\0")
    if end < 0 or len(data) < end + 2:
        raise MilterProtocolError("CONNECT: no host name or family")
    host, family = str(data[:end], "utf-8", _ESCAPE), chr(data[end + 1])
    if family == "U":
        return host, "", family, 0
    rest = data[end + 2 :]
    if len(rest) < 3 or family not in "L46":
        raise MilterProtocolError(f"CONNECT: bad family {family!r} or address")
    (port,) = struct.unpack_from("!H", rest)
    address = _cstrings(rest[2:], "CONNECT")
    if len(address) != 1:
        raise MilterProtocolError("CONNECT: address is not one string")
    return host, address[0], family, port


def decode_args(code: str, data: Data) -> list[str]:
    """HELO, MAIL, RCPT, UNKNOWN: the argument strings (the first is the command's)."""
    args = _cstrings(data, code)
    if not args:
        raise MilterProtocolError(f"command {code!r} without an argument")
    return args


def decode_header(data: Data) -> tuple[str, str]:
    """HEADER: name and value."""
    parts = _cstrings(data, "HEADER")
    if len(parts) != 2:
        raise MilterProtocolError("HEADER: need a name and a value")
    return parts[0], parts[1]


def decode_command(code: str, data: bytes) -> Command:
    """Decode the payload of one command; :class:`MilterProtocolError` when it is malformed."""
    if code not in _COMMANDS:
        raise MilterProtocolError(f"unknown command {code!r}")
    if code == OPTNEG:
        version, actions, protocol = decode_optneg(data)
        return Command(code, version=version, actions=actions, protocol=protocol)
    if code == MACRO:
        stage, pairs = decode_macros(data)
        macros = tuple(zip(pairs[::2], pairs[1::2], strict=True))
        return Command(code, stage=stage, macros=macros)
    if code == CONNECT:
        host, address, family, port = decode_connect(data)
        return Command(code, args=(host, address), family=family, port=port)
    if code in (HELO, MAIL, RCPT, UNKNOWN):
        return Command(code, args=tuple(decode_args(code, data)))
    if code == HEADER:
        return Command(code, args=decode_header(data))
    # BODY, and EOB which may carry a last chunk (Sendmail); the rest carry nothing.
    return Command(code, data=data if code in (BODY, BODYEOB) else b"")


def encode_optneg(version: int, actions: int, protocol: int, macros: dict[int, str]) -> bytes:
    """Our OPTNEG reply, with the macro lists per stage when SETSYMLIST was agreed."""
    data = struct.pack("!III", version, actions, protocol)
    if actions & F_SETSYMLIST:
        for stage, names in sorted(macros.items()):
            data += struct.pack("!I", stage) + names.encode("ascii") + b"\0"
    return encode_packet(OPTNEG, data)


def encode_cstrings(*values: str) -> bytes:
    return b"".join([v.encode("utf-8", _ESCAPE) + b"\0" for v in values])


def encode_replycode(code: int, text: str) -> bytes:
    """SMFIR_REPLYCODE: ``"550 5.7.1 text"``; ``%`` is doubled (the MTA formats it)."""
    if not 400 <= code <= 599:
        raise ValueError(f"a milter reply code must be 4xx or 5xx, not {code}")
    clean = " ".join(text.split()).replace("%", "%%")
    return encode_packet(R_REPLYCODE, encode_cstrings(f"{code} {clean}"))

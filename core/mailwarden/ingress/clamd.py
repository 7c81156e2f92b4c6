"""clamd's protocol, answered with our antivirus: ``clamdscan --stream``, Exim's
``av_scanner = clamd:HOST PORT`` and any other clamd client scan through mailwarden.

Commands (docs.clamav.net "clamd" manual): ``zCMD\\0`` (reply ends in NUL), ``nCMD\\n`` and
the bare ``CMD\\n`` (reply ends in a newline). ``PING`` -> ``PONG``; ``VERSION``;
``VERSIONCOMMANDS``; ``INSTREAM`` then chunks of ``<4-byte big-endian length><bytes>`` ended
by a zero length; ``IDSESSION`` ... ``END`` (replies prefixed with the request number).
Path-based commands (SCAN, CONTSCAN, MULTISCAN, FILDES...) are not served: we do not read
the client's files. Anything else is ``UNKNOWN COMMAND``.

The stream is a file, not a mail message: it is scanned as the one attachment of a
wrapper message (:func:`file_as_message`), so type detection, archives and every engine
the rule runs apply. Replies, from the antivirus status:

- infected: ``stream: <signature> FOUND`` (the first name);
- suspicious: ``stream: <signature> FOUND`` (or ``Mailwarden.Suspicious``);
- encrypted, corrupted, not scanned (a limit, an unsupported format):
  ``stream: Mailwarden.NotScanned.<Reason> FOUND``, as clamd reports its heuristics
  (``Heuristics.Encrypted.Zip``): what we could not look into is not called clean;
- an engine error, or no antivirus in the rule: ``stream: <why> ERROR``, which clients treat
  as a failure (Exim defers the message);
- clean: ``stream: OK``.

A leading mbox ``From`` line (Exim writes its scan file so) is dropped first, so that a
mail message is recognised as one. A stream over ``[clamd] max_size`` gets ``INSTREAM size
limit exceeded. ERROR`` and the connection is closed, as clamd does at StreamMaxLength.
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import TYPE_CHECKING

from mailwarden_sdk import AntivirusStatus, Envelope

from ..version import __version__
from .scan_protocols import ScanSession, file_as_message, read_timed, start_stream_listener

if TYPE_CHECKING:
    from ..pipeline import Decision, Gateway

__all__ = ["ClamdSession", "clamd_reply", "start_clamd"]

_COMMAND_MAX = 1024
_COMMANDS = "PING VERSION VERSIONCOMMANDS INSTREAM IDSESSION END"
_REASONS = {
    AntivirusStatus.ENCRYPTED: "Encrypted",
    AntivirusStatus.CORRUPTED: "Corrupted",
}


class _Close(Exception):
    """The reply was sent and the connection ends (clamd closes after an ERROR)."""


def clamd_reply(decision: Decision) -> str:
    """The ``stream: ...`` answer for a scanned stream (see the module docstring)."""
    verdict = decision.verdict
    status = verdict.antivirus
    if "detector.antivirus" not in decision.timings_ms:
        return "stream: no antivirus engine in rule " + decision.rule.name + " ERROR"
    if status is AntivirusStatus.INFECTED and verdict.virus_names:
        return f"stream: {_safe(verdict.virus_names[0])} FOUND"
    av = [f for f in verdict.findings if f.status == status.value and f.detector == "antivirus"]
    if status in (AntivirusStatus.INFECTED, AntivirusStatus.SUSPICIOUS):
        name = next((f.details["signature"] for f in av if f.details.get("signature")), "")
        return f"stream: {_safe(name or 'Mailwarden.Suspicious')} FOUND"
    if status is AntivirusStatus.NOT_SCANNED:
        limit = next((f.details.get("limit", "") for f in av if f.details.get("limit")), "")
        reason = _camel(limit) if limit else "Unsupported"
        return f"stream: Mailwarden.NotScanned.{reason} FOUND"
    if status in _REASONS:
        return f"stream: Mailwarden.NotScanned.{_REASONS[status]} FOUND"
    if status is AntivirusStatus.ERROR or "antivirus" in verdict.errors:
        return "stream: Mailwarden antivirus error ERROR"
    return "stream: OK"


_HEADER_LINE = re.compile(rb"[!-9;-~]+:")


def _without_mbox_line(data: bytes) -> bytes:
    # Exim streams its .eml with an mbox "From MAILER-DAEMON <date>" line first; with that
    # line the stream is not recognised as the mail message it is (EICAR inside was "OK").
    if data.startswith(b"From "):
        end = data.find(b"\n")
        if 0 < end < 1000 and _HEADER_LINE.match(data, end + 1):
            return data[end + 1 :]
    return data


def _camel(text: str) -> str:
    return "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", text) if w) or "Limit"


def _safe(name: str) -> str:
    # A reply is one line ending in NUL or LF: neither may come from a signature name.
    return re.sub(r"[\x00-\x1f]", "?", name)


class ClamdSession(ScanSession):
    """One client connection: commands in, replies out."""

    async def run(self) -> None:
        try:
            command, end = await self._command()
            if command == "IDSESSION":
                await self._session(end)
            else:
                await self._one(command, end, "")
        except _Close:
            pass
        await read_timed(self.writer.drain(), self.timeout)

    async def _command(self) -> tuple[str, bytes]:
        first = await read_timed(self.reader.readexactly(1), self.timeout)
        end = b"\0" if first == b"z" else b"\n"
        line = b"" if first in (b"z", b"n") else first
        if line != end:
            try:
                line += await read_timed(self.reader.readuntil(end), self.timeout)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                self._reply("UNKNOWN COMMAND", end)
                raise _Close from None
        command = line.rstrip(end).decode("latin-1").strip()
        if len(command) > _COMMAND_MAX:
            command = command[:_COMMAND_MAX]
        return command, end

    async def _session(self, end: bytes) -> None:
        # IDSESSION: several commands on one connection, each reply prefixed with its number.
        number = 0
        while True:
            command, _ = await self._command()
            number += 1
            if command == "END":
                return
            if command == "IDSESSION":
                self._reply("IDSESSION already started. ERROR", end, f"{number}: ")
                raise _Close
            await self._one(command, end, f"{number}: ")
            await read_timed(self.writer.drain(), self.timeout)

    async def _one(self, command: str, end: bytes, prefix: str) -> None:
        if command == "PING":
            self._reply("PONG", end, prefix)
        elif command == "VERSION":
            self._reply(self._version(), end, prefix)
        elif command == "VERSIONCOMMANDS":
            self._reply(f"{self._version()}| COMMANDS: {_COMMANDS}", end, prefix)
        elif command == "INSTREAM":
            data = await self._stream(end, prefix)
            self._reply(await self.scan(data), end, prefix)
        else:
            self._reply("UNKNOWN COMMAND", end, prefix)
            raise _Close

    def _version(self) -> str:
        return f"mailwarden {__version__} (clamd protocol)"

    async def _stream(self, end: bytes, prefix: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                header = await read_timed(self.reader.readexactly(4), self.timeout)
                (length,) = struct.unpack(">I", header)
                if length == 0:
                    return b"".join(chunks)
                size += length
                if size > self.max_size:
                    self._reply("INSTREAM size limit exceeded. ERROR", end, prefix)
                    raise _Close
                chunks.append(await read_timed(self.reader.readexactly(length), self.timeout))
        except asyncio.IncompleteReadError:
            # The client stopped sending before the zero-length chunk that ends the stream.
            self._reply("Error processing command. ERROR", end, prefix)
            raise _Close from None

    async def scan(self, data: bytes) -> str:
        """Scan one stream and record it; the reply line (without its terminator)."""
        gateway = self.gateway
        envelope = Envelope(client_address=self.peer or None)
        try:
            decision = await gateway.scan(file_as_message(_without_mbox_line(data)), envelope)
        except Exception as exc:
            return f"stream: Mailwarden scan failed ({type(exc).__name__}) ERROR"
        reply = clamd_reply(decision)
        gateway.record(decision, ingress="clamd", reply=reply)
        return reply

    def _reply(self, text: str, end: bytes, prefix: str = "") -> None:
        self.writer.write(f"{prefix}{text}".encode("utf-8", "replace") + end)


async def start_clamd(gateway: Gateway, *, reuse_port: bool = False) -> asyncio.Server:
    """Listen on ``[clamd] listen:port``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        await ClamdSession(gateway, gateway.config.clamd, reader, writer, peer).run()

    refusal = b"Access denied. ERROR\n"
    return await start_stream_listener(
        "clamd", gateway.config.clamd, handle, refusal, reuse_port=reuse_port
    )

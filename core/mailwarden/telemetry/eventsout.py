"""Message events sent out as they are recorded: JSON lines to a file or stdout, and syslog.

Syslog follows RFC 5424 over UDP (RFC 5426): ``<PRI>1 TIMESTAMP HOST mailwarden PROCID
message-event - MSG`` with the event as JSON in MSG, or, with ``cef``, an ArcSight CEF line
(``CEF:0|mailwarden|mailwarden|VERSION|action|name|severity|extensions``) that SIEMs parse
without configuration. UDP never blocks the pipeline; a lost datagram is the price, as with
every syslog over UDP.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from mailwarden_sdk import MessageEvent

from ..config import Config
from ..stores.lines import CappedLines
from ..version import __version__

__all__ = ["JsonLinesSink", "SyslogSink", "cef_line", "json_export", "rfc5424_line"]

_encode = msgspec.json.Encoder().encode
# A datagram larger than this is cut: 65,507 is UDP's limit over IPv4; relays take 8 KB safely.
_MAX_DATAGRAM = 8192
_SEVERITY = {"reject": 4, "tempfail": 4, "quarantine": 5, "discard": 5, "deliver": 6}


def json_export(config: Config) -> CappedLines | None:
    """The ``[events] json`` file (relative to the home), or ``None`` when off or stdout."""
    target = config.events.json
    if not target or target == "-":
        return None
    return CappedLines(config.path_in_home(target), config.events.json_max_bytes)


class JsonLinesSink:
    """Each event as one JSON line appended to ``target`` (``-``: standard output).

    A file is capped at ``max_bytes`` together with its rotated older half (``target.1``).
    """

    def __init__(self, target: str, max_bytes: int | None = None) -> None:
        self.target = target
        self.file = None if target == "-" else CappedLines(Path(target), max_bytes)
        self._lock = threading.Lock()

    def send(self, event: MessageEvent) -> None:
        line = _encode(event) + b"\n"
        with self._lock:
            if self.file is None:
                stream: BinaryIO = sys.stdout.buffer
                stream.write(line)
                stream.flush()
                return
            self.file.append(line)

    def close(self) -> None:
        """Nothing held open."""


def _cef_escape(value: str, *, header: bool) -> str:
    value = value.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    return value.replace("|", "\\|") if header else value.replace("=", "\\=")


def cef_line(event: MessageEvent) -> str:
    """The event as an ArcSight CEF record."""
    verdict = event.verdict
    name = f"{event.action.value} av={verdict.antivirus.value} spam={verdict.spam.value}"
    extensions = {
        "rt": str(int(event.time * 1000)),
        "src": event.client_address or "",
        "suser": event.mail_from,
        "duser": ",".join(event.rcpt_to),
        "msg": event.subject or "",
        "cs1Label": "messageId",
        "cs1": event.message_id or "",
        "cs2Label": "virusNames",
        "cs2": ",".join(verdict.virus_names),
        "cs3Label": "rule",
        "cs3": event.rule,
        "externalId": event.id,
        "act": event.action.value,
    }
    ext = " ".join(f"{k}={_cef_escape(v, header=False)}" for k, v in extensions.items() if v)
    severity = 8 if verdict.detected else _SEVERITY.get(event.action.value, 5)
    return (
        f"CEF:0|mailwarden|mailwarden|{_cef_escape(__version__, header=True)}|"
        f"{event.action.value}|{_cef_escape(name, header=True)}|{severity}|{ext}"
    )


def rfc5424_line(
    event: MessageEvent, *, facility: int, hostname: str, message: str, app: str = "mailwarden"
) -> bytes:
    """One RFC 5424 syslog message carrying ``message``."""
    severity = _SEVERITY.get(event.action.value, 6)
    if event.verdict.detected:
        severity = min(severity, 4)
    timestamp = dt.datetime.fromtimestamp(event.time, dt.UTC).isoformat(timespec="microseconds")
    header = (
        f"<{facility * 8 + severity}>1 {timestamp.replace('+00:00', 'Z')} "
        f"{hostname[:255] or '-'} {app} {os.getpid()} message-event - "
    )
    # BOM: RFC 5424 says a UTF-8 MSG starts with one.
    return (header.encode("ascii", "replace") + b"\xef\xbb\xbf" + message.encode())[:_MAX_DATAGRAM]


class SyslogSink:
    """Each event as an RFC 5424 datagram to ``host:port`` over UDP."""

    def __init__(
        self,
        address: str,
        *,
        format: Literal["rfc5424", "cef"] = "rfc5424",
        facility: int = 16,
        hostname: str = "",
    ) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"syslog address must be host:port, not {address!r}")
        self.address = (host.strip("[]"), int(port))
        self.format = format
        self.facility = facility
        self.hostname = hostname or socket.gethostname()
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def send(self, event: MessageEvent) -> None:
        message = cef_line(event) if self.format == "cef" else _encode(event).decode()
        datagram = rfc5424_line(
            event, facility=self.facility, hostname=self.hostname, message=message
        )
        try:
            self._socket.sendto(datagram, self.address)
        except (BlockingIOError, OSError):
            pass  # syslog over UDP is best effort; the event log has the record

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()

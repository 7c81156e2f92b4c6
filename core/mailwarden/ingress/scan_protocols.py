"""What the scan-protocol listeners (clamd, spamd, rspamd's HTTP API) share.

Each of them answers a protocol other tools already speak with a verdict from
:meth:`Gateway.scan`; the client (Exim, spamc, clamdscan, rspamc, Haraka...) acts on it, so
nothing is delivered, spooled or held here. Every scan is recorded in the message event log
under the listener's name. A listener serves only clients in its ``trusted_networks``;
others get the protocol's refusal and are disconnected, as are clients over
``max_connections``. A read that waits more than ``timeout`` seconds ends the connection.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mailwarden_sdk import ActionKind, AntivirusStatus, SpamStatus

from .tcp import listening_socket

if TYPE_CHECKING:
    from ..pipeline import Decision, Gateway

__all__ = [
    "ListenerConfig",
    "ScanSession",
    "file_as_message",
    "is_spam",
    "read_timed",
    "required_score",
    "start_stream_listener",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Spam statuses a spam-protocol client is told are spam.
SPAM_STATUSES = (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BLOCKED, SpamStatus.BULK)
# The actions that keep a message from its recipients: reported as spam / "reject".
_WITHHELD = (ActionKind.REJECT, ActionKind.DISCARD, ActionKind.QUARANTINE)


class ListenerConfig(Protocol):
    """The keys ``[clamd]``, ``[spamd]`` and ``[http_scan]`` have in common."""

    listen: str
    port: int
    max_size: int
    max_connections: int
    timeout: float
    trusted_networks: list[str]


class ScanSession:
    """One client connection of a scan-protocol listener; ``run`` holds the conversation."""

    def __init__(
        self,
        gateway: Gateway,
        cfg: ListenerConfig,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.gateway = gateway
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.timeout = cfg.timeout
        self.max_size = cfg.max_size


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


async def read_timed(awaitable: Awaitable[T], timeout: float) -> T:
    """``awaitable`` within ``timeout`` seconds (``TimeoutError`` otherwise)."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def start_stream_listener(
    name: str,
    cfg: ListenerConfig,
    handle: Handler,
    refusal: bytes,
    *,
    reuse_port: bool = False,
) -> asyncio.Server:
    """Serve ``handle(reader, writer, peer_address)`` on ``cfg.listen:cfg.port``.

    A client outside ``cfg.trusted_networks`` or over ``cfg.max_connections`` is sent
    ``refusal`` and disconnected. ``handle`` owns the conversation; an exception it lets
    through is logged and ends the connection (never the listener).
    """
    networks = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_networks]
    active = 0

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        active += 1
        try:
            if not _trusted(address, networks) or active > cfg.max_connections:
                writer.write(refusal)
                await read_timed(writer.drain(), cfg.timeout)
                return
            await handle(reader, writer, address)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("%s listener: connection from %s failed", name, address)
        finally:
            active -= 1
            await _linger(reader, writer)
            writer.close()
            try:
                await read_timed(writer.wait_closed(), 5.0)
            except (TimeoutError, ConnectionError, OSError):
                pass

    # Lines (commands, headers) longer than this are a protocol error, not a reason to buffer.
    return await asyncio.start_server(
        connected, sock=listening_socket(cfg.listen, cfg.port, reuse_port), limit=65536
    )


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Closing with unread bytes from the client makes the kernel send a reset, which can
    # destroy our last reply (a refusal, an error) before the client reads it: say we are
    # done (FIN), then take what the client still sends, briefly and boundedly.
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            for _ in range(16):
                if not await reader.read(65536):
                    return
    except (TimeoutError, ConnectionError, OSError, RuntimeError):
        return


def _trusted(address: str, networks: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks)


def file_as_message(data: bytes, filename: str = "stream") -> bytes:
    """A MIME message with ``data`` as its one attachment, so a bare file (clamd's stream)
    goes through the antivirus as an attachment would: type detection, archives, limits."""
    boundary = "mw-" + secrets.token_hex(12)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        f'Content-Type: application/octet-stream; name="{filename}"\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
    )
    return head.encode("ascii") + encoded + f"\r\n--{boundary}--\r\n".encode("ascii")


def required_score(gateway: Gateway) -> float:
    """The score at which the antispam plugin calls a message (probable) spam.

    Read from the plugin's decoded ``[antispam]`` section when one is loaded (the core does
    not import the plugin); 5.0, SpamAssassin's and the plugin's default, otherwise.
    """
    section = gateway.config.plugins.get("antispam")
    value = getattr(section, "probable_spam_score", None)
    return float(value) if isinstance(value, int | float) else 5.0


def is_spam(decision: Decision) -> bool:
    """Whether a spam-protocol client is told "spam": the spam status says so, or the rule
    keeps the message from its recipients for another reason (a virus, a blocked
    attachment, a bad reputation), so that a client acting on this answer alone fails
    closed."""
    verdict = decision.verdict
    return (
        verdict.spam in SPAM_STATUSES
        or decision.action.kind in _WITHHELD
        or verdict.antivirus in (AntivirusStatus.INFECTED, AntivirusStatus.SUSPICIOUS)
    )


def reported_score(decision: Decision, required: float) -> float:
    """The spam score a client sees: ours, raised to ``required`` when :func:`is_spam` holds
    for another reason, since clients (Exim's ``spam =``) compare the score alone."""
    score = round(decision.verdict.spam_score, 1)
    return max(score, required) if is_spam(decision) else score

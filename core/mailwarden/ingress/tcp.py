"""TCP details the ingresses share: listening sockets without Nagle, ACKs without delay.

An MTA writes a stage's data in several small writes without waiting for an answer (milter
packets with the no-reply flags). With Nagle's algorithm on its side, each burst's second
write waits until the first is acknowledged, and Linux delays that acknowledgement by up to
40 ms when the receiver has nothing to send back.
Through Postfix that was 48 ms per milter message in one session (4 ms with the flag). The
flag lasts only until the kernel next delays an ACK, so it is set again after every read.

The other direction is ours: replies written as several small writes (aiosmtpd writes each
line of a multi-line reply on its own) must not wait for the client's ACK, so Nagle's
algorithm is off on every accepted connection (``listening_socket``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast

__all__ = ["listening_socket", "prebind", "quick_ack", "quickack_socket", "stream_transport"]

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def stream_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """The transport a stream server's protocol is given, typed as the read-write one it is.

    Not an ``isinstance`` check: uvloop's TCP and UNIX transports (``[gateway] event_loop``)
    do not derive from ``asyncio.Transport``; such a check was false on them, so a refused
    SMTP client got no 421 and the milter dropped every connection.
    """
    return cast(asyncio.Transport, transport)


def quickack_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """The transport's TCP socket when the kernel offers ``TCP_QUICKACK``, else ``None``."""
    if _QUICKACK is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock  # type: ignore[no-any-return]


def quick_ack(sock: socket.socket) -> None:
    """Acknowledge what arrived without the delayed-ACK wait (call after each read)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK or 0, 1)


# Sockets bound before ``serve`` left root (ports below 1024); handed out by
# ``listening_socket`` to this process and to the workers forked from it.
_PREBOUND: dict[tuple[str, int], socket.socket] = {}


def prebind(host: str, port: int, reuse_port: bool) -> None:
    """Bind ``host:port`` now, while the process may; ``listening_socket`` hands it out."""
    if (host, port) not in _PREBOUND:
        _PREBOUND[(host, port)] = _bind(host, port, reuse_port)


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound, listening, non-blocking TCP socket for an asyncio server on ``host:port``."""
    bound = _PREBOUND.get((host, port))
    if bound is not None:
        sock = bound.dup()
        sock.setblocking(False)
        return sock
    return _bind(host, port, reuse_port)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    # on accepted sockets whose protocol says TCP. With proto 0 it stayed on, and a multi-line
    # reply (EHLO's, or pipelined MAIL/RCPT/DATA answers) sent as several writes stalled for
    # the client's delayed ACK: 43 ms twice per message at Postfix's content-filter transport.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Worker processes each bind the same port; the kernel spreads connections over them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock

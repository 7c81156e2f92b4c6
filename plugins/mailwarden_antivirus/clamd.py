"""A clamd client speaking INSTREAM, for sites that already run ClamAV.

Each object the plugin unpacked is streamed to clamd as it is (clamd applies its own unpacking
on top, which only adds detections). The protocol: ``zINSTREAM\\0``, then chunks of
``<uint32 big-endian length><bytes>``, then a zero length; the reply is one NUL-terminated
line, ``stream: OK``, ``stream: <name> FOUND`` or ``<text> ERROR``.
"""

from __future__ import annotations

import socket
import struct

import msgspec

__all__ = ["ClamdConfig", "ClamdError", "ClamdLimit", "clamd_scan", "clamd_version"]

_CHUNK = 1 << 16
_MAX_REPLY = 4096


class ClamdConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus.clamd]``: where clamd listens (used when ``engines`` lists ``clamd``).

    ``address`` is ``host:port`` for TCP (keep clamd on 127.0.0.1 or a private network: the
    protocol has no authentication) or the path of clamd's local socket.
    """

    address: str = "127.0.0.1:3310"
    timeout: float = 30.0


class ClamdError(Exception):
    """clamd could not be reached or answered with an error."""


class ClamdLimit(ClamdError):
    """clamd refused the object for its size (``StreamMaxLength``)."""


def _connect(config: ClamdConfig) -> socket.socket:
    address = config.address
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ClamdError(f"clamd address {address!r} is neither host:port nor a socket path")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        target = (host.strip("[]"), int(port))
    sock.settimeout(config.timeout)
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise ClamdError(f"cannot reach clamd at {address}: {exc}") from None
    return sock


def _reply(sock: socket.socket) -> str:
    data = b""
    # A reply is one short line; the bound keeps a misbehaving peer from feeding us forever.
    while not data.endswith(b"\0") and len(data) < _MAX_REPLY:
        chunk = sock.recv(_MAX_REPLY)
        if not chunk:
            break
        data += chunk
    return data.rstrip(b"\0\n").decode("utf-8", "replace")


def clamd_scan(config: ClamdConfig, data: bytes | memoryview) -> str | None:
    """The name clamd reports for ``data``, or ``None`` when it is clean."""
    view = memoryview(data).cast("B")
    try:
        with _connect(config) as sock:
            sock.sendall(b"zINSTREAM\0")
            for start in range(0, len(view), _CHUNK):
                chunk = view[start : start + _CHUNK]
                sock.sendall(struct.pack(">I", len(chunk)) + chunk)
            sock.sendall(struct.pack(">I", 0))
            answer = _reply(sock)
    except OSError as exc:
        raise ClamdError(f"clamd at {config.address}: {exc}") from None
    if answer.endswith("FOUND"):
        return answer.removeprefix("stream:").removesuffix("FOUND").strip()
    if answer.endswith("OK"):
        return None
    if "size limit exceeded" in answer:
        raise ClamdLimit(answer)
    raise ClamdError(f"clamd at {config.address} answered {answer!r}")


def clamd_version(config: ClamdConfig) -> str:
    """clamd's ``VERSION`` answer (engine and database versions)."""
    try:
        with _connect(config) as sock:
            sock.sendall(b"zVERSION\0")
            return _reply(sock)
    except OSError as exc:
        raise ClamdError(f"clamd at {config.address}: {exc}") from None

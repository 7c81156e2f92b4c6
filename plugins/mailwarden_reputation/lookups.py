"""What a message asks about: attachment hashes, URLs, their hosts, and the sending IP.

Nothing here does I/O. :func:`lookups_for` turns a message into :class:`Lookup` items, each with
the cache key and the exact value a backend receives (the data listed in docs/reputation.md and
in ``mailwarden data-inventory``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import msgspec

from mailwarden_sdk import ParsedMessage, ScanContext

__all__ = [
    "KINDS",
    "Lookup",
    "lookups_for",
    "message_urls",
    "normalise_url",
]

KINDS = ("sha256", "md5", "url", "domain", "ip")


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    """One question for a backend.

    ``value`` is what is sent: lowercase hex for hashes, the normalised URL, the IDNA host name,
    the IP address in its compressed form. ``part`` and ``label`` only serve the finding (the
    part index and a short, non-content description) and never leave the node.
    """

    kind: str
    value: str
    part: int | None = None
    label: str = ""

    @property
    def key(self) -> str:
        """The cache key: ``kind:value``."""
        return f"{self.kind}:{self.value}"


# Conservative on purpose: an http(s) or www. URL up to the first character that cannot be part
# of one in running text; trailing sentence punctuation is trimmed afterwards.


def message_urls(message: ParsedMessage) -> list[str]:
    """The message's URLs as the native core extracts them (text, HTML links, the Subject;
    obfuscations undone, hosts in IDNA)."""
    return [u.url for u in message.urls()]


def normalise_url(url: str) -> tuple[str, str] | None:
    """``(url, host)`` with scheme and host lowercased and the host in IDNA; ``None`` if bad."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    host = host.rstrip(".")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{netloc}{path}{query}", host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _client_ip(address: str | None) -> str | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Lists never hold private, loopback or documentation space; asking about it would only
    # tell the service about the local network.
    return ip.compressed if ip.is_global else None


def lookups_for(ctx: ScanContext, *, max_urls: int = 20) -> list[Lookup]:
    """Every lookup one message needs, deduplicated, URLs capped at ``max_urls``."""
    found: dict[str, Lookup] = {}

    def add(items: Iterable[Lookup]) -> None:
        for item in items:
            found.setdefault(item.key, item)

    for part in ctx.message.attachments():
        data = part.decoded()
        label = part.filename or part.content_type
        add(
            [
                Lookup(
                    kind="sha256",
                    value=hashlib.sha256(data).hexdigest(),
                    part=part.index,
                    label=label,
                ),
                Lookup(
                    kind="md5",
                    value=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                    part=part.index,
                    label=label,
                ),
            ]
        )
    add(_url_lookups(message_urls(ctx.message), max_urls))
    ip = _client_ip(ctx.envelope.client_address)
    if ip:
        add([Lookup(kind="ip", value=ip)])
    return list(found.values())


def _url_lookups(urls: list[str], max_urls: int) -> Iterator[Lookup]:
    taken = 0
    for raw in urls:
        if taken >= max_urls:
            return
        normal = normalise_url(raw)
        if normal is None:
            continue
        url, host = normal
        taken += 1
        yield Lookup(kind="url", value=url, label=host)
        if not _is_ip(host):
            yield Lookup(kind="domain", value=host, label=host)

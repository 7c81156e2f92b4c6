"""The two ways of asking: DNS lists (RFC 5782 conventions) and batched HTTPS JSON.

A backend answers every lookup it was given with an :class:`~.cache.Answer`, or with ``None``
when it could not tell (timeout, refusal, an error code): ``None`` is never cached and never
scored, it becomes the plugin's ``REPUTATION_UNAVAILABLE`` finding.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import httpx
import msgspec

from .cache import Answer
from .lookups import Lookup

__all__ = [
    "Backend",
    "DnsBackend",
    "HttpBackend",
    "LookupItem",
    "LookupRequest",
    "LookupResponse",
    "LookupResult",
    "StatisticsReport",
    "dns_name",
]


class Backend(Protocol):
    """Something that answers lookups: ``lookup_key -> Answer`` or ``None`` (could not tell)."""

    name: str

    async def lookup(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """Answer every item of ``items`` this backend handles, by its key."""
        ...

    def unanswered(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """What :meth:`lookup` says when it cannot tell: ``None`` for each item it handles."""
        ...


def _split_hex(digest: str) -> str:
    # A DNS label holds at most 63 octets: a 64-digit SHA-256 goes in two labels of 32, as
    # Team Cymru's MHR does.
    return ".".join(digest[i : i + 32] for i in range(0, len(digest), 32))


def dns_name(item: Lookup, zone: str) -> str:
    """The DNS name that asks ``zone`` about ``item``.

    IPs: reversed octets (IPv4) or nibbles (IPv6), as RFC 5782 says. Domains: the name itself.
    Hashes: lowercase hex, SHA-256 split into two labels. URLs: the SHA-256 of the normalised URL,
    split the same way, so no URL text is sent in a query.
    """
    if item.kind == "ip":
        ip = ipaddress.ip_address(item.value)
        if isinstance(ip, ipaddress.IPv4Address):
            label = ".".join(reversed(item.value.split(".")))
        else:
            label = ".".join(reversed(ip.exploded.replace(":", "")))
    elif item.kind == "domain":
        label = item.value
    elif item.kind == "url":
        label = _split_hex(hashlib.sha256(item.value.encode()).hexdigest())
    else:
        label = _split_hex(item.value)
    return f"{label}.{zone.strip('.')}"


class DnsBackend:
    """Asks DNS lists, one zone per kind, through one DNS server.

    A listed name has an A record in 127.0.0.0/8; its TXT record gives the reason or threat
    name (``name=...`` inside it is preferred, as hash lists write it). NXDOMAIN or an empty
    answer means not listed. 127.255.255.x replies are the lists' error codes (refused public
    resolver, over quota), not listings. A-record codes named in ``suspicious_codes`` give
    ``suspicious``, every other listing ``malicious``.
    """

    name = "dns"

    def __init__(
        self,
        server: str,
        port: int,
        zones: Mapping[str, str],
        timeout: float,
        suspicious_codes: Sequence[str] = (),
    ) -> None:
        self.zones = {kind: zone for kind, zone in zones.items() if zone}
        self.suspicious = set(suspicious_codes)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [server]
        resolver.port = port
        resolver.cache = None
        resolver.timeout = timeout
        resolver.lifetime = timeout
        self._resolver = resolver

    def unanswered(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """``None`` for each item whose kind has a zone."""
        return {item.key: None for item in items if item.kind in self.zones}

    async def lookup(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """Query the zone of each item's kind concurrently; kinds without a zone are skipped."""
        asked = [item for item in items if item.kind in self.zones]
        answers = await asyncio.gather(*(self._one(i) for i in asked))
        return {item.key: answer for item, answer in zip(asked, answers, strict=True)}

    async def _one(self, item: Lookup) -> Answer | None:
        name = dns_name(item, self.zones[item.kind])
        try:
            reply = await self._resolver.resolve(name, "A", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Answer(verdict="clean", source=self.name)
        except (dns.exception.DNSException, OSError):
            return None
        codes = [r.to_text() for r in reply] if reply.rrset is not None else []
        listed = [c for c in codes if c.startswith("127.") and not c.startswith("127.255.255.")]
        if not listed:
            # An empty answer is "not listed"; only error codes came back otherwise.
            return Answer(verdict="clean", source=self.name) if not codes else None
        verdict = "suspicious" if all(c in self.suspicious for c in listed) else "malicious"
        return Answer(verdict=verdict, name=await self._reason(name, listed[0]), source=self.name)

    async def _reason(self, name: str, code: str) -> str:
        try:
            reply = await self._resolver.resolve(name, "TXT", raise_on_no_answer=False)
        except (dns.exception.DNSException, OSError):
            return code
        if reply.rrset is None:
            return code
        text = b"".join(b"".join(r.strings) for r in reply).decode("utf-8", "replace")
        for field in text.split(";"):
            key, _, value = field.strip().partition("=")
            if key == "name" and value:
                return value[:100]
        return text[:100] or code


class LookupItem(msgspec.Struct, frozen=True):
    """One lookup on the wire: ``{"kind": "sha256", "value": "..."}``."""

    kind: str
    value: str


class LookupRequest(msgspec.Struct, frozen=True):
    """``POST /v1/lookup`` body."""

    items: list[LookupItem]


class LookupResult(msgspec.Struct, frozen=True, kw_only=True):
    """One answer on the wire; ``verdict`` is ``malicious``, ``suspicious`` or ``clean``."""

    kind: str
    value: str
    verdict: str
    name: str = ""


class LookupResponse(msgspec.Struct, frozen=True):
    """``POST /v1/lookup`` reply, one result per item asked."""

    results: list[LookupResult]


class StatisticsReport(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/statistics`` body: detection counts by ``kind:verdict``, and who sends."""

    node: str
    counts: dict[str, int]


_VERDICTS = ("malicious", "suspicious", "clean")
_MAX_BATCH = 500


class HttpBackend:
    """Asks a reputation service over HTTPS (``mailwarden reputation serve`` speaks it).

    All of a message's lookups go in one ``POST /v1/lookup``; a non-2xx reply, a timeout or a
    malformed body answers every item with ``None``. ``ca_file`` trusts a private service's
    certificate; ``token`` is sent as a bearer token when set.
    """

    name = "http"

    def __init__(self, url: str, timeout: float, ca_file: str = "", token: str = "") -> None:
        self.url = url.rstrip("/")
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
        )
        self._decode = msgspec.json.Decoder(LookupResponse).decode

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def unanswered(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """``None`` for every item: the service handles every kind."""
        return {item.key: None for item in items}

    async def lookup(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        """Ask about ``items`` in batches of at most 500 per request."""
        result: dict[str, Answer | None] = {}
        for start in range(0, len(items), _MAX_BATCH):
            result.update(await self._batch(items[start : start + _MAX_BATCH]))
        return result

    async def _batch(self, items: Sequence[Lookup]) -> dict[str, Answer | None]:
        failed: dict[str, Answer | None] = {item.key: None for item in items}
        body = msgspec.json.encode(
            LookupRequest([LookupItem(item.kind, item.value) for item in items])
        )
        try:
            reply = await self._client.post(
                f"{self.url}/v1/lookup",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            reply.raise_for_status()
            decoded = self._decode(reply.content)
        except (httpx.HTTPError, msgspec.ValidationError, msgspec.DecodeError, OSError):
            return failed
        answers: dict[str, Answer | None] = dict(failed)
        for res in decoded.results:
            key = f"{res.kind}:{res.value}"
            if key in answers and res.verdict in _VERDICTS:
                answers[key] = Answer(verdict=res.verdict, name=res.name[:100], source=self.name)
        return answers

    async def send_statistics(self, report: StatisticsReport) -> bool:
        """Deliver one statistics report; ``True`` when the service accepted it."""
        try:
            reply = await self._client.post(
                f"{self.url}/v1/statistics",
                content=msgspec.json.encode(report),
                headers={"Content-Type": "application/json"},
            )
        except (httpx.HTTPError, OSError):
            return False
        return reply.is_success

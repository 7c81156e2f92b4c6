"""One asynchronous DNS resolver for every antispam check, with timeouts and a cache.

SPF, DKIM, ARC, DMARC and the DNS lists all ask through :class:`Resolver`, so one message's
lookups share one cache and one time limit. The libraries that only know synchronous DNS
(pyspf, dkimpy) run in a worker thread and reach the same resolver through :class:`SyncDns`,
which hands each query back to the event loop that owns the resolver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

__all__ = ["DnsAnswer", "Resolver", "SyncDns"]


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What one query gave: ``status`` is ok, nxdomain, nodata, timeout or error."""

    status: str
    records: tuple[Any, ...] = field(default=())
    detail: str = ""

    @property
    def failed(self) -> bool:
        """A temporary failure (no answer could be had), as opposed to a negative answer."""
        return self.status in ("timeout", "error")

    def texts(self) -> list[bytes]:
        """TXT records joined from their character-strings (RFC 7208 section 3.3)."""
        return [b"".join(r.strings) for r in self.records if hasattr(r, "strings")]

    def addresses(self) -> list[str]:
        return [str(r.address) for r in self.records if hasattr(r, "address")]


class Resolver:
    """dnspython's async resolver at the configured servers, with a bounded TTL cache.

    Positive answers are kept for their TTL (capped at ``max_ttl``), NXDOMAIN and empty
    answers for ``negative_ttl``; timeouts and server failures are never cached, so a
    resolver that comes back is used at once. Concurrent identical queries share one lookup.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        cache_entries: int = 10_000,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        # One attempt per server within the budget: a list that does not answer must cost
        # at most ``timeout`` seconds of the message's scan time.
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self._cache_entries = cache_entries
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._inflight: dict[tuple[str, str], asyncio.Future[DnsAnswer]] = {}
        self.queries_sent = 0

    def _cached(self, key: tuple[str, str]) -> DnsAnswer | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return hit[1]

    def _store(self, key: tuple[str, str], answer: DnsAnswer, ttl: float) -> None:
        if answer.failed or ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + min(ttl, self._max_ttl), answer)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Look ``name`` up (``rdtype`` such as "A", "TXT"); never raises for DNS outcomes."""
        key = (name.lower().rstrip("."), rdtype.upper())
        cached = self._cached(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[DnsAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer, ttl = await self._lookup(*key)
            self._store(key, answer, ttl)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so an unawaited future logs nothing
            raise
        finally:
            del self._inflight[key]

    async def _lookup(self, name: str, rdtype: str) -> tuple[DnsAnswer, float]:
        self.queries_sent += 1
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            # Not a possible DNS name (a label too long...): such a name cannot exist.
            return DnsAnswer("nxdomain", detail=f"bad name: {exc}"), 0.0
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return DnsAnswer("nxdomain"), self._negative_ttl
        except dns.exception.Timeout:
            return DnsAnswer("timeout", detail=f"no answer within {self.timeout:g} s"), 0.0
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors") or []
            if errors and all(isinstance(e[3], dns.message.ChainTooLong) for e in errors):
                # A CNAME loop is the zone's answer, not a passing failure: the name has no
                # usable records (RFC 7208 5.5 then skips it instead of giving temperror).
                return DnsAnswer("nodata", detail="CNAME loop"), self._negative_ttl
            return DnsAnswer("error", detail=str(exc)[:200]), 0.0
        except dns.exception.DNSException as exc:
            return DnsAnswer("error", detail=str(exc)[:200]), 0.0
        if answer.rrset is None:
            return DnsAnswer("nodata"), self._negative_ttl
        return DnsAnswer("ok", tuple(answer.rrset)), float(answer.rrset.ttl)


class SyncDns:
    """A blocking face of a :class:`Resolver` for libraries that call DNS synchronously.

    Create it on the event loop, then use it from a worker thread (``asyncio.to_thread``):
    each call runs the query on the loop and waits for it, bounded by the resolver's timeout.
    """

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.resolver = resolver
        self.loop = loop or asyncio.get_running_loop()

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        coro = self.resolver.query(name, rdtype)
        future: concurrent.futures.Future[DnsAnswer] = asyncio.run_coroutine_threadsafe(
            coro, self.loop
        )
        try:
            return future.result(timeout=self.resolver.timeout + 1.0)
        except TimeoutError:
            future.cancel()
            return DnsAnswer("timeout", detail="no answer in time")

"""One asynchronous DNS resolver for every antispam check, with timeouts and a cache.

SPF, DKIM, ARC, DMARC and the DNS lists all ask through :class:`Resolver`, so the lookups of
all messages share one cache. The libraries that only know synchronous DNS (pyspf, dkimpy) run
in a worker thread and reach the same resolver through :class:`SyncDns`, which hands each query
back to the event loop that owns the resolver.

Two limits keep mail flowing when the DNS server does not answer at all: each message's scan
asks through a :class:`DnsBudget`, one deadline for all of that message's lookups; and the
resolver's circuit breaker stops sending queries for a cool-off period after a run of
timeouts. Either way the checks get a ``timeout`` answer at once and report temperror.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

__all__ = ["AsyncDns", "DnsAnswer", "DnsBudget", "Resolver", "SyncDns"]

log = logging.getLogger(__name__)

#: :attr:`DnsAnswer.skipped` reasons.
SKIPPED_BUDGET = "budget"
SKIPPED_DOWN = "resolver_down"


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """What one query gave: ``status`` is ok, nxdomain, nodata, timeout or error.

    ``skipped`` is empty when the query was asked; otherwise it says why no answer was waited
    for (``"budget"``: the message's DNS time was spent; ``"resolver_down"``: the circuit
    breaker is open), and ``status`` is ``timeout`` so the checks report temperror as usual.
    """

    status: str
    records: tuple[Any, ...] = field(default=())
    detail: str = ""
    skipped: str = ""

    @property
    def failed(self) -> bool:
        """A temporary failure (no answer could be had), as opposed to a negative answer."""
        return self.status in ("timeout", "error")

    def texts(self) -> list[bytes]:
        """TXT records joined from their character-strings (RFC 7208 section 3.3)."""
        return [b"".join(r.strings) for r in self.records if hasattr(r, "strings")]

    def addresses(self) -> list[str]:
        return [str(r.address) for r in self.records if hasattr(r, "address")]


class AsyncDns(Protocol):
    """What the checks ask DNS through: a :class:`Resolver` or a per-message :class:`DnsBudget`."""

    @property
    def timeout(self) -> float:
        """The time one query may take."""
        ...

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Look ``name`` up; never raises for DNS outcomes."""
        ...


class _Breaker:
    """Consecutive-timeout circuit breaker: closed, open (refuse), half-open (one probe).

    Only timeouts count against the server; any answer, negative ones included, shows it is
    up. Errors (SERVFAIL, refused) are neither: the server replied, but nothing was resolved.
    """

    def __init__(self, threshold: int, cooloff: float, servers: str) -> None:
        self.threshold = threshold
        self.cooloff = cooloff
        self.servers = servers
        self.timeouts = 0
        self.open_until: float | None = None
        self.probing = False

    def admit(self) -> tuple[DnsAnswer | None, bool]:
        """(an answer refusing the query, or None to send it; whether it is the probe)."""
        if self.open_until is None:
            return None, False
        wait = self.open_until - time.monotonic()
        if wait <= 0 and not self.probing:
            self.probing = True
            return None, True
        # No ";" and no parentheses: the detail ends up in an Authentication-Results comment.
        detail = f"resolver considered down after {self.threshold} timeouts in a row, " + (
            f"next try in {wait:.1f} s" if wait > 0 else "a probe query is under way"
        )
        return DnsAnswer("timeout", detail=detail, skipped=SKIPPED_DOWN), False

    def record(self, status: str | None, probe: bool) -> None:
        """Account one sent query's outcome (None: it was abandoned without one)."""
        if probe:
            self.probing = False
        if status in ("ok", "nxdomain", "nodata"):
            self.timeouts = 0
            if self.open_until is not None:
                self.open_until = None
                log.info("antispam: DNS resolver %s answers again; lookups resume", self.servers)
        elif status == "timeout":
            if self.open_until is None:
                self.timeouts += 1
                if self.timeouts >= self.threshold:
                    self.open_until = time.monotonic() + self.cooloff
                    log.warning(
                        "antispam: DNS resolver %s did not answer %d queries in a row; DNS "
                        "checks give temperror without asking, with one probe every %g s",
                        self.servers,
                        self.timeouts,
                        self.cooloff,
                    )
            elif probe:
                # Still down: wait another cool-off. Logged once when it opened, not again.
                self.open_until = time.monotonic() + self.cooloff
                log.debug("antispam: DNS probe to %s timed out; still down", self.servers)


class Resolver:
    """dnspython's async resolver at the configured servers, with a bounded TTL cache.

    Positive answers are kept for their TTL (capped at ``max_ttl``), NXDOMAIN and empty
    answers for ``negative_ttl``; timeouts and server failures are never cached, so a
    resolver that comes back is used at once. Concurrent identical queries share one lookup.

    After ``breaker_timeouts`` timeouts in a row with no answer between them the servers are
    taken for down: for ``breaker_cooloff`` seconds queries are not sent and get a ``timeout``
    answer at once; then one probe query is sent, and an answer (NXDOMAIN and NODATA too)
    resumes normal lookups while another timeout starts another cool-off.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        port: int = 53,
        timeout: float = 2.0,
        cache_entries: int = 10_000,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
        breaker_timeouts: int = 5,
        breaker_cooloff: float = 30.0,
    ) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = list(nameservers)
            self._resolver.port = port
        # One attempt per server within ``timeout``: a list that does not answer must cost
        # at most that much of the message's scan time.
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        self.timeout = timeout
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self._cache_entries = cache_entries
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._inflight: dict[tuple[str, str], asyncio.Task[DnsAnswer]] = {}
        servers = ", ".join(str(n) for n in self._resolver.nameservers) or "(none)"
        self._breaker = _Breaker(breaker_timeouts, breaker_cooloff, servers)
        self.queries_sent = 0

    async def aclose(self) -> None:
        """Cancel the lookups still running (those a spent budget stopped waiting for)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        task = self._inflight.get(key)
        if task is None:
            try:
                qname = dns.name.from_text(key[0])
            except dns.exception.DNSException as exc:
                # Not a possible DNS name (a label too long...): such a name cannot exist.
                return DnsAnswer("nxdomain", detail=f"bad name: {exc}")
            refused, probe = self._breaker.admit()
            if refused is not None:
                return refused
            # A task of its own, so a caller that stops waiting (its message's budget is
            # spent) leaves the lookup to finish for the others, the cache and the breaker.
            task = asyncio.get_running_loop().create_task(self._resolve(key, qname))
            self._inflight[key] = task
            # A done callback, not a finally: it also runs for a task cancelled before it began.
            task.add_done_callback(lambda t: self._finished(key, t, probe))
        return await asyncio.shield(task)

    async def _resolve(self, key: tuple[str, str], qname: dns.name.Name) -> DnsAnswer:
        answer, ttl = await self._lookup(qname, key[1])
        self._store(key, answer, ttl)
        return answer

    def _finished(self, key: tuple[str, str], task: asyncio.Task[DnsAnswer], probe: bool) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        failed = task.cancelled() or task.exception() is not None
        self._breaker.record(None if failed else task.result().status, probe)

    async def _lookup(self, qname: dns.name.Name, rdtype: str) -> tuple[DnsAnswer, float]:
        self.queries_sent += 1
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


class DnsBudget:
    """One message's view of a :class:`Resolver`: all its lookups share one deadline.

    Queries go to the resolver (cache, shared lookups and circuit breaker included) until
    ``budget`` seconds after creation; a lookup still running then stops being waited for,
    and later ones are not asked. Both get a ``timeout`` answer, so the checks give their
    temperror results. ``skipped`` counts the answers cut short, by reason.
    """

    def __init__(self, resolver: Resolver, budget: float) -> None:
        self.resolver = resolver
        self.budget = budget
        self.deadline = time.monotonic() + budget
        self.skipped: dict[str, int] = {}

    @property
    def timeout(self) -> float:
        """The time one query may take (the resolver's)."""
        return self.resolver.timeout

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """Look ``name`` up within what is left of the budget; never raises for DNS outcomes."""
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            try:
                answer = await asyncio.wait_for(self.resolver.query(name, rdtype), remaining)
            except TimeoutError:
                pass
            else:
                if answer.skipped:
                    self.skipped[answer.skipped] = self.skipped.get(answer.skipped, 0) + 1
                return answer
        self.skipped[SKIPPED_BUDGET] = self.skipped.get(SKIPPED_BUDGET, 0) + 1
        detail = f"DNS budget of {self.budget:g} s for this message spent"
        return DnsAnswer("timeout", detail=detail, skipped=SKIPPED_BUDGET)


class SyncDns:
    """A blocking face of a :class:`Resolver` for libraries that call DNS synchronously.

    Create it on the event loop, then use it from a worker thread (``asyncio.to_thread``):
    each call runs the query on the loop and waits for it, bounded by the resolver's timeout.
    Given a :class:`DnsBudget`, the thread's lookups count against that message's budget.
    """

    def __init__(self, resolver: AsyncDns, loop: asyncio.AbstractEventLoop | None = None) -> None:
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

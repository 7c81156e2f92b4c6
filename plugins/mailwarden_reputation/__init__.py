"""The built-in reputation detector (the KSN role): hash, URL, domain and IP reputation.

Nothing is looked up, and no statistic is sent, until the admin records consent in
``[reputation]`` with who gave it and when; ``mailwarden reputation consent --withdraw`` stops a
running gateway at its next message. Answers come from DNS lists and/or an HTTPS JSON service
(``mailwarden reputation serve`` is one an organisation can run itself) and are kept in an LMDB
cache shared by every worker, capped with least-recently-used eviction. See docs/reputation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mailwarden_sdk import (
    Category,
    Finding,
    Host,
    ScanContext,
    StoreDescriptor,
    WhenFull,
    hookimpl,
    plugin_data_dir,
    shared_state,
)

from .backends import Backend, DnsBackend, HttpBackend, StatisticsReport
from .cache import DEFAULT_CAP, Answer, ReputationCache, count_entries
from .lookups import Lookup, lookups_for
from .shared import share_answers, shared_answers
from .state import CONSENT_MARK, PLUGIN_DIR, PendingStatistics, count_pending, withdrawn

__all__ = ["DATA_SENT", "ReputationConfig", "ReputationPlugin"]

DETECTOR = "reputation"
log = logging.getLogger(__name__)

# What leaves the node per lookup, shown by `mailwarden data-inventory` and docs/reputation.md.
DATA_SENT = (
    "per lookup, only with consent: SHA-256 and MD5 of each attachment's decoded bytes; each "
    "URL found in the text parts (normalised; over DNS only its SHA-256) and its host name; the "
    "connecting client's public IP address. Never bodies, file names, addresses or subjects. "
    "Statistics (with consent and statistics = true): detection counts by kind and verdict."
)

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class ReputationConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[reputation]``: consent (who and when), backends, cache and scoring.

    A backend is used when it is configured: DNS lists when ``dns_server`` and at least one
    zone are set, the HTTPS service when ``http_url`` is set. ``timeout`` bounds each request
    and must stay below the detector's time budget, so a slow service costs at most that long;
    a backend that failed is not asked again for ``retry_after`` seconds (the cache still
    answers). ``statistics`` is a consent of its own, as in KSN: with it, detection counts are
    sent to the HTTPS service every ``statistics_interval`` seconds.
    """

    consent: bool = False
    consent_by: str = ""
    consent_at: str = ""
    statistics: bool = False
    statistics_interval: Seconds = 300.0
    node: str = ""
    timeout: Seconds = 2.0
    retry_after: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    dns_server: str = ""
    dns_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 53
    dns_ip_zone: str = ""
    dns_domain_zone: str = ""
    dns_url_zone: str = ""
    dns_hash_zone: str = ""
    dns_suspicious_codes: list[str] = msgspec.field(default_factory=list)
    http_url: str = ""
    http_ca_file: str = ""
    http_token: str = ""
    cache_max_entries: Positive = DEFAULT_CAP
    positive_ttl: Seconds = 86400.0
    negative_ttl: Seconds = 3600.0
    malicious_score: float = 10.0
    suspicious_score: float = 4.0
    max_urls: Positive = 20

    def __post_init__(self) -> None:
        if self.consent and not (self.consent_by.strip() and self.consent_at.strip()):
            raise ValueError("consent needs consent_by and consent_at (who agreed, and when)")
        if self.consent_at:
            try:
                dt.datetime.fromisoformat(self.consent_at)
            except ValueError:
                raise ValueError(
                    "consent_at must be an ISO 8601 date and time, e.g. 2025-01-31T09:30:00Z"
                ) from None
        if self.http_url and not self.http_url.startswith("https://"):
            raise ValueError("http_url must be https:// (lookups are never sent in clear text)")


class ReputationPlugin:
    """Looks up a message's attachment hashes, URLs, hosts and client IP, with consent only."""

    requires_sdk = ">=1.14,<2"  # shared_state

    def __init__(self) -> None:
        self.config = ReputationConfig()
        self.data_dir: Path | None = None
        self.cache: ReputationCache | None = None
        self.host: Host | None = None
        self.statistics: PendingStatistics | None = None
        self._backends: list[Backend] = []
        self._http: HttpBackend | None = None
        self._sender: asyncio.Task[None] | None = None
        # backend name -> monotonic time before which it is not asked (it failed recently)
        self._down_until: dict[str, float] = {}

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[msgspec.Struct]]:
        return DETECTOR, ReputationConfig

    @hookimpl
    def mailwarden_data_stores(self, host: Host) -> list[StoreDescriptor]:
        base = host.data_dir / PLUGIN_DIR
        config: ReputationConfig = host.config_for(DETECTOR) or ReputationConfig()
        if self.cache is not None and self.cache.path == base / "cache":
            entries: int | None = len(self.cache)
        else:
            entries = count_entries(base / "cache")
        # LMDB allows one open environment per process: a running gateway counts through its own.
        if self.statistics is not None and self.statistics.path == base / "statistics":
            pending: int | None = len(self.statistics.pending())
        else:
            pending = count_pending(base / "statistics")
        return [
            StoreDescriptor(
                name="reputation cache",
                path=str(base / "cache"),
                holds="hash, URL, host and IP lookup keys with the verdicts received for them. "
                + DATA_SENT,
                max_entries=config.cache_max_entries,
                when_full=WhenFull.EVICT_LRU,
                read_permission="settings.view",
                entries=entries,
            ),
            StoreDescriptor(
                name="reputation statistics",
                path=str(base / "statistics"),
                holds="detection counts by kind and verdict waiting to be sent to the "
                "reputation service; kept until sent, deleted when consent is withdrawn",
                read_permission="settings.view",
                entries=pending,
            ),
            StoreDescriptor(
                name="reputation consent withdrawal",
                path=str(base / CONSENT_MARK),
                holds="who withdrew consent from the command line, and when; while it exists "
                "nothing is looked up or sent",
                read_permission="settings.view",
            ),
        ]

    @hookimpl
    def mailwarden_cli_commands(self) -> list[Any]:
        from .cli import reputation

        return [reputation]

    @hookimpl
    async def mailwarden_startup(self, host: Host) -> None:
        self.config = host.config_for(DETECTOR) or ReputationConfig()
        self.host = host
        self.data_dir = plugin_data_dir(host, PLUGIN_DIR)
        self.statistics = PendingStatistics(self.data_dir / "statistics")
        if not self.allowed():
            # Consent off (or withdrawn) at start: what was not sent is not kept.
            self.statistics.delete_all()
        self.cache = ReputationCache(self.data_dir / "cache", self.config.cache_max_entries)
        cfg = self.config
        zones = {
            "ip": cfg.dns_ip_zone,
            "domain": cfg.dns_domain_zone,
            "url": cfg.dns_url_zone,
            "sha256": cfg.dns_hash_zone,
            "md5": cfg.dns_hash_zone,
        }
        if cfg.dns_server and any(zones.values()):
            self._backends.append(
                DnsBackend(
                    cfg.dns_server, cfg.dns_port, zones, cfg.timeout, cfg.dns_suspicious_codes
                )
            )
        if cfg.http_url:
            self._http = HttpBackend(cfg.http_url, cfg.timeout, cfg.http_ca_file, cfg.http_token)
            self._backends.append(self._http)
            if cfg.statistics and self.allowed():
                self._sender = asyncio.create_task(self._send_statistics_periodically())

    @hookimpl
    async def mailwarden_shutdown(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._backends = []
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self.statistics is not None:
            self.statistics.close()
            self.statistics = None

    def allowed(self) -> bool:
        """Whether anything may leave the node now: consent recorded and not withdrawn."""
        if not self.config.consent or self.data_dir is None:
            return False
        return not withdrawn(self.data_dir)

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        if not self.allowed() or self.cache is None or not self._backends:
            return []
        items = lookups_for(ctx, max_urls=self.config.max_urls)
        if not items:
            return []
        cache = self.cache
        answers: dict[str, Answer] = await asyncio.to_thread(cache.get_many, [i.key for i in items])
        # The second level: the cluster's Redis, before any backend (docs/cluster.md).
        shared = shared_state(self.host)
        second = await shared_answers(shared, [i.key for i in items if i.key not in answers])
        if second:
            await asyncio.to_thread(cache.put_many, second)
            answers.update({k: answer for k, (answer, _left) in second.items()})
        misses = [i for i in items if i.key not in answers]
        fresh, unanswered = await self._ask(misses)
        if fresh:
            cfg = self.config
            ttl = {"clean": cfg.negative_ttl}
            timed = {k: (a, ttl.get(a.verdict, cfg.positive_ttl)) for k, a in fresh.items()}
            await asyncio.to_thread(cache.put_many, timed)
            await share_answers(shared, timed)
            answers.update(fresh)
        findings = self._findings(items, answers)
        self._count(findings)
        if unanswered:
            findings.append(
                Finding(
                    code="REPUTATION_UNAVAILABLE",
                    detector=DETECTOR,
                    category=Category.REPUTATION,
                    # Not "error": every local engine has read the message; a missing second
                    # opinion must not tempfail all mail while the service is down.
                    status="unavailable",
                    details={
                        "unanswered": str(len(unanswered)),
                        "kinds": ",".join(sorted({i.kind for i in unanswered})),
                    },
                )
            )
        return findings

    async def _ask(self, items: Sequence[Lookup]) -> tuple[dict[str, Answer], list[Lookup]]:
        """Ask every backend at once; returns the answers and the items nobody could answer."""
        if not items:
            return {}, []

        async def bounded(backend: Backend) -> dict[str, Answer | None]:
            if time.monotonic() < self._down_until.get(backend.name, 0.0):
                return backend.unanswered(items)
            # The backends' own timeouts bound each request; this bounds the whole batch too
            # (an HTTP timeout applies per phase, connect and read each).
            try:
                async with asyncio.timeout(self.config.timeout):
                    said = await backend.lookup(items)
            except TimeoutError:
                said = backend.unanswered(items)
            if said and all(answer is None for answer in said.values()):
                # Down, not merely unsure of one name: spare the next messages the wait.
                self._down_until[backend.name] = time.monotonic() + self.config.retry_after
            return said

        replies = await asyncio.gather(*(bounded(b) for b in self._backends))
        fresh: dict[str, Answer] = {}
        unanswered: list[Lookup] = []
        for item in items:
            said = [r[item.key] for r in replies if item.key in r]
            if not said:
                continue  # no backend is configured for this kind
            known = [a for a in said if a is not None]
            listed = [a for a in known if a.verdict != "clean"]
            if listed:
                fresh[item.key] = max(listed, key=lambda a: a.verdict == "malicious")
            elif len(known) == len(said):
                fresh[item.key] = known[0]
            else:
                unanswered.append(item)
        return fresh, unanswered

    def _findings(self, items: Iterable[Lookup], answers: dict[str, Answer]) -> list[Finding]:
        cfg = self.config
        findings: list[Finding] = []
        flagged_parts: set[int | None] = set()
        for item in items:
            answer = answers.get(item.key)
            if answer is None or answer.verdict not in ("malicious", "suspicious"):
                continue
            malicious = answer.verdict == "malicious"
            if item.kind in ("sha256", "md5"):
                if item.part in flagged_parts:
                    continue  # the other hash of the same part was listed too
                flagged_parts.add(item.part)
                findings.append(
                    Finding(
                        code="REPUTATION_FILE",
                        detector=DETECTOR,
                        category=Category.ANTIVIRUS,
                        status="infected" if malicious else "suspicious",
                        details={
                            "signature": f"Reputation.{answer.name or 'Listed'}",
                            "object": item.label,
                            item.kind: item.value,
                            "source": answer.source,
                        },
                        part=item.part,
                    )
                )
                continue
            detail = {"ip": item.value} if item.kind == "ip" else {"host": item.label}
            findings.append(
                Finding(
                    code=f"REPUTATION_{item.kind.upper()}",
                    detector=DETECTOR,
                    category=Category.REPUTATION,
                    status=answer.verdict,
                    score=cfg.malicious_score if malicious else cfg.suspicious_score,
                    details={**detail, "list": answer.name, "source": answer.source},
                )
            )
        return findings

    def _count(self, findings: Sequence[Finding]) -> None:
        if not (self.config.statistics and self._http and self.statistics and findings):
            return
        counts: dict[str, int] = {}
        for finding in findings:
            key = f"{finding.code.removeprefix('REPUTATION_').lower()}:{finding.status}"
            counts[key] = counts.get(key, 0) + 1
        self.statistics.add(counts)

    async def deliver_statistics(self) -> int:
        """Send pending statistics now (with consent only); returns the detections sent.

        Counts are taken out before sending and put back when delivery fails, so two workers
        never send the same counts twice.
        """
        stats, http = self.statistics, self._http
        if stats is None or http is None or not self.allowed():
            return 0
        counts = await asyncio.to_thread(stats.pending)
        if not counts:
            return 0
        await asyncio.to_thread(stats.subtract, counts)
        if await http.send_statistics(StatisticsReport(node=self.config.node, counts=counts)):
            return sum(counts.values())
        if self.allowed():
            # Kept until sent, unless consent was withdrawn while we tried.
            await asyncio.to_thread(stats.add, counts)
        return 0

    async def _send_statistics_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.statistics_interval)
            try:
                await self.deliver_statistics()
            except Exception:
                log.exception("could not deliver reputation statistics")

"""Prometheus metrics: messages, verdicts, per-detector latency, store sizes, evictions, errors.

Each gateway has its own registry (tests build several in one process). Store sizes are read
when scraped (a collector asks every store for its usage), so they are never stale; message
counters move when a message is recorded. They are served at ``[metrics] listen:port``; with
``[smtp] workers`` above one, the first worker to bind the port serves its own figures (the
others log that the port is taken), so per-message counters then cover that worker only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mailwarden_sdk import MessageEvent

from ..stores.bounded import BoundedStore

__all__ = ["GatewayMetrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)


class _StoreCollector(Collector):
    def __init__(self, stores: Callable[[], Iterable[BoundedStore]]) -> None:
        self._stores = stores

    def describe(self) -> list[Any]:
        # Without this the registry would collect at registration and so open every store in
        # the process that builds the gateway: the serve parent, before it forks its workers
        # (an LMDB environment must not cross a fork).
        return []

    def collect(self) -> Iterator[Any]:
        size = GaugeMetricFamily(
            "mailwarden_store_bytes", "Bytes a store of user data holds", labels=["store"]
        )
        records = GaugeMetricFamily(
            "mailwarden_store_records", "Records a store of user data holds", labels=["store"]
        )
        evictions = CounterMetricFamily(
            "mailwarden_store_evictions",
            "Records removed by retention or caps since start",
            labels=["store"],
        )
        for store in self._stores():
            name = store.descriptor.name
            try:
                usage = store.usage()
            except Exception:  # a store that cannot be read must not break the scrape
                log.exception("cannot measure store %s", name)
                continue
            size.add_metric([name], usage.bytes)
            records.add_metric([name], usage.count)
            evictions.add_metric([name], store.evictions)
        yield size
        yield records
        yield evictions


class GatewayMetrics:
    """The metrics of one gateway; :meth:`observe` per recorded message."""

    def __init__(self, stores: Callable[[], Iterable[BoundedStore]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "mailwarden_messages",
            "Messages recorded, by action",
            ["action"],
            registry=self.registry,
        )
        self.verdicts = Counter(
            "mailwarden_verdicts",
            "Verdict statuses of recorded messages, by kind",
            ["kind", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mailwarden_detector_seconds",
            "Time each detector took per message",
            ["detector"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mailwarden_errors", "Errors, by where they happened", ["where"], registry=self.registry
        )
        self.registry.register(_StoreCollector(stores))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe(self, event: MessageEvent) -> None:
        """Count one recorded message."""
        verdict = event.verdict
        self.messages.labels(event.action.value).inc()
        self.verdicts.labels("antivirus", verdict.antivirus.value).inc()
        self.verdicts.labels("spam", verdict.spam.value).inc()
        for kind, status in (
            ("reputation", verdict.reputation),
            ("sandbox", verdict.sandbox),
            ("content", verdict.content),
        ):
            if status:
                self.verdicts.labels(kind, status).inc()
        for stage, ms in event.timings_ms.items():
            if stage.startswith("detector."):
                self.latency.labels(stage.removeprefix("detector.")).observe(ms / 1000.0)
        for error in verdict.errors:
            self.errors.labels(f"detector:{error.split(':', 1)[0][:40]}").inc()

    def serve(self, listen: str, port: int) -> int:
        """Serve ``/metrics`` on ``listen:port`` in a thread; the port bound."""
        server, thread = start_http_server(port, addr=listen, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop the listener."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""Prometheus metrics: messages, verdicts, per-detector latency, store sizes, evictions, errors.

One process (``[smtp] workers = 1``, tests, benchmarks): each gateway has its own registry
(tests build several in one process) and ``/metrics`` serves it.

Several workers: the serve parent calls :func:`share_between_processes` before it forks them,
which puts prometheus_client in its multiprocess mode. Every worker then writes its counters,
histograms and gauges to its own files in ``<home>/run/metrics/`` (memory-mapped, no fsync),
every worker binds ``[metrics] port`` with SO_REUSEPORT, and whichever one the kernel hands a
scrape to answers with the sum over all the files (``MultiProcessCollector``): the figures of
every worker, the dead ones' included, so a counter does not drop when a worker is replaced.
The parent calls :func:`worker_exited` for a worker that ended, which removes its ``live``
gauges (``mailwarden_workers``) and keeps its counters.

Store sizes are read when scraped (a collector asks every store for its usage), so they are
never stale and, the stores being shared on disk, the same in every worker. Evictions are
counted by each process (:meth:`GatewayMetrics.sync_evictions` moves each store's count into
a counter), so they add up over the workers like the message counters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailwarden_sdk import MessageEvent

from ..stores.bounded import BoundedStore
from ..stores.lmdb_env import damaged_copies, recovered_counts

__all__ = ["GatewayMetrics", "metrics_directory", "share_between_processes", "worker_exited"]

log = logging.getLogger(__name__)

#: The variable prometheus_client reads for its multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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


def metrics_directory(home: Path) -> Path:
    """Where worker processes keep their figures for the one that answers a scrape."""
    return home / "run" / "metrics"


def share_between_processes(directory: Path) -> None:
    """Put this process and the workers it forks next in prometheus_client's multiprocess mode.

    The serve parent calls this before forking (metrics made before it, in this process, stay
    per process and are never served). The directory is emptied: files left by an earlier run
    would add its counts to this one's.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks its value class once, when it is imported, from this variable.
    # The CLI has imported it long before the config (and so this directory) is known, so the
    # choice is made again here, the way the library makes it; a metric picks the class up
    # when it is created (in each worker's own gateway, after the fork).
    if not values.ValueClass._multiprocess:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_exited(pid: int, directory: Path) -> None:
    """What the parent does for a worker that ended: its ``live`` gauges go, counters stay."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class _StoreCollector(Collector):
    def __init__(
        self, stores: Callable[[], Iterable[BoundedStore]], before: Callable[[], None]
    ) -> None:
        self._stores = stores
        self._before = before

    def describe(self) -> list[Any]:
        # Without this the registry would collect at registration and so open every store in
        # the process that builds the gateway: the serve parent, before it forks its workers
        # (an LMDB environment must not cross a fork).
        return []

    def collect(self) -> Iterator[Any]:
        # This process's evictions into their counter, before the counters are read (they
        # come after this collector in the registry).
        self._before()
        size = GaugeMetricFamily(
            "mailwarden_store_bytes", "Bytes a store of user data holds", labels=["store"]
        )
        records = GaugeMetricFamily(
            "mailwarden_store_records", "Records a store of user data holds", labels=["store"]
        )
        damaged = GaugeMetricFamily(
            "mailwarden_store_damaged_copies",
            "Damaged copies of a store moved aside (NAME.corrupt-TIME) and still on disk",
            labels=["store"],
        )
        for store in self._stores():
            name = store.descriptor.name
            # Read from the disk: the same in every worker and after a restart, until an
            # admin has looked at the copies and removed them.
            damaged.add_metric([name], len(damaged_copies(Path(store.descriptor.path))))
            try:
                usage = store.usage()
            except Exception:  # a store that cannot be read must not break the scrape
                log.exception("cannot measure store %s", name)
                continue
            size.add_metric([name], usage.bytes)
            records.add_metric([name], usage.count)
        yield size
        yield records
        yield damaged


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape in the gateway's output."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Children:
    """A labelled metric's children, each looked up once: ``labels()`` checks its arguments
    and takes the metric's lock on every call, and a message is counted with a dozen."""

    __slots__ = ("children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            # Two threads racing here get the same child from the metric.
            child = self.children[values] = self.metric.labels(*values)
        return child


class GatewayMetrics:
    """The metrics of one gateway; :meth:`observe` per recorded message."""

    def __init__(self, stores: Callable[[], Iterable[BoundedStore]]) -> None:
        self._stores = stores
        self.registry = CollectorRegistry(auto_describe=True)
        # First: a scrape moves this process's evictions into their counter before reading it.
        self.registry.register(_StoreCollector(stores, self._sync_counts))
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
        self.evictions = Counter(
            "mailwarden_store_evictions",
            "Records removed by retention or caps since start",
            ["store"],
            registry=self.registry,
        )
        self.recovered = Counter(
            "mailwarden_store_recovered",
            "Damaged stores moved aside (NAME.corrupt-TIME) and created empty; alert on any",
            ["store"],
            registry=self.registry,
        )
        self._recovered_seen: dict[str, int] = {}
        # livesum: with several workers, the sum over the live ones (a dead worker's file is
        # removed by the parent), so a worker being replaced shows as one fewer.
        self.workers = Gauge(
            "mailwarden_workers",
            "Gateway processes serving mail ([smtp] workers; 1 without)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Greylisting and rate limits (issue 23): what they deferred, and whether their state
        # is shared through Redis right now (livemin: 0 when any worker goes on locally).
        self.policy_deferrals = Counter(
            "mailwarden_policy_deferrals",
            "Messages or recipients deferred (451 4.7.1) by a policy step",
            ["policy"],
            registry=self.registry,
        )
        self.shared_state = Gauge(
            "mailwarden_shared_state_redis",
            "1 while greylisting and rate-limit state is shared in Redis, 0 while this node "
            "goes on with its local state ([redis] enabled only)",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.shared_state_round_trips = Counter(
            "mailwarden_shared_state_round_trips",
            "Requests to Redis (a pipelined batch of commands is one)",
            registry=self.registry,
        )
        self.shared_state_fallbacks = Counter(
            "mailwarden_shared_state_fallbacks",
            "Policy state operations answered from the local store because Redis failed or "
            "its breaker was open",
            registry=self.registry,
        )
        self._message = _Children(self.messages)
        self._verdict = _Children(self.verdicts)
        self._latency = _Children(self.latency)
        self._evicted: dict[str, int] = {}
        self._evicted_lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe(self, event: MessageEvent) -> None:
        """Count one recorded message."""
        verdict, counted = event.verdict, self._verdict
        # The statuses are str enums: labels and children's keys as their values, without
        # a ``.value`` descriptor call each.
        self._message(event.action).inc()
        counted("antivirus", verdict.antivirus).inc()
        counted("spam", verdict.spam).inc()
        for kind, status in (
            ("reputation", verdict.reputation),
            ("sandbox", verdict.sandbox),
            ("content", verdict.content),
        ):
            if status:
                counted(kind, status).inc()
        for stage, ms in event.timings_ms.items():
            if stage.startswith("detector."):
                self._latency(stage.removeprefix("detector.")).observe(ms / 1000.0)
        for error in verdict.errors:
            self.errors.labels(f"detector:{error.split(':', 1)[0][:40]}").inc()

    def sync_evictions(self) -> None:
        """Add what each store evicted since the last call to ``mailwarden_store_evictions``.

        The stores count their own evictions (in this process); the counter is what other
        processes see. Reading the counts opens nothing.
        """
        with self._evicted_lock:
            for store in self._stores():
                name, count = store.descriptor.name, store.evictions
                if self._evicted.get(name) == count:
                    continue  # called per message: most of the time nothing was evicted
                seen = self._evicted.get(name, 0)
                # A store object made anew counts from 0 again: all of its count is new.
                new = count - seen if count >= seen else count
                child = self.evictions.labels(name)  # every store shows, at 0 until it evicts
                if new > 0:
                    child.inc(new)
                self._evicted[name] = count

    def _sync_counts(self) -> None:
        self.sync_evictions()
        self.sync_recoveries()

    def sync_recoveries(self) -> None:
        """Add the stores this process recovered since the last call to
        ``mailwarden_store_recovered``."""
        with self._evicted_lock:
            for name, count in recovered_counts().items():
                new = count - self._recovered_seen.get(name, 0)
                if new > 0:
                    self.recovered.labels(name).inc(new)
                self._recovered_seen[name] = count

    def running(self) -> None:
        """This process serves mail now (``mailwarden_workers``)."""
        self.workers.set(1)

    def serve(self, listen: str, port: int, *, shared: Path | None = None) -> int:
        """Serve ``/metrics`` on ``listen:port`` in a thread; the port bound.

        ``shared``: the multiprocess directory of the workers (see
        :func:`share_between_processes`). The port is then bound with SO_REUSEPORT, by every
        worker, and each answers with the figures of all of them.
        """
        registry = self.registry
        if shared is not None:
            if not values.ValueClass._multiprocess:
                raise RuntimeError("share_between_processes was not called before the fork")
            registry = CollectorRegistry()
            registry.register(_StoreCollector(self._stores, self._sync_counts))
            multiprocess.MultiProcessCollector(registry, path=str(shared))  # type: ignore[no-untyped-call]
        family, _, _, _, address = socket.getaddrinfo(
            listen, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(_MetricsServer):
            address_family = family
            allow_reuse_port = shared is not None

        server = make_server(
            str(address[0]), port, make_wsgi_app(registry), Server, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        """Stop the listener."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

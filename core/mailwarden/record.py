"""Record, the last stage: what each message leaves behind, and the core's stores that hold it.

:class:`CoreStores` puts one configuration's stores together with the telemetry they feed
(metrics, events out, traces) and enforces their limits. It lives here, above ``stores/``,
because it reads the config and the telemetry: the stores themselves take plain values.

:class:`CoreStores` opens nothing until used (LMDB environments open on first access, after
any fork). ``mailwarden serve`` calls :meth:`CoreStores.start` (temp files removed, metrics
listener, the enforcement loop) and the pipeline calls :meth:`CoreStores.observe` for every
recorded message (statistics and metrics, in memory). What goes to disk or out per message
(the event, the JSON export, syslog, traces) is written by the event log's writer thread
(:meth:`~mailwarden.events.MessageEventLog.write_later`), in batches, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from mailwarden_sdk import MessageEvent, StoreDescriptor, WhenFull

from .config import Config
from .events import MessageEventLog
from .privileges import core_dumps_descriptor
from .stores.applog import ApplicationLog
from .stores.authlog import AuthLog
from .stores.backup import BackupStore
from .stores.bounded import BoundedStore, enforce
from .stores.files import FileStore
from .stores.lines import CappedLines, LinesStore
from .stores.lmdb_env import Recovery, on_recovered
from .stores.statistics import Statistics
from .stores.temp import clean_temp
from .stores.traces import TraceStreams
from .telemetry.eventsout import JsonLinesSink, SyslogSink, json_export
from .telemetry.metrics import GatewayMetrics

__all__ = ["CoreStores", "LineFile", "line_files", "plugin_file_stores", "write_recovery"]

log = logging.getLogger(__name__)


def quarantine_descriptor(config: Config) -> StoreDescriptor:
    """The held messages: the ``held`` kind of the quarantine store (its message files)."""
    return StoreDescriptor(
        name="quarantine",
        path=str(config.home / "quarantine" / "held"),
        holds="messages a rule quarantined (spam and malware), in full",
        max_bytes=config.stores.quarantine_max_bytes,
        when_full=WhenFull.REMOVE_OLDEST,
        read_permission="queues.view",
    )


def quarantine_index_descriptor(config: Config) -> StoreDescriptor:
    """The quarantine store's index: every kind's entries (held, spam, ...)."""
    return StoreDescriptor(
        name="quarantine index",
        path=str(config.home / "quarantine" / "index"),
        holds="per held message of every kind (held, spam, sandbox): its kind, envelope sender, "
        "recipients, subject, reason, score, release claims; entries go with their files",
        read_permission="queues.view",
    )


def write_recovery(app_log: ApplicationLog, recovery: Recovery) -> None:
    """The application log entry for a damaged store that was moved aside and made anew."""
    app_log.write(
        "error",
        "store recovered",
        detail=f"{recovery.store} at {recovery.path} was damaged ({recovery.reason}); "
        f"moved aside to {recovery.moved_to} and created empty",
    )


def plugin_file_stores(
    declared: Iterable[StoreDescriptor], clock: Callable[[], float] = time.time
) -> list[BoundedStore]:
    """The plugins' declared stores the core enforces as one-file-per-record folders.

    Plugins declare, the core governs: retention and ``remove_oldest`` caps are applied to the
    declared folder; ``refuse_new`` stores are only measured (the plugin asks before writing);
    ``evict_lru`` stores (an LMDB cache) keep their cap in their own transactions.
    """
    stores: list[BoundedStore] = []
    for descriptor in declared:
        if descriptor.when_full is WhenFull.EVICT_LRU:
            continue
        if descriptor.retention_days is None and descriptor.when_full is WhenFull.NOT_CAPPED:
            continue
        stores.append(FileStore(descriptor, clock=clock))
    return stores


class LineFile(msgspec.Struct, kw_only=True, frozen=True):
    """A capped line file of the core and how the inventory names it."""

    lines: CappedLines
    about: tuple[str, str, str]  # name, what it holds, read permission

    def store(self, clock: Callable[[], float]) -> LinesStore:
        """The file in the retention engine."""
        return LinesStore(self.lines, self.lines.descriptors(*self.about)[0], clock=clock)


def line_files(config: Config) -> list[LineFile]:
    """The JSON events export (when it is a file) and the web's audit copy."""
    found = []
    export = json_export(config)
    if export is not None:
        holds = (
            "each message event as a JSON line (what the message event log holds), for "
            "log pipelines; rotated to .1 at half the cap"
        )
        found.append(
            LineFile(lines=export, about=("JSON events export", holds, "events.messages.view"))
        )
    audit = CappedLines(config.home / "web" / "audit.jsonl", config.stores.audit_max_bytes)
    holds = (
        "what people did through the web interface, the API and the account commands "
        "(who, what, when, client IP); also in the application event log"
    )
    found.append(LineFile(lines=audit, about=("web audit copy", holds, "events.app.view")))
    return found


class CoreStores:
    """Every bounded core store of one configuration."""

    def __init__(
        self, config: Config, events: MessageEventLog, *, clock: Callable[[], float] = time.time
    ) -> None:
        cfg = config.stores
        self.config = config
        self.events = events
        self.app_log = ApplicationLog(
            config.path_in_home(cfg.app_log_path),
            retention_days=cfg.app_log_retention_days,
            max_bytes=cfg.app_log_max_bytes,
            clock=clock,
        )
        self.auth_log = AuthLog(
            config.path_in_home(cfg.auth_log_path),
            retention_days=cfg.auth_log_retention_days,
            clock=clock,
        )
        self.backup = BackupStore(
            config.path_in_home(cfg.backup_path), max_bytes=cfg.backup_max_bytes, clock=clock
        )
        self.traces = (
            TraceStreams(
                config.path_in_home(cfg.traces_path),
                max_bytes_per_stream=cfg.trace_max_bytes,
                clock=clock,
            )
            if cfg.traces
            else None
        )
        self.statistics = Statistics(config.path_in_home(cfg.statistics_path))
        self.quarantine = FileStore(quarantine_descriptor(config), clock=clock)
        self.cores = (
            FileStore(core_dumps_descriptor(config), clock=clock)
            if config.gateway.core_dumps
            else None
        )
        self.line_files = [lines.store(clock) for lines in line_files(config)]
        self.temp = config.path_in_home(cfg.temp_path)
        self.plugin_stores: list[BoundedStore] = []
        self.metrics = GatewayMetrics(self.bounded)
        self.sinks: list[JsonLinesSink | SyslogSink] = []
        if config.events.json:
            export = json_export(config)
            self.sinks.append(
                JsonLinesSink(
                    str(export.path) if export else config.events.json,
                    config.events.json_max_bytes,
                )
            )
        if config.events.syslog:
            self.sinks.append(
                SyslogSink(
                    config.events.syslog,
                    format=config.events.syslog_format,
                    facility=config.events.syslog_facility,
                    hostname=config.gateway.hostname,
                )
            )
        self._task: asyncio.Task[None] | None = None
        # Weakly: the listener list is the process's, and a gateway made in a test must not
        # be kept alive by it.
        ref = weakref.ref(self)

        def recovered(recovery: Recovery) -> None:
            stores = ref()
            if stores is not None:
                stores._recovered(recovery)

        self._unsubscribe = on_recovered(recovered)
        events.on_written = self._written
        events.on_failed = self._not_written

    def _recovered(self, recovery: Recovery) -> None:
        self.metrics.sync_recoveries()
        ours = (
            self.events.directory,
            self.app_log.path,
            self.auth_log.path,
            self.backup.index.path,
            self.statistics.root,
        )
        path = Path(recovery.path)
        if path.is_relative_to(self.config.home) or path in ours:
            # Not another gateway's store (tests run several in one process).
            write_recovery(self.app_log, recovery)

    def bounded(self) -> list[BoundedStore]:
        """Every store with limits the core enforces, plugins' included."""
        stores: list[BoundedStore] = [
            self.events.store,
            self.app_log,
            self.auth_log,
            self.backup,
            self.quarantine,
        ]
        if self.traces is not None:
            stores.append(self.traces)
        if self.cores is not None:
            stores.append(self.cores)
        stores += self.line_files
        return stores + self.plugin_stores

    def enforce_all(self) -> dict[str, int]:
        """Apply every store's limits now; records removed per store name."""
        removed: dict[str, int] = {}
        for store in self.bounded():
            try:
                removed[store.descriptor.name] = enforce(store)
            except Exception:
                log.exception("enforcing the limits of %s failed", store.descriptor.name)
                self.metrics.errors.labels(f"store:{store.descriptor.name}").inc()
        self.metrics.sync_evictions()
        return removed

    def exporting(self) -> bool:
        """Whether a written event goes on somewhere (events out, traces) beside the log."""
        return bool(self.sinks) or self.traces is not None

    def observe(self, event: MessageEvent) -> None:
        """What one recorded message adds in memory beside its event: counters, metrics."""
        try:
            self.statistics.count(event)
        except Exception:
            log.exception("statistics of %s not counted", event.id)
            self.metrics.errors.labels("store:statistics").inc()
        self.metrics.observe(event)

    def _not_written(self, lost: int) -> None:
        self.metrics.errors.labels("store:message event log").inc(lost)

    def _written(self, events: list[MessageEvent]) -> None:
        # The event writer's thread, after a batch's commit: an exported event can already be
        # searched for (unless its write failed, which is logged and counted).
        for event in events:
            if self.traces is not None:
                self._trace(event)
            for sink in self.sinks:
                try:
                    sink.send(event)
                except Exception:
                    log.exception("sending event %s out failed", event.id)
                    self.metrics.errors.labels("events-out").inc()
        # Recording may have trimmed a store (the event log's cap).
        self.metrics.sync_evictions()

    def _trace(self, event: MessageEvent) -> None:
        # Diagnostics: what each message went through (findings with their details, timings,
        # the reply), one line per message in the ``pipeline`` stream.
        assert self.traces is not None
        try:
            self.traces.write("pipeline", msgspec.json.encode(event).decode())
        except Exception:
            log.exception("trace of %s not written", event.id)
            self.metrics.errors.labels("store:traces").inc()

    async def start(self, *, clean: bool = True, shared_metrics: Path | None = None) -> int | None:
        """Remove temp files (``clean``), start the metrics listener and the enforcement loop;
        the metrics port, or ``None`` when metrics are off.

        ``shared_metrics``: in a worker, the directory where every worker keeps its figures
        (the listener then shares the port with the other workers and serves all of them).
        """
        if clean:
            await asyncio.to_thread(clean_temp, self.temp)
        self.metrics.running()
        port = None
        if self.config.metrics.port:
            try:
                port = self.metrics.serve(
                    self.config.metrics.listen, self.config.metrics.port, shared=shared_metrics
                )
            except OSError as exc:
                log.warning("metrics listener not started: %s", exc)
        self._task = asyncio.create_task(self._keep_enforced())
        return port

    async def _keep_enforced(self) -> None:
        while True:
            await asyncio.to_thread(self.enforce_all)
            await asyncio.sleep(self.config.stores.enforce_interval)

    async def stop(self) -> None:
        """Write the queued events out, stop the loop and the listener; close the sinks."""
        await asyncio.to_thread(self.events.stop_writer)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.metrics.close()
        for sink in self.sinks:
            sink.close()
        self.flush()

    def flush(self) -> None:
        """Write what waits in memory: the queued message events (their writer ends; the
        next event starts one) and the last second of statistics counters."""
        self.events.stop_writer()
        try:
            self.statistics.flush()
        except Exception:
            log.exception("statistics counters of the last second not written")

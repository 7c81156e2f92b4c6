"""The data inventory: every store of user data, where it is, what it holds, its limits, and
what is in it now.

Core stores are described from the live configuration; plugins add theirs through
``mailwarden_data_stores``. Sizes are measured on disk; record counts and the oldest record
come from the stores themselves where they keep them (LMDB record logs count exactly), else
from their files. ``mailwarden data-inventory`` prints the result, so what an auditor reads is
what is on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .config import Config
from .events import MessageEventLog, event_log_descriptor
from .plugins import PluginSet
from .privileges import core_dumps_descriptor
from .record import line_files, quarantine_descriptor, quarantine_index_descriptor
from .sharedstate import local_state
from .spool import DAMAGED_MAX_BYTES
from .stores.applog import ApplicationLog
from .stores.authlog import AuthLog
from .stores.backup import BackupStore
from .stores.bounded import BoundedStore
from .stores.files import walk_files
from .stores.lmdb_env import damaged_copies
from .stores.statistics import Statistics
from .stores.traces import TraceStreams
from .telemetry.metrics import metrics_directory
from .tls import tls_paths

__all__ = ["StoreState", "core_stores", "inventory", "plugin_descriptors"]


class StoreState(msgspec.Struct, kw_only=True):
    """A declared store with what is in it now.

    ``bytes`` and ``files`` are measured on disk; ``records`` is the number of records (a
    record log's entries, a cache's entries, else the number of files); ``oldest`` the time of
    the oldest record (or file), ``None`` when empty or not known.
    """

    store: StoreDescriptor
    owner: str
    exists: bool
    bytes: int
    files: int
    records: int
    oldest: float | None = None


def core_stores(config: Config) -> list[StoreDescriptor]:
    """The stores the core itself keeps, as configured."""
    return [descriptor for descriptor, _ in _core(config)]


def _core(config: Config) -> list[tuple[StoreDescriptor, BoundedStore | None]]:
    cfg = config.stores
    stores: list[tuple[StoreDescriptor, BoundedStore | None]] = [
        (
            StoreDescriptor(
                name="configuration",
                path=config.source or "(embedded defaults)",
                holds="settings and rules, including addresses named in rules; LDAP bind "
                "credentials when set in the file",
                read_permission="settings.view",
            ),
            None,
        ),
        (
            StoreDescriptor(
                name="maildir",
                path=str(config.path_in_home(config.delivery.maildir)),
                holds="delivered messages in full (local delivery mode)",
                read_permission="queues.manage",
            ),
            None,
        ),
        (
            StoreDescriptor(
                name="spool",
                path=str(config.path_in_home(config.spool.path)),
                holds="messages in flight in full, with their envelopes; removed when "
                "delivered, rejected or stored elsewhere; temp files removed at start",
                read_permission="queues.manage",
            ),
            None,
        ),
        (
            StoreDescriptor(
                name="damaged spool entries",
                path=str(config.path_in_home(config.spool.path) / "damaged"),
                holds="spool entries that could not be read (full messages with their "
                "envelopes when readable), each with an ID.reason file; kept for an admin",
                max_bytes=DAMAGED_MAX_BYTES,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="queues.manage",
            ),
            None,
        ),
        (
            StoreDescriptor(
                name="temp files",
                path=str(config.path_in_home(cfg.temp_path)),
                holds="parts of messages being processed; removed at start",
                read_permission="diagnostics.get",
            ),
            None,
        ),
    ]
    quarantine = quarantine_descriptor(config)
    stores.append((quarantine, None))
    stores.append((quarantine_index_descriptor(config), None))
    if config.directory.enabled:
        stores.append(
            (
                StoreDescriptor(
                    name="directory cache",
                    path=str(config.path_in_home(config.directory.cache_path)),
                    holds="LDAP/AD users and contacts: names, addresses, sAMAccountName, UPN, "
                    "objectSid, group memberships; replaced at each refresh "
                    f"(every {config.directory.refresh_interval:g} s), deleted when the "
                    "directory integration is turned off (at the reload or start that turns "
                    "it off)",
                    read_permission="settings.view",
                ),
                None,
            )
        )
    events = config.path_in_home(config.events.path)
    if config.events.enabled:
        log = MessageEventLog(events, retention_days=None, max_bytes=None)
        descriptor = event_log_descriptor(
            events, config.events.retention_days, config.events.max_bytes
        )
        stores.append((descriptor, log.store))
    app = ApplicationLog(
        config.path_in_home(cfg.app_log_path),
        retention_days=cfg.app_log_retention_days,
        max_bytes=cfg.app_log_max_bytes,
    )
    auth = AuthLog(
        config.path_in_home(cfg.auth_log_path), retention_days=cfg.auth_log_retention_days
    )
    backup = BackupStore(config.path_in_home(cfg.backup_path), max_bytes=cfg.backup_max_bytes)
    stores += [(app.descriptor, app), (auth.descriptor, auth), (backup.descriptor, backup)]
    if cfg.traces:
        traces = TraceStreams(
            config.path_in_home(cfg.traces_path), max_bytes_per_stream=cfg.trace_max_bytes
        )
        stores.append((traces.descriptor, traces))
    stats = Statistics(config.path_in_home(cfg.statistics_path))
    stores.append((stats.descriptor, None))
    for lines in line_files(config):
        stores += [(d, None) for d in lines.lines.descriptors(*lines.about)]
    if config.gateway.core_dumps:
        stores.append((core_dumps_descriptor(config), None))
    if config.greylisting.enabled or config.ratelimit.enabled:
        state = local_state(config)
        stores.append((state.descriptor, state))
    web = config.home / "web"
    stores.append(
        (
            StoreDescriptor(
                name="web accounts",
                path=str(web),
                holds="local web accounts (names, roles, memory-hard password hashes), API "
                "token hashes and names, revoked sessions, the session signing key, the first "
                "administrator's password file until first used; and audit.jsonl (below)",
                read_permission="users.manage",
            ),
            None,
        )
    )
    stores.append(
        (
            StoreDescriptor(
                name="worker metrics",
                path=str(metrics_directory(config.home)),
                holds="Prometheus figures of each worker process (counts, latencies, store "
                "sizes; no addresses); emptied at every start",
                read_permission="reports.view",
            ),
            None,
        )
    )
    cert, key = tls_paths(config)
    tls = [
        ("TLS key", key, "the listener's private key (file 0600); never shown in the web "
         "interface", "mta.edit"),
        ("TLS certificate", cert, "the listener's certificate (public)", "mta.view"),
    ]  # fmt: skip
    if not (config.tls.cert_file and config.tls.key_file):
        tls.append(
            ("TLS generation lock", key.parent / ".generate.lock", "nothing (empty): held "
             "while the self-signed pair is generated", "mta.view")
        )  # fmt: skip
    for name, path, holds, permission in tls:
        stores.append(
            (
                StoreDescriptor(name=name, path=str(path), holds=holds, read_permission=permission),
                None,
            )
        )
    for dkim in config.dkim.keys:
        stores.append(
            (
                StoreDescriptor(
                    name=f"DKIM key {dkim.selector}._domainkey.{dkim.domain}",
                    path=str(config.path_in_home(dkim.key_file)),
                    holds="a DKIM private signing key (file 0600); never shown in the web "
                    "interface",
                    read_permission="mta.edit",
                ),
                None,
            )
        )
    return stores


class _InventoryHost:
    """The configuration being inventoried, as ``mailwarden_sdk.Host`` (not started)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.data_dir: Path = config.home

    def config_for(self, section: str) -> Any:
        return self._config.plugins.get(section)


def plugin_descriptors(config: Config, plugins: PluginSet) -> list[tuple[str, StoreDescriptor]]:
    """(plugin name, descriptor) of every store the plugins declare for ``config``."""
    declared: list[tuple[str, StoreDescriptor]] = []
    host = _InventoryHost(config)
    for impl in plugins.pm.hook.mailwarden_data_stores.get_hookimpls():
        # pluggy lets an implementation take fewer arguments than the spec names.
        kwargs = {"host": host} if "host" in impl.argnames else {}
        produced: Any = impl.function(**kwargs)
        for store in produced or ():
            if isinstance(store, StoreDescriptor):
                declared.append((impl.plugin_name, store))
    return declared


def _measure(descriptor: StoreDescriptor, store: BoundedStore | None, owner: str) -> StoreState:
    target = Path(descriptor.path)
    exists = target.exists()
    total = files = 0
    oldest: float | None = None
    for _path, stat in walk_files(target):
        total += stat.st_size
        files += 1
        oldest = stat.st_mtime if oldest is None else min(oldest, stat.st_mtime)
    records = files
    if store is not None and exists:
        # LMDB files are sparse and preallocated: the records say what is really held.
        usage = store.usage()
        records, oldest = usage.count, usage.oldest
    elif descriptor.entries is not None:
        records = descriptor.entries
        oldest = None if descriptor.when_full is WhenFull.EVICT_LRU else oldest
    return StoreState(
        store=descriptor,
        owner=owner,
        exists=exists,
        bytes=total,
        files=files,
        records=records,
        oldest=oldest,
    )


def _set_aside(descriptor: StoreDescriptor, owner: str) -> list[StoreState]:
    """Damaged copies of a store moved aside at recovery (``NAME.corrupt-TIME`` beside it)."""
    copies = damaged_copies(Path(descriptor.path))
    return [
        _measure(
            StoreDescriptor(
                name=f"{descriptor.name} (damaged copy)",
                path=str(copy),
                holds=f"what {descriptor.name} held when it was found damaged and moved "
                "aside; kept for forensics until an admin removes it",
                read_permission=descriptor.read_permission,
            ),
            None,
            owner,
        )
        for copy in copies
    ]


def inventory(config: Config, plugins: PluginSet) -> list[StoreState]:
    """Every declared store, core first, then each plugin's, with what it holds now (damaged
    copies moved aside after each store)."""
    states: list[StoreState] = []
    for descriptor, store in _core(config):
        states.append(_measure(descriptor, store, "core"))
        states += _set_aside(descriptor, "core")
    for owner, descriptor in plugin_descriptors(config, plugins):
        states.append(_measure(descriptor, None, owner))
        states += _set_aside(descriptor, owner)
    return states

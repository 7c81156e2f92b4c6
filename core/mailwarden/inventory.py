"""The data inventory: every store of user data, where it is, what it holds, its limits.

Core stores are described here from the live configuration; plugins add theirs through
``mailwarden_data_stores``. ``mailwarden data-inventory`` prints the result with the current
size of each store, so what an auditor reads is what is on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from .config import Config
from .plugins import PluginSet

__all__ = ["StoreState", "core_stores", "inventory"]


class StoreState(msgspec.Struct, kw_only=True):
    """A declared store with what is in it now."""

    store: StoreDescriptor
    owner: str
    exists: bool
    bytes: int
    files: int


def core_stores(config: Config) -> list[StoreDescriptor]:
    """The stores the core itself keeps, as configured."""
    stores = [
        StoreDescriptor(
            name="configuration",
            path=config.source or "(embedded defaults)",
            holds="settings and rules, including addresses named in rules",
            read_permission="settings.view",
        ),
        StoreDescriptor(
            name="maildir",
            path=str(config.path_in_home(config.delivery.maildir)),
            holds="delivered messages in full (local delivery mode)",
            read_permission="queues.manage",
        ),
        StoreDescriptor(
            name="quarantine",
            path=str(config.home / "quarantine"),
            holds="messages a rule quarantined, in full",
            read_permission="queues.view",
        ),
    ]
    if config.directory.enabled:
        stores.append(
            StoreDescriptor(
                name="directory cache",
                path=str(config.path_in_home(config.directory.cache_path)),
                holds="LDAP/AD users and contacts: names, addresses, sAMAccountName, UPN, "
                "objectSid, group memberships; replaced at each refresh "
                f"(every {config.directory.refresh_interval:g} s), deleted at start-up when "
                "the directory integration is off",
                read_permission="settings.view",
            )
        )
    if config.events.enabled:
        stores.append(
            StoreDescriptor(
                name="message event log",
                path=str(config.path_in_home(config.events.path)),
                holds="per message: addresses, client IP, HELO, subject, attachment names, "
                "findings, verdict, action",
                retention_days=config.events.retention_days,
                max_bytes=config.events.max_bytes,
                when_full=WhenFull.REMOVE_OLDEST,
                read_permission="events.messages.view",
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


def _measure(path: str) -> tuple[bool, int, int]:
    target = Path(path)
    if target.is_file():
        return True, target.stat().st_size, 1
    if not target.is_dir():
        return False, 0, 0
    total = count = 0
    for root, _dirs, names in os.walk(target):
        for name in names:
            try:
                total += (Path(root) / name).stat().st_size
                count += 1
            except OSError:
                continue  # removed while we walked
    return True, total, count


def inventory(config: Config, plugins: PluginSet) -> list[StoreState]:
    """Every declared store, core first, then each plugin's, with its current size."""
    declared: list[tuple[str, StoreDescriptor]] = [("core", s) for s in core_stores(config)]
    host = _InventoryHost(config)
    for impl in plugins.pm.hook.mailwarden_data_stores.get_hookimpls():
        # pluggy lets an implementation take fewer arguments than the spec names.
        kwargs = {"host": host} if "host" in impl.argnames else {}
        produced: Any = impl.function(**kwargs)
        for store in produced or ():
            if isinstance(store, StoreDescriptor):
                declared.append((impl.plugin_name, store))
    states = []
    for owner, store in declared:
        exists, size, files = _measure(store.path)
        states.append(StoreState(store=store, owner=owner, exists=exists, bytes=size, files=files))
    return states

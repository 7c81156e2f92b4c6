"""The directory as the gateway uses it: rules read the cache, a task keeps it fresh.

Rules never wait for the network: :meth:`Directory.groups_of` answers from the LMDB cache,
which a full refresh fills at start-up (when it is empty) and every ``refresh_interval``
seconds after. A live :meth:`Directory.lookup` (the CLI) asks the server and falls back to
the cache when the server is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, DirectoryConfig
from ..errors import ConfigError
from .cache import DirectoryCache, remove_cache
from .model import DirectoryEntry, DirectoryError, SearchHit

if TYPE_CHECKING:
    from .client import LdapClient

__all__ = [
    "Directory",
    "LookupResult",
    "RefreshResult",
    "cache_path",
    "open_directory",
    "turn_off",
]

log = logging.getLogger(__name__)


def cache_path(config: Config) -> Path:
    """Where the directory cache of ``config`` lives."""
    return config.path_in_home(config.directory.cache_path)


def _password(config: Config) -> str:
    section = config.directory
    if not section.password_file:
        return section.bind_password
    path = config.path_in_home(section.password_file)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the bind password: {exc}",
            path=config.source,
            key="directory.password_file",
        ) from exc
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{path} is readable by group or others; chmod 0600 it",
            path=config.source,
            key="directory.password_file",
        )
    return text.strip()


@dataclass(frozen=True)
class LookupResult:
    """A live lookup's answer: the entry (or ``None``), where it came from, and any error."""

    entry: DirectoryEntry | None
    source: str  # "directory" or "cache"
    error: str | None = None


@dataclass(frozen=True)
class RefreshResult:
    """What a full refresh stored."""

    entries: int
    groups: int
    seconds: float


class Directory:
    """An opened directory integration: server client plus cache."""

    def __init__(self, config: DirectoryConfig, cache: DirectoryCache, password: str) -> None:
        self.config = config
        self.cache = cache
        # ldap3 is imported only when the integration is on.
        from .client import LdapClient

        self.client: LdapClient = LdapClient(config, password)
        self._lock = asyncio.Lock()

    def close(self) -> None:
        """Unbind and close the cache."""
        self.client.close()
        self.cache.close()

    def groups_of(self, address: str) -> frozenset[str]:
        """Group keys of ``address`` from the cache (what rules' ``group:`` patterns test)."""
        entry = self.cache.get(address)
        return entry.group_keys() if entry is not None else frozenset()

    def lookup(self, address: str) -> LookupResult:
        """Ask the server; store and return its answer, or the cached one if it is down."""
        try:
            entry = self.client.lookup(address)
        except DirectoryError as exc:
            log.warning("directory unreachable, answering %s from the cache: %s", address, exc)
            return LookupResult(self.cache.get(address), "cache", str(exc))
        if entry is not None:
            self.cache.put(entry)
        return LookupResult(entry, "directory")

    def refresh(self) -> RefreshResult:
        """Replace the cache with a full snapshot of the server (blocking; raises
        :class:`DirectoryError` and leaves the cache as it was if the server fails)."""
        began = time.monotonic()
        entries, groups = self.client.snapshot()
        self.cache.replace_all(entries, groups)
        return RefreshResult(len(entries), len(groups), time.monotonic() - began)

    def search(self, prefix: str, limit: int = 10) -> list[SearchHit]:
        """Autocomplete over cached users, contacts and groups (prefix, case-insensitive)."""
        return self.cache.search(prefix, limit)

    async def keep_fresh(self) -> None:
        """Refresh every ``refresh_interval`` seconds until cancelled; failures are logged and
        the cache keeps serving its last snapshot."""
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            await self.refresh_in_background()

    async def refresh_in_background(self) -> RefreshResult | None:
        """One refresh in a thread, so the event loop keeps serving; ``None`` if it failed."""
        async with self._lock:
            try:
                result = await asyncio.to_thread(self.refresh)
            except DirectoryError as exc:
                log.warning("directory refresh failed; using the cached snapshot: %s", exc)
                return None
        log.info("directory refreshed: %d entries, %d groups", result.entries, result.groups)
        return result


# Turn-offs in progress (a task must be referenced until it ends).
_TURNING_OFF: set[asyncio.Task[bool]] = set()


def turn_off(directory: Directory, refresher: asyncio.Task[None] | None) -> None:
    """The integration was turned off in a running gateway (a reload): stop refreshing, close
    the cache and delete it now, not at the next start.

    In an event loop this happens in a task that first waits for a refresh in progress (its
    thread writes to the cache); without one, at once.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if refresher is not None:
            refresher.cancel()
        directory.close()
        _remove(directory.cache.path)
        return
    task = loop.create_task(_turn_off(directory, refresher))
    _TURNING_OFF.add(task)
    task.add_done_callback(_TURNING_OFF.discard)


async def _turn_off(directory: Directory, refresher: asyncio.Task[None] | None) -> bool:
    async with directory._lock:
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        directory.close()
        return await asyncio.to_thread(_remove, directory.cache.path)


def _remove(path: Path) -> bool:
    removed = remove_cache(path)
    if removed:
        # Said in the serve output (a warning) so the admin sees the reload took it away.
        log.warning("directory integration turned off: deleted its cache %s", path)
    return removed


def open_directory(config: Config, *, fill_empty: bool = True) -> Directory | None:
    """Open the integration of ``config``, or delete its cache and return ``None`` if it is off.

    With ``fill_empty``, a cache that was never filled is filled now (bounded by ``timeout``),
    so the first messages after the first start are not matched against an empty directory;
    when the server is unreachable the gateway still starts and the rules see no groups.
    """
    path = cache_path(config)
    if not config.directory.enabled:
        if remove_cache(path):
            log.info("directory integration is off: deleted its cache %s", path)
        return None
    directory = Directory(config.directory, DirectoryCache(path), _password(config))
    if fill_empty and directory.cache.refreshed_at() is None:
        try:
            directory.refresh()
        except DirectoryError as exc:
            log.warning("directory refresh at start-up failed: %s", exc)
    return directory

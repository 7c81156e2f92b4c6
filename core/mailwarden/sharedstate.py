"""State the policy steps keep (greylisting triplets, rate-limit counters): local or in Redis.

:class:`StateBackend` is the small interface they use: counters that live for a time, and
values that live for a time. :class:`LocalState` keeps them in an LMDB environment of this
node (capped; the entries expiring first go when it is full); :class:`RedisState` in Redis,
shared by every node that names the same server and prefix. :class:`SharedState` is what a
node with ``[redis]`` uses: Redis under a time limit and a circuit breaker, and the local
store whenever Redis does not answer, so mail keeps flowing (with per-node state) and the
metric ``mailwarden_shared_state_redis`` and the log say so.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailwarden_sdk import StoreDescriptor, WhenFull

from .stores.bounded import BoundedStore, Usage
from .stores.lmdb_env import LmdbEnv

if TYPE_CHECKING:
    from .config import Config
    from .telemetry.metrics import GatewayMetrics

__all__ = ["LocalState", "RedisState", "SharedState", "StateBackend", "local_state", "open_state"]

log = logging.getLogger(__name__)

#: (key, amount to add, time to live in seconds when the counter is new)
Increment = tuple[str, int, float]

_EXPIRY = struct.Struct(">d")
_COUNT = struct.Struct(">q")


class StateBackend(abc.ABC):
    """Counters and values that expire; keys are short strings chosen by the policy steps."""

    #: Where the state is, for logs and docs ("local", "redis").
    kind: str = ""

    @abc.abstractmethod
    async def add(self, increments: Sequence[Increment]) -> list[int]:
        """Add to each counter (made with its time to live when missing); the new values."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """The value of ``key``, ``None`` when missing or expired."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds; with ``only_new`` only when missing. Whether set."""

    async def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections and handles."""


class LocalState(StateBackend, BoundedStore):
    """The state of this node in LMDB: ``expiry (8 bytes) + value`` per key, at most
    ``max_entries`` entries (when a write finds more, the expired ones go, then the ones
    expiring first, down to 90 %). Not fsynced per write: a machine crash may forget the last
    seconds of counters and triplets, which costs a sender one more deferral at most. The
    transactions run in threads: a walk of a full store never stalls the event loop."""

    kind = "local"

    def __init__(
        self, path: Path, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.clock = clock
        self.env = LmdbEnv(path, dbs={"state": False}, sync=False)
        self._lock = threading.Lock()
        self.descriptor = StoreDescriptor(
            name="policy state",
            path=str(path),
            holds="greylisting triplets (hashes of sender, recipient and client network, "
            "with first-seen or passed times) and rate-limit counters (hashes of senders, "
            "domains, client addresses, recipients, with counts); each entry expires by "
            "itself",
            max_entries=max_entries,
            when_full=WhenFull.REMOVE_OLDEST,
            read_permission="settings.view",
        )

    # -- StateBackend ------------------------------------------------------------------------

    async def add(self, increments: Sequence[Increment]) -> list[int]:
        now = self.clock()

        def work(txn: Any) -> list[int]:
            db = self.env.db("state")
            values = []
            for key, amount, ttl in increments:
                raw = txn.get(key.encode(), db=db)
                expiry, count = now + ttl, 0
                if raw is not None and _EXPIRY.unpack_from(raw)[0] > now:
                    expiry = _EXPIRY.unpack_from(raw)[0]
                    count = _COUNT.unpack_from(raw, _EXPIRY.size)[0]
                count += amount
                txn.put(key.encode(), _EXPIRY.pack(expiry) + _COUNT.pack(count), db=db)
                values.append(count)
            self._keep_cap(txn, now)
            return values

        return await asyncio.to_thread(self.env.write, work)

    async def get(self, key: str) -> str | None:
        now = self.clock()

        def work(txn: Any) -> str | None:
            raw = txn.get(key.encode(), db=self.env.db("state"))
            if raw is None or _EXPIRY.unpack_from(raw)[0] <= now:
                return None
            return bytes(raw[_EXPIRY.size :]).decode()

        return await asyncio.to_thread(self.env.read, work)

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        now = self.clock()

        def work(txn: Any) -> bool:
            db = self.env.db("state")
            if only_new:
                raw = txn.get(key.encode(), db=db)
                if raw is not None and _EXPIRY.unpack_from(raw)[0] > now:
                    return False
            txn.put(key.encode(), _EXPIRY.pack(now + ttl) + value.encode(), db=db)
            self._keep_cap(txn, now)
            return True

        return await asyncio.to_thread(self.env.write, work)

    async def close(self) -> None:
        self.env.close()

    def _keep_cap(self, txn: Any, now: float) -> None:
        db = self.env.db("state")
        if txn.stat(db)["entries"] <= self.max_entries:
            return
        # Down to 90 %: a full store is walked once per tenth of its size in new entries, not
        # at every write.
        self._trim(txn, now, self.max_entries * 9 // 10)

    def _trim(self, txn: Any, horizon: float, keep: int | None) -> int:
        """Remove entries expired at ``horizon``, then (``keep``) those expiring first."""
        db = self.env.db("state")
        live: list[tuple[float, bytes]] = []
        removed = 0
        with txn.cursor(db=db) as cursor:
            for key, raw in cursor:
                expiry = _EXPIRY.unpack_from(raw)[0]
                if expiry <= horizon:
                    removed += 1
                    txn.delete(key, db=db)
                else:
                    live.append((expiry, bytes(key)))
        if keep is not None and len(live) > keep:
            live.sort()
            for _, key in live[: len(live) - keep]:
                txn.delete(key, db=db)
                removed += 1
        return removed

    # -- BoundedStore (the inventory and the retention engine) -------------------------------

    def usage(self) -> Usage:
        count = self.env.read(lambda txn: int(txn.stat(self.env.db("state"))["entries"]))
        return Usage(bytes=self.env.disk_bytes(), count=count)

    def remove_older_than(self, horizon: float) -> int:
        # Entries carry their expiry, not their birth: what has expired by now goes.
        return self.env.write(lambda txn: self._trim(txn, self.clock(), None))

    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        return self.env.write(lambda txn: self._trim(txn, self.clock(), max_entries))


class RedisState(StateBackend):
    """The state in Redis (redis-py's asyncio client), every key under ``prefix``.

    A counter is ``SET key 0 PX ttl NX`` then ``INCRBY``, all counters of a message in one
    pipelined round trip. Every call is bounded by ``timeout`` (socket and overall)."""

    kind = "redis"

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.timeout = timeout
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry_on_timeout=False,
        )

    async def add(self, increments: Sequence[Increment]) -> list[int]:
        async with asyncio.timeout(self.timeout):
            pipe = self.client.pipeline(transaction=True)
            for key, amount, ttl in increments:
                pipe.set(self.prefix + key, 0, px=max(1, int(ttl * 1000)), nx=True)
                pipe.incrby(self.prefix + key, amount)
            replies = await pipe.execute()
        return [int(value) for value in replies[1::2]]

    async def get(self, key: str) -> str | None:
        async with asyncio.timeout(self.timeout):
            value = await self.client.get(self.prefix + key)
        return None if value is None else str(value)

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        async with asyncio.timeout(self.timeout):
            done = await self.client.set(
                self.prefix + key, value, px=max(1, int(ttl * 1000)), nx=only_new
            )
        return bool(done)

    async def close(self) -> None:
        await self.client.aclose()


class SharedState(StateBackend):
    """Redis first, the local store when Redis fails or its breaker is open.

    After ``failures`` failed calls in a row the breaker opens: Redis is not asked for
    ``reset`` seconds, then one call tries it again (and closes the breaker when it works).
    Each call answered locally counts in ``mailwarden_shared_state_fallbacks``; the gauge
    ``mailwarden_shared_state_redis`` is 1 while Redis answers and 0 while it does not.
    State written locally during an outage stays local (it is not copied to Redis later).
    """

    kind = "redis"

    def __init__(
        self,
        remote: StateBackend,
        local: StateBackend,
        *,
        failures: int,
        reset: float,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote, self.local = remote, local
        self.failures_allowed, self.reset = failures, reset
        self.metrics = metrics
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self.down = False
        if metrics is not None:
            metrics.shared_state.set(1)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.failures >= self.failures_allowed and self.clock() < self.open_until:
            return await self._locally(name, args, kwargs)
        try:
            result = await getattr(self.remote, name)(*args, **kwargs)
        except Exception as exc:  # timeouts, refused connections, errors Redis answers
            self.failures += 1
            if self.failures >= self.failures_allowed:
                self.open_until = self.clock() + self.reset
            if not self.down:
                self.down = True
                log.warning(
                    "Redis failed (%s): going on with this node's local state; the greylisting "
                    "triplets and rate-limit counters are not shared until it is back",
                    exc.__class__.__name__ + (f": {exc}" if str(exc) else ""),
                )
                if self.metrics is not None:
                    self.metrics.shared_state.set(0)
            return await self._locally(name, args, kwargs)
        self.failures = 0
        if self.down:
            self.down = False
            log.warning("Redis answers again: greylisting and rate limits are shared again")
            if self.metrics is not None:
                self.metrics.shared_state.set(1)
        return result

    async def _locally(self, name: str, args: Any, kwargs: Any) -> Any:
        if self.metrics is not None:
            self.metrics.shared_state_fallbacks.inc()
        return await getattr(self.local, name)(*args, **kwargs)

    async def add(self, increments: Sequence[Increment]) -> list[int]:
        result: list[int] = await self._call("add", increments)
        return result

    async def get(self, key: str) -> str | None:
        result: str | None = await self._call("get", key)
        return result

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        return bool(await self._call("put", key, value, ttl, only_new=only_new))

    async def close(self) -> None:
        try:
            await self.remote.close()
        finally:
            await self.local.close()


def local_state(config: Config) -> LocalState:
    """This node's store of policy state, as configured (opened at first use)."""
    cfg = config.redis
    return LocalState(config.path_in_home(cfg.local_path), cfg.local_max_entries)


def open_state(config: Config, metrics: GatewayMetrics | None = None) -> StateBackend:
    """The state the policy steps use: shared through Redis when ``[redis]`` is enabled."""
    local = local_state(config)
    cfg = config.redis
    if not cfg.enabled:
        return local
    remote = RedisState(cfg.url, cfg.prefix, cfg.timeout)
    return SharedState(
        remote, local, failures=cfg.breaker_failures, reset=cfg.breaker_reset, metrics=metrics
    )

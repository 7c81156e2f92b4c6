"""State the policy steps and plugins keep (greylisting triplets, rate-limit counters; Bayes
tokens, fuzzy hashes, reputation answers through the SDK): local or in Redis.

:class:`StateBackend` is the small interface they use: counters that live for a time, and
values that live for a time. :class:`LocalState` keeps them in an LMDB environment of this
node (capped; the entries expiring first go when it is full); :class:`RedisState` in Redis,
shared by every node that names the same server and prefix. :class:`SharedState` is what a
node with ``[redis]`` uses: Redis under a time limit and a circuit breaker, and the local
store whenever Redis does not answer, so mail keeps flowing (with per-node state) and the
metric ``mailwarden_shared_state_redis`` and the log say so. :class:`PluginState` is the same
Redis (and breaker) as plugins see it through ``mailwarden_sdk.shared_state``.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import inspect
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailwarden_sdk import SharedStateUnavailable, StoreDescriptor, WhenFull

from .stores.bounded import BoundedStore, Usage
from .stores.lmdb_env import LmdbEnv

if TYPE_CHECKING:
    from .config import Config
    from .telemetry.metrics import GatewayMetrics

__all__ = [
    "Breaker",
    "CommandState",
    "LocalState",
    "PluginState",
    "RedisState",
    "SharedState",
    "StateBackend",
    "command_state",
    "local_state",
    "open_state",
]

log = logging.getLogger(__name__)

#: (key, amount to add, time to live in seconds when the counter is new)
Increment = tuple[str, int, float]

T = TypeVar("T")

_EXPIRY = struct.Struct(">d")
_COUNT = struct.Struct(">q")


class StateBackend(abc.ABC):
    """Counters and values that expire; keys are short strings chosen by the policy steps."""

    #: Where the state is, for logs and docs ("local", "redis").
    kind: str = ""

    @abc.abstractmethod
    async def add(self, increments: Sequence[Increment]) -> list[int]:
        """Add to each counter (made with its time to live when missing); the new values. An
        amount of 0 reads a counter without making it (a missing one reads 0)."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """The value of ``key``, ``None`` when missing or expired."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds; with ``only_new`` only when missing. Whether set."""

    @abc.abstractmethod
    async def get_renewing(self, key: str, value: str, ttl: float) -> str | None:
        """:meth:`get`, and when the value is ``value`` it lives ``ttl`` seconds from now: a
        passed greylisting triplet read and kept passing in one step."""

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
                if amount:
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

    async def get_renewing(self, key: str, value: str, ttl: float) -> str | None:
        now = self.clock()

        def work(txn: Any) -> str | None:
            db = self.env.db("state")
            raw = txn.get(key.encode(), db=db)
            if raw is None or _EXPIRY.unpack_from(raw)[0] <= now:
                return None
            found = bytes(raw[_EXPIRY.size :]).decode()
            if found == value:
                txn.put(key.encode(), _EXPIRY.pack(now + ttl) + value.encode(), db=db)
            return found

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


_GET_RENEWING = """
local found = redis.call('GET', KEYS[1])
if found == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return found
"""


class RedisState(StateBackend):
    """The state in Redis (redis-py's asyncio client), every key under ``prefix``.

    A counter is ``SET key 0 PX ttl NX`` then ``INCRBY``, all counters of a message in one
    pipelined round trip. Every call is bounded by ``timeout`` (socket and overall) and is one
    round trip, counted in ``round_trips`` (the benchmark's figure per message)."""

    kind = "redis"

    def __init__(
        self, url: str, prefix: str, timeout: float, metrics: GatewayMetrics | None = None
    ) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.timeout = timeout
        self.metrics = metrics
        self.round_trips = 0
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry_on_timeout=False,
        )

    def _trip(self) -> None:
        self.round_trips += 1
        if self.metrics is not None:
            self.metrics.shared_state_round_trips.inc()

    async def add(self, increments: Sequence[Increment], *, refresh: bool = False) -> list[int]:
        self._trip()
        async with asyncio.timeout(self.timeout):
            pipe = self.client.pipeline(transaction=True)
            # Where each counter's value is among the replies.
            answers: list[int] = []
            for key, amount, ttl in increments:
                if not amount:
                    answers.append(len(pipe))
                    pipe.get(self.prefix + key)
                    continue
                pipe.set(self.prefix + key, 0, px=max(1, int(ttl * 1000)), nx=True)
                answers.append(len(pipe))
                pipe.incrby(self.prefix + key, amount)
                if refresh:
                    pipe.pexpire(self.prefix + key, max(1, int(ttl * 1000)))
            replies = await pipe.execute()
        return [int(replies[at] or 0) for at in answers]

    async def get(self, key: str) -> str | None:
        self._trip()
        async with asyncio.timeout(self.timeout):
            value = await self.client.get(self.prefix + key)
        return None if value is None else str(value)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` (``MGET``, one round trip)."""
        if not keys:
            return []
        self._trip()
        async with asyncio.timeout(self.timeout):
            values = await self.client.mget([self.prefix + key for key in keys])
        return [None if value is None else str(value) for value in values]

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        self._trip()
        async with asyncio.timeout(self.timeout):
            done = await self.client.set(
                self.prefix + key, value, px=max(1, int(ttl * 1000)), nx=only_new
            )
        return bool(done)

    async def get_renewing(self, key: str, value: str, ttl: float) -> str | None:
        """``GET``, and ``PEXPIRE`` when the value is ``value``: one script, one round trip."""
        self._trip()
        async with asyncio.timeout(self.timeout):
            found = await self.client.eval(
                _GET_RENEWING, 1, self.prefix + key, value, max(1, int(ttl * 1000))
            )
        return None if found is None else str(found)

    async def put_many(self, values: Mapping[str, str], ttl: float) -> None:
        """Every ``SET key value PX ttl`` in one pipelined round trip."""
        if not values:
            return
        self._trip()
        async with asyncio.timeout(self.timeout):
            pipe = self.client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))
            await pipe.execute()

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        """``SET key value PX ttl GET``: the old value, replaced atomically."""
        self._trip()
        async with asyncio.timeout(self.timeout):
            old = await self.client.set(
                self.prefix + key, value, px=max(1, int(ttl * 1000)), get=True
            )
        return None if old is None else str(old)

    async def close(self) -> None:
        await self.client.aclose()


class Breaker:
    """Whether Redis may be asked now: after ``failures`` failed calls in a row it is not
    asked for ``reset`` seconds, then one call tries again. Shared by the policy steps and
    the plugins' :class:`PluginState`, so the gauge tells one story."""

    def __init__(
        self,
        failures: int,
        reset: float,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_allowed, self.reset = failures, reset
        self.metrics = metrics
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self.down = False
        if metrics is not None:
            metrics.shared_state.set(1)

    def closed(self) -> bool:
        """Whether to ask Redis now."""
        return self.failures < self.failures_allowed or self.clock() >= self.open_until

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures >= self.failures_allowed:
            self.open_until = self.clock() + self.reset
        if not self.down:
            self.down = True
            log.warning(
                "Redis failed (%s): going on with this node's local state; greylisting, rate "
                "limits, Bayes, fuzzy hashes and the reputation cache are not shared until it "
                "is back",
                exc.__class__.__name__ + (f": {exc}" if str(exc) else ""),
            )
            if self.metrics is not None:
                self.metrics.shared_state.set(0)

    def answered(self) -> None:
        self.failures = 0
        if self.down:
            self.down = False
            log.warning("Redis answers again: the cluster's state is shared again")
            if self.metrics is not None:
                self.metrics.shared_state.set(1)

    def fell_back(self) -> None:
        if self.metrics is not None:
            self.metrics.shared_state_fallbacks.inc()


class SharedState(StateBackend):
    """Redis first, the local store when Redis fails or its breaker is open.

    Each call answered locally counts in ``mailwarden_shared_state_fallbacks``; the gauge
    ``mailwarden_shared_state_redis`` is 1 while Redis answers and 0 while it does not (see
    :class:`Breaker`). State written locally during an outage stays local (it is not copied to
    Redis later).
    """

    kind = "redis"

    def __init__(self, remote: StateBackend, local: StateBackend, breaker: Breaker) -> None:
        self.remote, self.local = remote, local
        self.breaker = breaker

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.breaker.closed():
            return await self._locally(name, args, kwargs)
        try:
            result = await getattr(self.remote, name)(*args, **kwargs)
        except Exception as exc:  # timeouts, refused connections, errors Redis answers
            self.breaker.failed(exc)
            return await self._locally(name, args, kwargs)
        self.breaker.answered()
        return result

    async def _locally(self, name: str, args: Any, kwargs: Any) -> Any:
        self.breaker.fell_back()
        return await getattr(self.local, name)(*args, **kwargs)

    async def add(self, increments: Sequence[Increment]) -> list[int]:
        result: list[int] = await self._call("add", increments)
        return result

    async def get(self, key: str) -> str | None:
        result: str | None = await self._call("get", key)
        return result

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        return bool(await self._call("put", key, value, ttl, only_new=only_new))

    async def get_renewing(self, key: str, value: str, ttl: float) -> str | None:
        result: str | None = await self._call("get_renewing", key, value, ttl)
        return result

    async def close(self) -> None:
        try:
            await self.remote.close()
        finally:
            await self.local.close()


class PluginState:
    """The cluster's Redis as plugins see it (:class:`mailwarden_sdk.SharedState`).

    Unlike the policy steps' :class:`SharedState` there is no local fallback here: a plugin
    keeps its own local store (Bayes, fuzzy hashes, the reputation cache), so a call that
    Redis does not answer raises :class:`~mailwarden_sdk.SharedStateUnavailable` and counts as
    a fallback. :meth:`blocking` runs a call on the loop the gateway started on (:meth:`bind`).
    """

    kind = "redis"

    def __init__(self, remote: RedisState, breaker: Breaker) -> None:
        self.remote = remote
        self.breaker = breaker
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose Redis connections every call uses (the gateway's)."""
        self.loop = loop

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.breaker.closed():
            self.breaker.fell_back()
            raise SharedStateUnavailable("Redis breaker open")
        try:
            result = await getattr(self.remote, name)(*args, **kwargs)
        except Exception as exc:
            self.breaker.failed(exc)
            self.breaker.fell_back()
            raise SharedStateUnavailable(f"Redis failed: {exc.__class__.__name__}") from exc
        self.breaker.answered()
        return result

    async def add(self, increments: Sequence[Increment], *, refresh: bool = False) -> list[int]:
        result: list[int] = await self._call("add", increments, refresh=refresh)
        return result

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        result: list[str | None] = await self._call("get_many", keys)
        return result

    async def put(self, key: str, value: str, ttl: float, *, only_new: bool = False) -> bool:
        return bool(await self._call("put", key, value, ttl, only_new=only_new))

    async def put_many(self, values: Mapping[str, str], ttl: float) -> None:
        await self._call("put_many", values, ttl)

    async def swap(self, key: str, value: str, ttl: float) -> str | None:
        result: str | None = await self._call("swap", key, value, ttl)
        return result

    def blocking(self, call: Awaitable[T], timeout: float | None = None) -> T:
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop.is_closed() or running is loop:
            # Waiting here for the loop that must run the call would hang it.
            if inspect.iscoroutine(call):
                call.close()
            raise SharedStateUnavailable("no event loop to run the shared-state call on")
        future = asyncio.run_coroutine_threadsafe(_awaited(call), loop)
        try:
            return future.result(timeout if timeout is not None else self.remote.timeout * 2)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise SharedStateUnavailable("shared-state call timed out") from exc


class CommandState(PluginState):
    """:class:`PluginState` for a command-line command (``mailwarden antispam train``): with
    no gateway loop to run on, it runs its own event loop on a daemon thread, so
    :meth:`blocking` works from the command's thread. :meth:`close` when the command ends."""

    def __init__(self, remote: RedisState, breaker: Breaker) -> None:
        super().__init__(remote, breaker)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="shared-state", daemon=True).start()
        self.bind(loop)

    def close(self) -> None:
        """Close the Redis connections and stop the loop thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.remote.close(), loop).result(
                self.remote.timeout * 2
            )
        except Exception:
            log.debug("closing the command's Redis connections failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)


def command_state(config: Config) -> CommandState | None:
    """The cluster's Redis for a plugin's command-line command (``None`` without
    ``[redis]``): the same server, prefix, time limit and breaker settings as the gateway."""
    cfg = config.redis
    if not cfg.enabled:
        return None
    remote = RedisState(cfg.url, cfg.prefix, cfg.timeout)
    return CommandState(remote, Breaker(cfg.breaker_failures, cfg.breaker_reset))


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def local_state(config: Config) -> LocalState:
    """This node's store of policy state, as configured (opened at first use)."""
    cfg = config.redis
    return LocalState(config.path_in_home(cfg.local_path), cfg.local_max_entries)


def open_state(
    config: Config, metrics: GatewayMetrics | None = None
) -> tuple[StateBackend, PluginState | None]:
    """The state the policy steps use (shared through Redis when ``[redis]`` is enabled, with
    this node's store as the fallback) and the plugins' view of the same Redis (``None``
    without ``[redis]``)."""
    local = local_state(config)
    cfg = config.redis
    if not cfg.enabled:
        return local, None
    remote = RedisState(cfg.url, cfg.prefix, cfg.timeout, metrics)
    breaker = Breaker(cfg.breaker_failures, cfg.breaker_reset, metrics)
    return SharedState(remote, local, breaker), PluginState(remote, breaker)

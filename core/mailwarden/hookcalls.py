"""Calling plugin hooks under time budgets, in threads that never hold the process.

A plugin's code may not return: a detector waiting on a dead service, a verdict hook that
sleeps, an observer whose backend hangs. Every hook the gateway calls therefore runs under a
time budget (``[detectors] timeout`` for scans, ``[hooks]`` for the others): an ``async``
implementation is cancelled when its budget is spent; a synchronous one runs in a
:class:`DaemonExecutor` thread, which Python cannot stop, so the gateway stops waiting for it
and the thread is left to finish on its own. Those threads are daemon threads, so a stuck one
never delays the end of the process: ``ThreadPoolExecutor`` joins its threads at interpreter
exit, and a detector stuck for 6.5 min held SIGTERM that long (issue 25).

Observers (``mailwarden_message_processed``) are not waited for at all: each runs on an
:class:`ObserverLane`, its own thread, getting the events in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
import time
import types
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mailwarden_sdk.hookspecs import NONBLOCKING

__all__ = [
    "DaemonExecutor",
    "HookRunner",
    "ObserverLane",
    "Resumed",
    "call_impl",
    "hook_kwargs",
    "is_async",
    "runs_inline",
]

log = logging.getLogger(__name__)

_Work = tuple["Future[Any] | None", Callable[..., Any], tuple[Any, ...], dict[str, Any]]
_T = TypeVar("_T")


class _LoopCall:
    """``fn()`` for a worker thread, its outcome set on ``future`` in the loop's thread, and
    ``then()`` called there right after."""

    __slots__ = ("fn", "future", "loop", "then")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[], Any],
        then: Callable[[], None] | None = None,
    ) -> None:
        self.loop, self.fn, self.then = loop, fn, then
        self.future: asyncio.Future[Any] = loop.create_future()

    def __call__(self) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = self.fn()
        except BaseException as exc:
            error = exc
        self._in_loop(self._settle, result, error)

    def cancel(self) -> None:
        """Dropped unrun (the executor shut down): the awaiter sees a cancellation."""
        self._in_loop(self._cancel)

    def _cancel(self) -> None:
        self.future.cancel()
        if self.then is not None:
            self.then()

    def _in_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        # A closed loop raises RuntimeError: nobody waits for it any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():
            return  # cancelled while the worker ran
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        if self.then is not None:
            self.then()


class DaemonExecutor(ThreadPoolExecutor):
    """A thread pool of daemon threads whose shutdown waits at most ``join_timeout`` seconds.

    A ``ThreadPoolExecutor`` subclass only so asyncio accepts it as the loop's default
    executor (``set_default_executor`` insists); none of its machinery is used, because its
    threads are joined at interpreter exit, however long they take.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str, join_timeout: float = 5.0):
        super().__init__(max_workers, thread_name_prefix)
        self.join_timeout = join_timeout
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        # Workers waiting for work, counted under the lock (a Semaphore is a Condition and a
        # lock in Python, taken twice per hand-off).
        self._idle = 0
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._put((future, fn, args, kwargs))
        return future

    def run_soon(
        self, fn: Callable[[], _T], then: Callable[[], None] | None = None
    ) -> asyncio.Future[_T]:
        """``fn()`` in a worker thread, its outcome as a future of the running loop: what
        ``loop.run_in_executor`` gives, without a concurrent ``Future`` (a Condition made per
        call) and the chaining of the two in between (once per message: the verdict hooks).
        ``then()`` is called in the loop's thread as soon as the outcome is set: a waiter
        woken from there is a round of the loop sooner than by a done callback."""
        call = _LoopCall(asyncio.get_running_loop(), fn, then)
        self._put((None, call, (), {}))
        return call.future

    def _put(self, work: _Work) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put(work)
            if self._idle:
                self._idle -= 1
            elif len(self._workers) < self._max_workers:
                name = f"{self._thread_name_prefix}_{len(self._workers)}"
                worker = threading.Thread(target=self._work, name=name, daemon=True)
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.put(None)  # the next worker stops too
                return
            future, fn, args, kwargs = item
            del item
            if future is None:
                fn(*args, **kwargs)  # a _LoopCall: it catches what its function raises
            elif future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None and item[0] is not None:
                        item[0].cancel()
                    elif item is not None and isinstance(item[1], _LoopCall):
                        item[1].cancel()
            self._queue.put(None)
            workers = list(self._workers)
        if wait:
            # Bounded: a thread stuck in plugin code is abandoned; as a daemon it ends with
            # the process instead of holding it.
            deadline = time.monotonic() + self.join_timeout
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            stuck = [w.name for w in workers if w.is_alive()]
            if stuck:
                log.warning("left %d busy thread(s) behind at shutdown: %s", len(stuck), stuck)


def runs_inline(impls: list[Any], **available: Any) -> bool:
    """Whether every one of ``impls`` is marked :func:`mailwarden_sdk.nonblocking` for a
    call with these arguments: then they run on the loop's thread, without a hand-over to
    a worker (SDK 1.19). A ``when`` that raises keeps the call in a worker thread."""
    for impl in impls:
        mark = getattr(impl.function, NONBLOCKING, None)
        if mark is True:
            continue
        if mark is None or not callable(mark):
            return False
        try:
            if not mark(**available):
                return False
        except Exception:
            log.exception("the nonblocking check of %s failed", impl.plugin_name)
            return False
    return True


def hook_kwargs(impl: Any, **available: Any) -> dict[str, Any]:
    """The arguments ``impl`` takes (pluggy lets an implementation take fewer than its spec)."""
    return {name: available[name] for name in impl.argnames if name in available}


# Hook implementations are few and fixed while the gateway runs; inspect's test unwraps
# partials and reads code flags on every call (once per detector per message). Only plain
# functions are kept (a bound method by its function), so no plugin object or plugin
# manager is kept alive by it.
_ASYNC: dict[types.FunctionType, bool] = {}


def is_async(function: Callable[..., Any]) -> bool:
    """Whether ``function`` is a coroutine function (kept per plain function)."""
    key = getattr(function, "__func__", function)
    if not isinstance(key, types.FunctionType):
        return inspect.iscoroutinefunction(function)
    found = _ASYNC.get(key)
    if found is None:
        found = inspect.iscoroutinefunction(function)
        if len(_ASYNC) < 4096:  # bounded: functions made per call are not all kept
            _ASYNC[key] = found
    return found


class Resumed:
    """Awaiting it goes on with ``coroutine``, whose first step the caller ran itself (as
    call_impl and the milter's decision do) and which yielded ``waiting``: what it
    yields goes to the task running the awaiter, what that task sends or throws (a
    cancellation when the budget is spent) goes into it, as ``await coroutine`` would."""

    __slots__ = ("coroutine", "waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coroutine = coroutine
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting = self.coroutine, self.waiting
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                try:
                    waiting = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


async def call_impl(
    function: Callable[..., Any],
    kwargs: dict[str, Any],
    budget: float,
    executor: ThreadPoolExecutor | None,
) -> Any:
    """Call one hook implementation within ``budget`` seconds and return what it returned.

    A coroutine function runs on the loop and is cancelled when the budget is spent; a plain
    function runs in ``executor`` (an awaitable it returns is awaited within the same budget).
    Raises :class:`TimeoutError` when the budget is spent; exceptions of the hook propagate.
    """
    if is_async(function):
        # Not the loop's clock: asking for the loop is a getpid() system call, per detector
        # and message, and most first steps finish (below) without needing it.
        began = time.monotonic()
        coroutine = function(**kwargs)
        try:
            # Its first step, here: a hook with nothing to wait for (most scans of a small
            # message) is done without a timer to set and cancel. Work without a suspension
            # cannot be interrupted by the budget either way.
            waiting = coroutine.send(None)
        except StopIteration as done:
            return done.value
        async with asyncio.timeout(budget - (time.monotonic() - began)):
            return await Resumed(coroutine, waiting)
    async with asyncio.timeout(budget):
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, lambda: function(**kwargs))
        if inspect.isawaitable(result):
            result = await result
        return result


class ObserverLane:
    """One observer's own thread: events in order, never waited for by the mail path.

    ``offer`` queues an event (at most ``capacity`` wait; more are dropped and counted). A call
    that runs past ``budget`` seconds is reported once, when the next event is offered or at
    :meth:`close`, through ``report(kind)`` (``"timeout"`` or ``"dropped"``) and the log.
    """

    def __init__(
        self,
        name: str,
        function: Callable[..., Any],
        budget: float,
        capacity: int,
        report: Callable[[str], None],
    ) -> None:
        self.name = name
        self._function = function
        self._budget = budget
        self._report = report
        self._queue: queue.Queue[Any] = queue.Queue(capacity)
        self._busy_since: float | None = None
        self._reported = False
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name=f"observer-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._busy_since = time.monotonic()
            try:
                self._function(event=event)
            except Exception:
                log.exception("observer %s failed", self.name)
            finally:
                self._busy_since = None
                self._reported = False

    def overdue(self) -> bool:
        """True (and reported, once per call) when the running call is past its budget."""
        since = self._busy_since
        if since is None or time.monotonic() - since <= self._budget:
            return False
        if not self._reported:
            self._reported = True
            log.error(
                "observer %s has not returned within %g s (mailwarden_message_processed); "
                "later events wait for it",
                self.name,
                self._budget,
            )
            self._report("timeout")
        return True

    def offer(self, event: Any) -> None:
        self.overdue()
        try:
            self._queue.put_nowait(event)
            self._dropping = False
        except queue.Full:
            if not self._dropping:
                log.error(
                    "observer %s is %d events behind; events dropped for it",
                    self.name,
                    self._queue.maxsize,
                )
            self._dropping = True
            self._report("dropped")

    def close(self, deadline: float) -> None:
        """Let the queued events through until ``deadline`` (``time.monotonic``), then stop.

        A call already past its budget is not waited for. A thread still busy is left
        behind; as a daemon it does not hold the process.
        """
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # the thread ends with the process
        while self._thread.is_alive() and time.monotonic() < deadline and not self.overdue():
            self._thread.join(min(0.05, max(0.0, deadline - time.monotonic())))


class HookRunner:
    """How every stage calls a plugin's hook: on the gateway's worker threads, within a budget,
    with the failures counted per hook and plugin."""

    def __init__(self, count_error: Callable[[str], None]) -> None:
        self._count_error = count_error
        #: The worker threads, from start to stop (None: the loop's default executor).
        self.executor: DaemonExecutor | None = None
        #: The event loop the gateway runs in, from start to stop: asked for once instead of
        #: per message (``asyncio.get_running_loop()`` is a getpid() system call).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def call(self, impl: Any, budget: float, **available: Any) -> Any:
        """One implementation, with the arguments it takes, within ``budget`` seconds."""
        return await call_impl(impl.function, hook_kwargs(impl, **available), budget, self.executor)

    def failed(self, hook: str, plugin: str, kind: str) -> None:
        """Count a failure (``kind``: ``timeout``) of ``plugin``'s ``hook``."""
        # One series per hook and plugin: both are few, fixed by the installation.
        self._count_error(f"hook {kind}:{hook}:{plugin}"[:80])

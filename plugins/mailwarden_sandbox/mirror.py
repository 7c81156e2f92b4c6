"""Mirror mode: copies go to the analysis server while the message is delivered at once.

A verdict on a copy can no longer change the message; it goes to the log for the admin and
to the verdict cache, so a later message with the same object is answered at scan time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .backends import BackendError, ObjectVerdict
from .config import Policy
from .objects import Analysis, Object

__all__ = ["Mirror"]

log = logging.getLogger("mailwarden.sandbox")

# Mirror copies in flight beyond this are dropped (logged): mail never waits for them.
_MAX_MIRRORS = 1000


class Mirror:
    """Sends copies for analysis on the gateway's loop, at most 1000 in flight."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        # The copies in flight, cancelled at shutdown.
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, pending: list[Object], policy: Policy, sender: str) -> None:
        """Send ``pending`` (from any thread); never waits for the analysis."""
        if len(self.tasks) >= _MAX_MIRRORS:
            log.warning("sandbox: %d copies in flight, this one is not sent", len(self.tasks))
            return
        deadline = time.time() + policy.verdict_timeout * self.analysis.time_scale
        # Verdict hooks run in a worker thread: the task starts on the gateway's loop.
        self.analysis.loop.call_soon_threadsafe(self._spawn, pending, deadline, sender)

    def _spawn(self, pending: list[Object], deadline: float, sender: str) -> None:
        task = asyncio.get_running_loop().create_task(self._mirror(pending, deadline, sender))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _mirror(self, objects: list[Object], deadline: float, sender: str) -> None:
        for obj in objects:
            try:
                verdict = await self._analyse(obj, deadline)
            except (BackendError, TimeoutError) as exc:
                log.warning("sandbox: copy of %s not analysed: %s", obj.label, exc)
                continue
            if verdict.status != "clean":
                # The message was delivered already: this is for the admin's eyes (and logs).
                log.warning(
                    "sandbox: delivered message from <%s>: %s is %s (%s)",
                    sender,
                    obj.label,
                    verdict.status,
                    verdict.detail,
                )

    async def _analyse(self, obj: Object, deadline: float) -> ObjectVerdict:
        analysis = self.analysis
        async with analysis.slots:
            answer = await analysis.backend.submit(obj.data, obj.label)
        while isinstance(answer, str):
            if time.time() >= deadline:
                raise TimeoutError("no verdict in time")
            await asyncio.sleep(self._interval(deadline))
            async with analysis.slots:
                answer = await analysis.backend.poll(answer) or answer
        analysis.cache.put(obj.sha256, answer)
        return answer

    def _interval(self, deadline: float) -> float:
        wait = max(self.analysis.config.poll_interval * self.analysis.time_scale, 0.02)
        return max(min(wait, deadline - time.time()), 0.0)

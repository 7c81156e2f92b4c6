"""Hold mode's follow-up: the one process that watches held messages until their verdict.

The watcher takes the quarantine's ``.owner`` lock when it is free, then follows each held
message in one task: submits its objects, polls the analysis server, and once every verdict
is in (or one is not clean, or the deadline passed, or an admin left a marker) puts the
message back through the pipeline with the verdict (``Host.resubmit``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from mailwarden_sdk import Finding, Host, parse

from .backends import BackendError, ObjectVerdict
from .objects import Analysis, finding, objects, verdict_finding, worst
from .store import HeldMessage, HoldStore

__all__ = ["Watcher"]

log = logging.getLogger("mailwarden.sandbox")


class Watcher:
    """Follows held messages up on the gateway's loop (see the module's docstring)."""

    def __init__(self, host: Host, store: HoldStore, analysis: Analysis) -> None:
        self.host = host
        self.store = store
        self.analysis = analysis
        # The ``.owner`` lock while this process is the one that follows held messages up.
        self.owner: int | None = None
        # The last reply of each resubmission, per held id, for the admin who released it.
        self.outcomes: dict[str, tuple[int, str]] = {}
        self._watching: dict[str, asyncio.Task[None]] = {}
        # Wakes a watcher at once (an admin's release or delete), per held id.
        self._wake: dict[str, asyncio.Event] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following up (on the loop); held messages from before a restart are picked
        up by the first round at once."""
        self._loop_task = asyncio.create_task(self._follow_up(), name="sandbox-follow-up")

    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task of the watcher, for the plugin to cancel at shutdown."""
        tasks = list(self._watching.values())
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        return tasks

    def stopped(self) -> None:
        """After the tasks were cancelled: give the watcher role back."""
        self._loop_task = None
        if self.owner is not None:
            self.store.disown(self.owner)
            self.owner = None

    async def _follow_up(self) -> None:
        """Own the watcher role when free, and watch every held message that needs it."""
        store = self.store
        while True:
            try:
                if self.owner is None:
                    self.owner = await asyncio.to_thread(store.try_own)
                if self.owner is not None:
                    for id in await asyncio.to_thread(store.ids):
                        if id not in self._watching:
                            self.watch_soon(id)
            except Exception:
                log.exception("sandbox: walking the quarantine failed")
            await asyncio.sleep(
                max(self.analysis.config.poll_interval * self.analysis.time_scale, 0.05)
            )

    def watch_soon(self, id: str) -> None:
        """Follow ``id`` up in a task of its own (on the loop); nothing when one does already.

        The hold hook calls this once its ``admit`` returned, but the follow-up round may have
        listed the new record in between (readers see it once committed, before the admitting
        thread hands its result back) and be watching it: a second task would submit the same
        objects again."""
        if id in self._watching:
            return
        task = asyncio.get_running_loop().create_task(self._watch(id), name=f"sandbox-{id}")
        self._watching[id] = task

    async def _watch(self, id: str) -> None:
        store = self.store
        try:
            while True:
                meta = await asyncio.to_thread(store.load, id)
                if meta is None:
                    return
                if store.marked(id, "delete"):
                    await asyncio.to_thread(store.remove, id)
                    log.info("sandbox: held message %s deleted by an admin", id)
                    return
                if store.marked(id, "release"):
                    released = finding(
                        "SANDBOX_RELEASED", "skipped", reason="released by an admin", hold_id=id
                    )
                    if await self._finish(meta, [released]):
                        return
                elif meta.state == "expired":
                    return  # an admin decides; a release or delete marker wakes it up again
                elif await self._step(meta):
                    return
                wake = self._wake.setdefault(id, asyncio.Event())
                pause = max(self.analysis.config.poll_interval * self.analysis.time_scale, 0.02)
                try:
                    await asyncio.wait_for(wake.wait(), pause)
                except TimeoutError:
                    pass
                wake.clear()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sandbox: following up %s failed; it stays held", id)
        finally:
            if self._watching.get(id) is asyncio.current_task():
                self._watching.pop(id, None)
                self._wake.pop(id, None)

    def poke(self, id: str) -> None:
        """On the plugin's loop: look at ``id`` now (an admin left a marker)."""
        wake = self._wake.get(id)
        if wake is not None:
            wake.set()
        elif self.owner is not None and id not in self._watching:
            self.watch_soon(id)

    async def _step(self, meta: HeldMessage) -> bool:
        """One round for a waiting message; True when it left the quarantine or waits for an
        admin."""
        for obj in meta.objects:
            if obj.verdict is None:
                obj.verdict = self.analysis.cache.get(obj.sha256)
        verdicts = [o.verdict for o in meta.objects if o.verdict is not None]
        if len(verdicts) == len(meta.objects) or worst(verdicts) != "clean":
            findings = [
                verdict_finding(o, o.verdict, hold_id=meta.id)
                for o in meta.objects
                if o.verdict is not None
            ]
            return await self._finish(meta, findings)
        if time.time() >= meta.deadline:
            policy = self.analysis.config.for_rule(meta.rule)
            if policy.timeout_action == "hold":
                meta.state, meta.note = "expired", "no verdict in time; waiting for an admin"
                await asyncio.to_thread(self.store.save, meta)
                log.warning("sandbox: no verdict in time for %s; held for an admin", meta.id)
                return True
            timeout = finding(
                "SANDBOX_TIMEOUT", "skipped", reason="no verdict in time", hold_id=meta.id
            )
            return await self._finish(meta, [timeout])
        data: dict[str, bytes] | None = None
        changed = False
        for obj in meta.objects:
            if obj.verdict is not None:
                continue
            answer: ObjectVerdict | str | None
            try:
                async with self.analysis.slots:
                    if obj.task is None:
                        if data is None:
                            data = await asyncio.to_thread(self._object_data, meta)
                        answer = await self.analysis.backend.submit(
                            data.get(obj.sha256, b""), obj.label
                        )
                    else:
                        answer = await self.analysis.backend.poll(obj.task)
            except BackendError as exc:
                meta.note = f"analysis server: {exc}"[:300]
                changed = True
                log.warning("sandbox: %s: %s", meta.id, exc)
                break
            if isinstance(answer, str):
                # Persisted at once: after a restart the task is polled, not submitted again.
                obj.task, changed = answer, True
            elif answer is not None:
                obj.verdict, changed = answer, True
                self.analysis.cache.put(obj.sha256, answer)
        if changed:
            await asyncio.to_thread(self.store.save, meta)
        return False

    def _object_data(self, meta: HeldMessage) -> dict[str, bytes]:
        message = parse(self.store.raw(meta.id))
        policy = self.analysis.config.for_rule(meta.rule)
        return {hashlib.sha256(d).hexdigest(): d for _, d in objects(message, policy.send)}

    async def _finish(self, meta: HeldMessage, findings: list[Finding]) -> bool:
        """Put the message back through the pipeline with the verdict; True when it left."""
        raw = await asyncio.to_thread(self.store.raw, meta.id)
        code, text = await self.host.resubmit(raw, meta.envelope, findings)
        self.outcomes[meta.id] = (code, text)
        if len(self.outcomes) > 1000:
            self.outcomes.pop(next(iter(self.outcomes)))
        if code >= 400:
            meta.note = f"resubmission answered {code} {text}"[:300]
            await asyncio.to_thread(self.store.save, meta)
            log.warning("sandbox: %s stays held: %s %s", meta.id, code, text)
            return False
        await asyncio.to_thread(self.store.remove, meta.id)
        log.info("sandbox: %s released: %s %s", meta.id, code, text)
        return True

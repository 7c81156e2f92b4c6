"""The delivery queue: takes messages from the spool to the next hop, until they leave it.

A message handed over by the SMTP listener is tried at once; the queue also walks the spool
every ``[delivery] queue_scan_interval`` seconds for messages whose retry time has come and for
messages a crashed process left behind (those without a decision are scanned again). Retries
back off exponentially from ``retry_initial`` to ``retry_max_interval``; after ``max_age`` the
message is bounced. A 5xx from the next hop bounces at once. Bounces (DSNs) go to the envelope
sender, never for the null sender, through the same spool and next hop.

Retry times and ages are measured on the monotonic clock and kept in the message's state
(:class:`~mailwarden.spool.SpoolState`), so setting the wall clock neither bounces young
messages (a jump forward of 6 days bounced messages seconds old) nor stalls retries (a jump
back left them waiting for the old time to come again). Across a reboot, where monotonic
readings do not compare, a deferred message is retried at once and the time the machine was
down is taken from the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from mailwarden_sdk import Envelope

from ..errors import DeliveryError
from ..spool import BOOT_ID, SpoolEntry, SpoolState
from ..tls import client_context
from .dsn import build_dsn
from .relay import RelayResult, send
from .scache import ConnectionCache

if TYPE_CHECKING:
    from ..config import DeliveryConfig
    from ..spool import Spool

__all__ = ["DeliveryQueue", "QueuePort", "crlf", "queued_for"]

log = logging.getLogger(__name__)

_BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf(data: bytes) -> bytes:
    """``data`` with CRLF line ends, the form SMTP carries and DKIM signs."""
    # Mail from SMTP is almost always CRLF already; two counts in C tell that for far less
    # than the regular expression's pass over every byte.
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def queued_for(entry: SpoolEntry, state: SpoolState) -> float:
    """Seconds ``entry`` has spent in the spool, on the monotonic clock where it can be."""
    if state.boot == BOOT_ID and state.age_mark:
        return state.age + max(0.0, time.monotonic() - state.age_mark)
    if state.boot:
        # Measured before a reboot: the time since, only the wall clock knows.
        return state.age + max(0.0, time.time() - state.age_wall)
    if entry.boot == BOOT_ID and entry.spooled_mono:
        return max(0.0, time.monotonic() - entry.spooled_mono)
    # Spooled before a reboot, or by a version that kept no monotonic reading.
    return max(0.0, time.time() - entry.spooled_at)


class QueuePort(Protocol):
    """What the queue asks of the gateway it delivers for, and nothing more (the outbox)."""

    def with_headers(self, raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """``raw`` with the decided ``headers`` prepended, made safe."""
        ...

    def sign(self, data: bytes) -> bytes:
        """``data`` (CR LF) DKIM-signed when a key applies."""
        ...

    async def rescan(self, entry: SpoolEntry) -> None:
        """Scan and act on a spooled message whose decision was not stored."""
        ...

    def hold_raw(
        self, data: bytes, envelope: Envelope, *, decision: str, rule: str, reason: str
    ) -> str:
        """Keep ``data`` in the quarantine (durable on return); its held id."""
        ...


class DeliveryQueue:
    """Delivers spooled messages for one gateway process."""

    def __init__(
        self, config: DeliveryConfig, hostname: str, spool: Spool, port: QueuePort
    ) -> None:
        self.port = port
        self.config = config
        self.hostname = hostname
        self.spool = spool
        self._active: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._scanner: asyncio.Task[None] | None = None
        self._context = client_context(self.config.tls_verify, self.config.tls_ca_file)
        # Kept per queue: its connections were opened with this queue's TLS context and HELO.
        self._connections = (
            ConnectionCache(
                max_idle=self.config.connection_idle_max,
                idle_timeout=self.config.connection_idle_timeout,
                reuse_limit=self.config.connection_reuse_limit,
            )
            if self.config.connection_reuse
            else None
        )
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def relaying(self) -> bool:
        """True when accepted mail goes to a next hop (``[delivery] mode = "relay"``)."""
        return self.config.mode == "relay"

    async def start(self) -> None:
        """Start walking the spool (at once: a restart resumes what was left)."""
        self._loop = asyncio.get_running_loop()
        if self._scanner is None:
            self._scanner = asyncio.create_task(self._scan_loop(), name="spool-scanner")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop walking the spool and let deliveries in progress finish (bounded)."""
        if self._scanner is not None:
            self._scanner.cancel()
            await asyncio.gather(self._scanner, return_exceptions=True)
            self._scanner = None
        # A delivery cut off between the next hop's 250 and removing the message would be
        # delivered again after the restart, so running ones are waited for, not cancelled.
        pending = list(self._active.values())
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for task in self._active.values():
            task.cancel()
        if self._connections is not None:
            await self._connections.close()

    def submit(self, entry: SpoolEntry, state: SpoolState | None = None) -> None:
        """Take over a locked, decided entry and deliver it now; ``state`` is the one just
        saved for it (else it is read from the spool).

        From the queue's own event loop or from another one (a web request served elsewhere):
        the delivery always runs on the loop the queue was started on, which outlives the
        caller's.
        """
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop and not loop.is_closed():
            loop.call_soon_threadsafe(self._start, entry, state)
        else:
            self._start(entry, state)

    async def enqueue(self, data: bytes, envelope: Envelope, state: SpoolState) -> SpoolEntry:
        """Spool a message that needs no decision (released, a notice, a DSN) with its
        ``state`` and deliver it now. The message enters the spool with its state, so a crash
        can never leave it to be scanned (and held) again."""
        entry = await self.spool.write_async(data, envelope, state)
        self.submit(entry, state)
        return entry

    def _start(self, entry: SpoolEntry, state: SpoolState | None = None) -> None:
        task = asyncio.create_task(self._handle(entry, state), name=f"deliver-{entry.id}")
        self._active[entry.id] = task
        task.add_done_callback(partial(self._finished, entry.id))

    def _finished(self, id: str, task: asyncio.Task[None]) -> None:
        # A rescanned entry is handed on to a new task under the same id; keep that one.
        if self._active.get(id) is task:
            del self._active[id]

    async def _scan_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._claim_due)
            except Exception:
                log.exception("walking the spool failed")
            try:
                if self._connections is not None and self._connections.idle_count():
                    # Else an idle connection past its timeout would stay open until the next
                    # message or the next hop's own timeout.
                    await self._connections.sweep()
            except Exception:
                log.exception("closing idle connections to the next hop failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.queue_scan_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    def _due(self, state: SpoolState) -> bool:
        if not state.decided or state.attempts == 0:
            return True
        if state.boot == BOOT_ID and state.retry_mono:
            return time.monotonic() >= state.retry_mono
        if state.boot:
            return True  # deferred before a reboot: the restart resumes it
        # A state written by a version that kept only the wall clock: a wait longer than any
        # backoff means the clock was set back.
        wait = state.next_attempt - time.time()
        return wait <= 0 or wait > self.config.retry_max_interval

    def _claim_due(self) -> None:
        loop = self._loop
        for id in self.spool.ids():
            if len(self._active) >= self.config.concurrency * 4:
                break
            if id in self._active:
                continue
            state = self.spool.load_state(id)
            if not self._due(state):
                continue
            entry = self.spool.claim(id)
            if entry is None:
                continue
            if loop is None:
                entry.release()
                return
            loop.call_soon_threadsafe(self._start, entry)

    async def _handle(self, entry: SpoolEntry, given: SpoolState | None = None) -> None:
        async with self._slots:
            try:
                # Handed over with the state just written: not read back from the file.
                state = given if given is not None else self.spool.load_state(entry.id)
                # One byte of a file this process holds open and locked: no thread hop.
                if self.spool.in_doubt(entry):
                    await self._hold_in_doubt(entry, state)
                    return
                if not state.decided:
                    # Left by a crash before a decision was stored: scan it again. Its client
                    # may or may not have had a 250; delivering it is the safe side.
                    await self.port.rescan(entry)
                    return
                if not self.relaying:
                    await self.port.rescan(entry)
                    return
                await self._deliver(entry, state)
            except Exception:
                log.exception("delivery of %s failed; it stays in the spool", entry.id)
                entry.release()

    async def _deliver(self, entry: SpoolEntry, state: SpoolState) -> None:
        envelope = entry.envelope
        pending = [r for r in envelope.rcpt_to if r not in state.delivered]
        raw = entry.raw_if_small()
        if raw is None:
            raw = await asyncio.to_thread(entry.raw)
        data = self.port.sign(crlf(self.port.with_headers(raw, state.add_headers)))

        def record(result: RelayResult) -> None:
            done = result.with_code(200, 300)
            if done:
                state.delivered.extend(done)
                self.spool.save_state(entry, state, durable=True)
            self.spool.mark_in_doubt(entry, False)

        async def settled(result: RelayResult) -> None:
            # Right after the next hop's answer to the dot.
            if result.with_code(200, 300) and not result.with_code(300, 600):
                await self.spool.remove_delivered(entry)
            else:
                await asyncio.to_thread(record, result)

        async def before_dot() -> None:
            await self.spool.mark_in_doubt_async(entry, True)

        result = await send(
            self.config.next_hop,
            envelope.mail_from,
            pending,
            data,
            helo=self.hostname,
            tls=self.config.tls,
            context=self._context,
            timeout=self.config.connect_timeout,
            before_dot=before_dot,
            settled=settled,
            connections=self._connections,
        )
        delivered = result.with_code(200, 300)
        failed = {r: result.replies[r] for r in result.with_code(500, 600)}
        deferred = {r: result.replies[r] for r in result.with_code(300, 500)}
        age = queued_for(entry, state)
        expired = age >= self.config.max_age
        if deferred and expired:
            failed.update(deferred)
        for rcpt in delivered:
            log.info("%s: to=<%s> status=sent tls=%s", entry.id, rcpt, result.tls)
        if failed and envelope.mail_from and not state.generated:
            dsn = build_dsn(
                hostname=self.hostname,
                sender=envelope.mail_from,
                original=data,
                failures=failed,
                remote=self.config.next_hop,
                arrival=entry.spooled_at,
                expired=expired and bool(deferred),
            )
            await self.spool_generated(dsn, envelope.mail_from)
        for rcpt, (code, text) in failed.items():
            log.warning("%s: to=<%s> status=bounced %d %s", entry.id, rcpt, code, text)
        if deferred and not expired:
            # Bounced recipients are done as well: their DSN has gone out, they are not retried.
            state.delivered.extend(failed)
            state.attempts += 1
            delay = min(
                self.config.retry_initial * 2 ** (state.attempts - 1),
                self.config.retry_max_interval,
            )
            mono, wall = time.monotonic(), time.time()
            state.age, state.age_mark, state.age_wall, state.boot = age, mono, wall, BOOT_ID
            state.retry_mono = mono + delay
            state.next_attempt = wall + delay
            state.last_error = next(iter(deferred.values()))[1]
            log.info(
                "%s: deferred %s for %.0f s: %s",
                entry.id,
                sorted(deferred),
                delay,
                state.last_error,
            )
            await asyncio.to_thread(self.spool.save_state, entry, state, durable=True)
            entry.release()
            return
        if entry.unlinked:
            return  # removed with the next hop's answer (settled)
        await asyncio.to_thread(self.spool.remove, entry)

    async def _hold_in_doubt(self, entry: SpoolEntry, state: SpoolState) -> None:
        # The process died between handing the message over and hearing the answer: the next
        # hop may have it. Delivering again could duplicate it, so an admin decides.
        raw = await asyncio.to_thread(entry.raw)
        note = (
            b"X-Mailwarden-Hold: delivery to the next hop was interrupted; it may have arrived\r\n"
        )
        data = note + self.port.with_headers(raw, state.add_headers)
        await asyncio.to_thread(
            self.port.hold_raw,
            data,
            entry.envelope,
            decision=entry.id,
            rule="",
            reason="delivery in doubt",
        )
        log.warning("%s: delivery outcome unknown after a crash; held in quarantine", entry.id)
        await asyncio.to_thread(self.spool.remove, entry)

    async def spool_generated(self, data: bytes, recipient: str) -> None:
        """Spool a message we made (a DSN) from the null sender and deliver it."""
        envelope = Envelope(mail_from="", rcpt_to=[recipient])
        try:
            await self.enqueue(data, envelope, SpoolState(decided=True, generated=True))
        except DeliveryError:
            log.exception("could not spool a DSN to %s", recipient)
            raise

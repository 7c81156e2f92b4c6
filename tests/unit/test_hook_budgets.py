"""Every hook runs under a time budget; a stuck one never stops the gateway (issue 25).

A hook that sleeps 20 s used to freeze the gateway for every message (verdict and observer
hooks ran on the event loop with no budget at all). The stuck hooks here wait on an event the
test sets when it is done, so no thread outlives the test; nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError, PluginError
from mailwarden.plugins import build_plugin_manager
from mailwarden_sdk import (
    Action,
    ActionKind,
    Envelope,
    MessageEvent,
    ScanContext,
    Verdict,
    hookimpl,
    run_cpu_bound,
)
from tests.conftest import make_message

STUCK = 20.0  # how long a stuck hook would block, were it not let go


class Stuck:
    """A hook body that blocks until released (or ``STUCK`` seconds)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.returned = threading.Event()

    def block(self) -> None:
        self.entered.set()
        self.release.wait(STUCK)
        self.returned.set()


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    hook = Stuck()
    yield hook
    hook.release.set()


def _gateway(tmp_path: Path, config: str, **plugins: Any) -> Gateway:
    built = build_plugin_manager(entry_points=False, extra=plugins)
    parsed = parse_config(config, built.config_schemas())
    parsed.gateway.home = str(tmp_path)
    return Gateway(parsed, plugins=built)


# The admin's choice that a detector error delivers: a verdict that did not finish still does not.
ERRORS_DELIVER = '[[rules]]\nname = "default"\n[rules.actions]\nerror = "deliver"\n'

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


def _scan_once(gateway: Gateway) -> Any:
    async def run() -> Any:
        async with gateway:
            return await gateway.scan(make_message(), ENVELOPE)

    return asyncio.run(run())


def _errors(gateway: Gateway, where: str) -> float:
    value = gateway.stores.metrics.registry.get_sample_value(
        "mailwarden_errors_total", {"where": where}
    )
    return value or 0.0


def _slow_and_quick(marker: str) -> tuple[bytes, bytes]:
    return make_message(subject=marker, body=f"{marker}\n"), make_message(subject="quick")


def test_a_stuck_verdict_hook_tempfails_its_message_and_others_go_on(
    tmp_path: Path, stuck: Stuck
) -> None:
    class SlowVerdict:
        @hookimpl
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            if b"SLOW-VERDICT" in ctx.raw:
                stuck.block()
                verdict.findings.clear()  # what a late hook does must not count

    gateway = _gateway(tmp_path, "[hooks]\nverdict = 0.5\n" + ERRORS_DELIVER, slow=SlowVerdict)
    slow_raw, quick_raw = _slow_and_quick("SLOW-VERDICT")

    async def run() -> tuple[Any, Any, bool]:
        async with gateway:
            slow = asyncio.create_task(gateway.process(slow_raw, ENVELOPE))
            await asyncio.to_thread(stuck.entered.wait, STUCK)
            quick = await gateway.process(quick_raw, ENVELOPE)
            # Answered while the verdict hook of the other message is still blocked.
            quick_while_stuck = not stuck.returned.is_set()
            return await slow, quick, quick_while_stuck

    slow, quick, quick_while_stuck = asyncio.run(run())
    assert quick_while_stuck
    assert quick.reply_code == 250 and quick.decision.action.kind is ActionKind.DELIVER
    # Fail closed: the rule's error action would deliver, a half-made verdict never does.
    assert gateway.config.rules[-1].actions.error == "deliver"
    assert slow.reply_code == 451
    assert slow.decision.action.kind is ActionKind.TEMPFAIL
    verdict = slow.decision.verdict
    assert "verdict" in verdict.errors
    timeout = next(f for f in verdict.findings if f.code == "HOOK_TIMEOUT")
    assert (timeout.detector, timeout.status) == ("verdict", "error")
    assert "0.5 s" in timeout.details["error"]
    assert _errors(gateway, "hook timeout:mailwarden_verdict:*") == 1


def test_a_verdict_hook_that_finishes_still_adjusts_the_verdict(tmp_path: Path) -> None:
    class Tagger:
        @hookimpl
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            verdict.headers.append(("X-Tagged", "yes"))

    gateway = _gateway(tmp_path, "", tagger=Tagger)

    decision = _scan_once(gateway)
    assert ("X-Tagged", "yes") in decision.verdict.headers
    assert decision.action.kind is ActionKind.DELIVER and not decision.verdict.errors


def test_a_failing_verdict_hook_is_not_delivered_on(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            verdict.headers.append(("X-Half", "done"))
            raise RuntimeError("score table missing")

    gateway = _gateway(tmp_path, ERRORS_DELIVER, broken=Broken)

    decision = _scan_once(gateway)
    assert decision.action.kind is ActionKind.TEMPFAIL
    assert decision.verdict.errors == ["verdict"]
    assert ("X-Half", "done") not in decision.verdict.headers  # half a hook's work never counts
    assert "score table missing" in decision.verdict.findings[-1].details["error"]


def test_a_stuck_observer_leaves_messages_processed_and_is_reported(
    tmp_path: Path, stuck: Stuck
) -> None:
    seen: list[str] = []

    class SlowObserver:
        @hookimpl
        def mailwarden_message_processed(self, event: MessageEvent) -> None:
            if event.subject == "SLOW-OBSERVER":
                stuck.block()
            seen.append(event.subject or "")

    gateway = _gateway(tmp_path, "[hooks]\nmessage_processed = 0.2\n", slow=SlowObserver)
    slow_raw, quick_raw = _slow_and_quick("SLOW-OBSERVER")

    async def run() -> tuple[Any, Any, bool]:
        async with gateway:
            first = await gateway.process(slow_raw, ENVELOPE)
            await asyncio.to_thread(stuck.entered.wait, STUCK)
            second = await gateway.process(quick_raw, ENVELOPE)
            processed_while_stuck = not stuck.returned.is_set()
            # The budget runs out; the next event or the shutdown reports it.
            await asyncio.sleep(0.3)
        return first, second, processed_while_stuck

    first, second, processed_while_stuck = asyncio.run(run())
    assert processed_while_stuck
    assert (first.reply_code, second.reply_code) == (250, 250)
    assert _errors(gateway, "hook timeout:mailwarden_message_processed:slow") == 1
    stuck.release.set()
    assert stuck.returned.wait(STUCK)
    # In order, the event after the stuck one included, once the observer is free again.
    for _ in range(100):
        if seen == ["SLOW-OBSERVER", "quick"]:
            break
        stuck.returned.wait(0.05)
    assert seen == ["SLOW-OBSERVER", "quick"]


def test_a_stuck_action_hook_leaves_the_decided_action(tmp_path: Path, stuck: Stuck) -> None:
    class SlowAction:
        @hookimpl
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            verdict.headers.append(("X-Tagged", "yes"))

        @hookimpl
        def mailwarden_action(
            self, ctx: ScanContext, verdict: Verdict, action: Action
        ) -> Action | None:
            stuck.block()
            return None

    gateway = _gateway(tmp_path, "[hooks]\naction = 0.3\n", slow=SlowAction)

    decision = _scan_once(gateway)
    assert decision.action.kind is ActionKind.DELIVER
    assert ("X-Tagged", "yes") in decision.verdict.headers  # the verdict hook had finished
    timeout = next(f for f in decision.verdict.findings if f.code == "HOOK_TIMEOUT")
    assert timeout.detector == "action"
    assert _errors(gateway, "hook timeout:mailwarden_action:*") == 1


def test_a_stuck_async_hold_is_cancelled_and_the_sender_keeps_the_message(
    tmp_path: Path,
) -> None:
    cancelled = threading.Event()

    class SlowHold:
        @hookimpl
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            verdict.sandbox = "hold"

        @hookimpl
        async def mailwarden_hold(self, ctx: ScanContext, verdict: Verdict) -> str | None:
            try:
                await asyncio.sleep(STUCK)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "held-1"

    gateway = _gateway(tmp_path, "[hooks]\nhold = 0.3\n", slow=SlowHold)

    async def run() -> Any:
        async with gateway:
            return await gateway.process(make_message(), ENVELOPE)

    outcome = asyncio.run(run())
    assert cancelled.is_set()
    assert outcome.reply_code == 451
    assert _errors(gateway, "hook timeout:mailwarden_hold:slow") == 1


def test_a_stuck_scan_is_cancelled_and_becomes_a_timeout(tmp_path: Path) -> None:
    cancelled = threading.Event()

    class SlowScan:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            try:
                await asyncio.sleep(STUCK)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return []

    gateway = _gateway(tmp_path, "[detectors]\ntimeout = 0.3\n", slow=SlowScan)

    decision = _scan_once(gateway)
    assert cancelled.is_set()
    assert any(f.code == "DETECTOR_TIMEOUT" for f in decision.verdict.findings)
    assert _errors(gateway, "hook timeout:mailwarden_scan:slow") == 1


def test_a_scan_given_up_by_its_caller_stops_its_detectors(tmp_path: Path) -> None:
    """A client that goes away cancels its message's scan: every detector still waiting
    stops with it instead of running on (and holding its service) for nobody."""
    started: dict[str, threading.Event] = {}
    cancelled: dict[str, threading.Event] = {}

    def slow(name: str) -> type:
        started[name], cancelled[name] = threading.Event(), threading.Event()

        class SlowScan:
            @hookimpl
            async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
                started[name].set()
                try:
                    await asyncio.sleep(STUCK)
                except asyncio.CancelledError:
                    cancelled[name].set()
                    raise
                return []

        return SlowScan

    class QuickScan:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            return []

    gateway = _gateway(tmp_path, "", one=slow("one"), quick=QuickScan, two=slow("two"))

    async def run() -> None:
        async with gateway:
            scan = asyncio.create_task(gateway.scan(make_message(), ENVELOPE))
            for _ in range(200):
                if all(event.is_set() for event in started.values()):
                    break
                await asyncio.sleep(0.01)
            scan.cancel()
            with pytest.raises(asyncio.CancelledError):
                await scan
            # A few rounds of the loop for the cancellation to reach the detectors' tasks;
            # before the gateway stops (which would end any task left).
            for _ in range(3):
                await asyncio.sleep(0)
            assert [name for name, event in cancelled.items() if event.is_set()] == ["one", "two"]

    asyncio.run(run())


def test_stuck_startup_fails_the_start_and_stuck_shutdown_is_left(
    tmp_path: Path, stuck: Stuck
) -> None:
    class SlowStart:
        @hookimpl
        def mailwarden_startup(self) -> None:
            stuck.block()

    class SlowStop:
        @hookimpl
        async def mailwarden_shutdown(self) -> None:
            await asyncio.sleep(STUCK)

    with pytest.raises(PluginError, match=r"'slow' did not start within 0.3 s"):
        asyncio.run(_gateway(tmp_path, "[hooks]\nstartup = 0.3\n", slow=SlowStart).start())

    gateway = _gateway(tmp_path, "[hooks]\nshutdown = 0.3\n", slow=SlowStop)

    async def run() -> None:
        async with gateway:
            pass

    asyncio.run(run())
    assert _errors(gateway, "hook timeout:mailwarden_shutdown:slow") == 1


def test_bad_budgets_name_the_key_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[hooks]\nverdict = 5.0\n\nmessage_processed = 0\n")
    assert (info.value.key, info.value.line) == ("hooks.message_processed", 4)
    with pytest.raises(ConfigError) as info:
        parse_config("[hooks]\nhold = 'soon'\n")
    assert (info.value.key, info.value.line) == ("hooks.hold", 2)


def test_abandoned_threads_do_not_hold_the_process(stuck: Stuck) -> None:
    from mailwarden.hookcalls import DaemonExecutor

    executor = DaemonExecutor(2, "test", join_timeout=0.1)
    executor.submit(stuck.block)
    assert stuck.entered.wait(STUCK)
    executor.shutdown(wait=True)  # returns although the job is still running
    workers = [t for t in threading.enumerate() if t.name.startswith("test_")]
    assert workers and all(t.daemon for t in workers)
    assert not stuck.returned.is_set()


def test_cpu_work_of_a_message_with_many_fields_leaves_the_event_loop(tmp_path: Path) -> None:
    threads: dict[str, bool] = {}

    class Worker:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            loop_thread = threading.current_thread()

            def work() -> bool:
                return threading.current_thread() is loop_thread

            subject = ctx.message.subject or ""
            threads[subject] = await run_cpu_bound(len(ctx.raw), work)
            return []

    gateway = _gateway(tmp_path, "", worker=Worker)
    # 600 fields in 12 KB: small in bytes, yet the kind of message that held the loop.
    many = b"Subject: many\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(600)) + b"\r\nx\r\n"

    async def run() -> None:
        async with gateway:
            await gateway.scan(make_message(subject="few"), ENVELOPE)
            await gateway.scan(many, ENVELOPE)

    asyncio.run(run())
    assert len(many) < 64 * 1024
    assert threads == {"few": True, "many": False}


def test_inline_work_past_its_allowance_goes_to_threads(tmp_path: Path) -> None:
    where: list[bool] = []

    class Slow:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            loop_thread = threading.current_thread()

            def work() -> None:
                where.append(threading.current_thread() is loop_thread)
                # Stands for input that is slow in a way no size or count foresaw.
                threading.Event().wait(0.06)

            for _ in range(3):
                await run_cpu_bound(len(ctx.raw), work)
            return []

    _scan_once(_gateway(tmp_path, "", slow=Slow))
    # The first call used up the message's inline allowance (50 ms): the rest left the loop.
    assert where == [True, False, False]


def test_async_detectors_that_finish_at_once_or_wait_each_keep_their_own_context(
    tmp_path: Path,
) -> None:
    """Async detectors whose first step finishes, raises, waits and finishes, or waits past
    its budget each give their own findings, in the order the detectors run; a context
    variable one sets is not seen by the next, as when each ran in a task of its own."""
    import contextvars

    from mailwarden_sdk import Category, Finding

    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")
    saw: dict[str, str] = {}

    def finding(code: str) -> Finding:
        return Finding(code=code, detector="t", category=Category.OTHER, status="clean")

    class AtOnce:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            saw["at once"] = seen.get()
            seen.set("at once")
            return [finding("AT_ONCE")]

    class Waits:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            saw["waits"] = seen.get()
            seen.set("waits")
            await asyncio.sleep(0.05)
            saw["waits, after"] = seen.get()
            return [finding("WAITED")]

    class Raises:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            saw["raises"] = seen.get()
            raise RuntimeError("broken")

    class TooSlow:
        @hookimpl
        async def mailwarden_scan(self, ctx: ScanContext) -> list[Any]:
            await asyncio.sleep(STUCK)
            return [finding("NEVER")]

    gateway = _gateway(
        tmp_path,
        "[detectors]\ntimeouts = { tooslow = 0.3 }\n" + ERRORS_DELIVER,
        atonce=AtOnce,
        waits=Waits,
        raises=Raises,
        tooslow=TooSlow,
    )
    decision = _scan_once(gateway)
    codes = {(f.detector, f.code) for f in decision.verdict.findings}
    assert {("t", "AT_ONCE"), ("t", "WAITED"), ("raises", "DETECTOR_ERROR")} <= codes
    assert ("tooslow", "DETECTOR_TIMEOUT") in codes
    assert ("t", "NEVER") not in codes
    assert saw == {"at once": "unset", "waits": "unset", "raises": "unset", "waits, after": "waits"}
    assert seen.get() == "unset"
    assert _errors(gateway, "hook timeout:mailwarden_scan:tooslow") == 1
    for name in ("atonce", "waits", "raises", "tooslow"):
        assert decision.timings_ms[f"detector.{name}"] >= 0
    assert decision.timings_ms["detector.tooslow"] >= 300

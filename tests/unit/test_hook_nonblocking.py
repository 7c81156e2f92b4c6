"""Verdict and action hooks marked ``mailwarden_sdk.nonblocking`` run on the event loop's
thread (SDK 1.19): no hand-over to a worker and back per message (issue 24). Unmarked ones,
and marked ones whose ``when`` says no for a call, still run in a worker thread under their
budget."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import msgspec

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden_sdk import (
    Action,
    ActionKind,
    Envelope,
    ScanContext,
    Verdict,
    hookimpl,
    nonblocking,
)
from tests.conftest import make_message

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
ERRORS_DELIVER = '[[rules]]\nname = "default"\n[rules.actions]\nerror = "deliver"\n'


def _gateway(tmp_path: Path, config: str = "", **plugins: Any) -> Gateway:
    built = build_plugin_manager(entry_points=False, extra=plugins)
    parsed = parse_config(config, built.config_schemas())
    parsed.gateway.home = str(tmp_path)
    return Gateway(parsed, plugins=built)


def _scan(gateway: Gateway, *raws: bytes) -> tuple[list[Any], int]:
    """Each message scanned as an ingress does; and the loop thread's id."""

    async def run() -> tuple[list[Any], int]:
        async with gateway:
            decisions = [await gateway.scan(raw, ENVELOPE, dry_run=False) for raw in raws]
            return decisions, threading.get_ident()

    return asyncio.run(run())


def _unmarked(function: Any) -> Any:
    return function


def _verdict_hook(seen: list[int], mark: Any = nonblocking, header: str = "X-Ran") -> Any:
    """A plugin whose verdict hook, marked with ``mark``, notes its thread and a header."""

    class VerdictHook:
        @hookimpl
        @mark
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            seen.append(threading.get_ident())
            verdict.headers.append((header, "yes"))

    return VerdictHook


def _action_hook(seen: list[int], mark: Any = nonblocking) -> Any:
    """A plugin whose action hook, marked with ``mark``, notes its thread and tags."""

    class ActionHook:
        @hookimpl(tryfirst=True)
        @mark
        def mailwarden_action(self, ctx: ScanContext, verdict: Verdict, action: Action) -> Any:
            seen.append(threading.get_ident())
            return msgspec.structs.replace(action, subject_tag="[acted]")

    return ActionHook


def test_marked_verdict_and_action_hooks_run_on_the_loop_thread(tmp_path: Path) -> None:
    verdicts: list[int] = []
    actions: list[int] = []
    gateway = _gateway(tmp_path, v=_verdict_hook(verdicts), a=_action_hook(actions))
    (decision,), loop = _scan(gateway, make_message())
    assert verdicts == [loop] and actions == [loop]
    # Their work counts as a worker's would.
    assert ("X-Ran", "yes") in decision.verdict.headers
    assert decision.action.subject_tag == "[acted]"
    assert decision.action.kind is ActionKind.DELIVER


def test_one_unmarked_hook_keeps_them_all_in_a_worker(tmp_path: Path) -> None:
    seen: list[int] = []
    quick, slow = _verdict_hook(seen), _verdict_hook(seen, _unmarked, "X-Slow")
    (_decision,), loop = _scan(_gateway(tmp_path, quick=quick, slow=slow), make_message())
    assert len(seen) == 2 and loop not in seen


def test_when_decides_per_call_where_the_action_hooks_run(tmp_path: Path) -> None:
    verdicts: list[int] = []
    actions: list[int] = []
    small_only = nonblocking(when=lambda ctx, action, **_: b"BIG-JOB" not in ctx.raw)
    gateway = _gateway(tmp_path, v=_verdict_hook(verdicts), a=_action_hook(actions, small_only))
    raws = make_message(subject="small"), make_message(subject="BIG-JOB")
    (small, big), loop = _scan(gateway, *raws)
    assert verdicts == [loop, loop]
    assert actions[0] == loop and actions[1] != loop
    assert small.action.subject_tag == big.action.subject_tag == "[acted]"


def test_a_when_that_raises_sends_the_call_to_a_worker(tmp_path: Path) -> None:
    seen: list[int] = []

    def broken(**_: Any) -> bool:
        raise KeyError("no such stash key")

    careless = _verdict_hook(seen, nonblocking(when=broken))
    (decision,), loop = _scan(_gateway(tmp_path, careless=careless), make_message())
    assert len(seen) == 1 and seen[0] != loop
    assert ("X-Ran", "yes") in decision.verdict.headers


def test_a_failing_marked_verdict_hook_is_not_delivered_on(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        @nonblocking
        def mailwarden_verdict(self, ctx: ScanContext, verdict: Verdict) -> None:
            verdict.headers.append(("X-Half", "done"))
            raise RuntimeError("score table missing")

    (decision,), _loop = _scan(_gateway(tmp_path, ERRORS_DELIVER, broken=Broken), make_message())
    assert decision.action.kind is ActionKind.TEMPFAIL
    assert decision.verdict.errors == ["verdict"]
    assert ("X-Half", "done") not in decision.verdict.headers


def test_a_failing_marked_action_hook_leaves_the_decided_action(tmp_path: Path) -> None:
    class Broken:
        @hookimpl
        @nonblocking
        def mailwarden_action(self, ctx: ScanContext, verdict: Verdict, action: Action) -> Any:
            raise RuntimeError("backup disk gone")

    (decision,), _loop = _scan(_gateway(tmp_path, broken=Broken), make_message())
    assert decision.action.kind is ActionKind.DELIVER


def test_with_every_detector_off_the_builtin_hooks_stay_on_the_loop(tmp_path: Path) -> None:
    """The built-in plugins' verdict and action hooks, loaded but with nothing scanned, leave
    no message to a worker thread (the milter's and the SMTP gateway's bare path): a marked
    probe beside them runs on the loop only if every one of them is marked for the call."""
    verdicts: list[int] = []
    actions: list[int] = []
    probes = {"probe": _verdict_hook(verdicts), "probe_action": _action_hook(actions)}

    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[gateway]\nhome = "{tmp_path}"\n[events]\nenabled = false\n'
        '[detectors]\ndisabled = ["antivirus", "antispam", "reputation", "sandbox"]\n'
    )
    gateway = Gateway.from_file(str(config), extra_plugins=probes)
    hook = gateway.plugins.pm.hook
    assert {"antispam", "sandbox"} <= {
        i.plugin_name for i in hook.mailwarden_verdict.get_hookimpls()
    }
    assert {"antispam", "antivirus"} <= {
        i.plugin_name for i in hook.mailwarden_action.get_hookimpls()
    }

    decisions, loop = _scan(gateway, *(make_message(subject=f"m{n}") for n in range(3)))
    assert verdicts == [loop] * 3 and actions == [loop] * 3
    assert all(d.action.kind is ActionKind.DELIVER for d in decisions)


def test_antispam_autolearns_without_a_worker_for_small_messages(tmp_path: Path) -> None:
    """With antispam's Bayes autolearning (the default), every scanned live message is a
    lesson to queue; a small one costs no hand-over to a worker (the lesson is queued from
    the loop's thread), a large one the scan did not tokenise is tokenised in a worker. The
    lessons are learned either way."""
    seen: list[int] = []
    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[gateway]\nhome = "{tmp_path}"\n[events]\nenabled = false\n'
        '[detectors]\ndisabled = ["antivirus", "reputation", "sandbox"]\n'
    )
    gateway = Gateway.from_file(str(config), extra_plugins={"probe": _verdict_hook(seen)})
    antispam = gateway.plugins.pm.get_plugin("antispam")
    large = make_message(subject="large", body="A long and clean message.\n" * 4000)
    assert len(large) > 64 * 1024

    async def run() -> tuple[int, tuple[int, int]]:
        async with gateway:
            for n in range(3):
                await gateway.scan(make_message(subject=f"m{n}"), ENVELOPE, dry_run=False)
            await gateway.scan(large, ENVELOPE, dry_run=False)
            await asyncio.to_thread(antispam.bayes.flush)
            return threading.get_ident(), antispam.bayes.counts()

    loop, counts = asyncio.run(run())
    assert seen[:3] == [loop] * 3
    assert seen[3] != loop
    assert counts == (0, 4)

"""Every hook: documented with its exact signature, and a test of its behaviour named after it."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError, PluginError
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, expect_action, expect_finding, scan
from mailwarden_sdk import (
    Envelope,
    Host,
    LearnLabel,
    MessageEvent,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
    Verdict,
    hookimpl,
    hookspecs,
)
from tests.conftest import EICAR, ROOT, make_message
from tests.thirdparty.detectors import MARKER, AllowListWrapper, MarkerDetector, Observer

HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("mailwarden_")
)


def signature_of(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    doc = (ROOT / "docs" / "hooks.md").read_text()
    missing = [signature_of(name) for name in HOOKS if f"`{signature_of(name)}`" not in doc]
    assert missing == []
    documented = set(re.findall(r"^## `(mailwarden_\w+)\(", doc, re.MULTILINE))
    assert documented == set(HOOKS), "docs/hooks.md names a hook that is not in hookspecs.py"


def test_every_hook_has_a_test_named_after_it() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [name for name in HOOKS if f"def test_hook_{name}(" not in sources]
    assert missing == []


def test_hook_mailwarden_config_schema() -> None:
    raw = make_message(body=f"{MARKER.decode()}\n")
    decision = scan(raw, plugins={"marker": MarkerDetector}, config="[marker]\nscore = 2.5\n")
    assert expect_finding(decision, "TEST_MARKER").score == 2.5
    with pytest.raises(ConfigError) as info:
        scan(raw, plugins={"marker": MarkerDetector}, config="[marker]\n\nscore = 'high'\n")
    assert (info.value.key, info.value.line) == ("marker.score", 3)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data_dir: Path | None = None

    @hookimpl
    async def mailwarden_startup(self, host: Host) -> None:
        self.calls.append("startup")
        self.data_dir = host.data_dir

    @hookimpl
    def mailwarden_shutdown(self) -> None:
        self.calls.append("shutdown")


class _BrokenStart:
    @hookimpl
    def mailwarden_startup(self) -> None:
        raise RuntimeError("license file missing")


class _BrokenStop:
    @hookimpl
    def mailwarden_shutdown(self) -> None:
        raise RuntimeError("socket already closed")


def _gateway(tmp_path: Path, **extra: object) -> Gateway:
    plugins = build_plugin_manager(entry_points=False, extra=extra)
    config = parse_config("", plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    return Gateway(config, plugins=plugins)


def test_hook_mailwarden_startup(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, recorder=_Recorder)
    recorder = gateway.plugins.plugins["recorder"].obj
    asyncio.run(gateway.start())
    assert recorder.calls == ["startup"] and recorder.data_dir == tmp_path
    with pytest.raises(PluginError, match="'broken' failed to start: RuntimeError\\('license file"):
        asyncio.run(_gateway(tmp_path, broken=_BrokenStart).start())


def test_hook_mailwarden_shutdown(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, broken=_BrokenStop, recorder=_Recorder)
    recorder = gateway.plugins.plugins["recorder"].obj

    async def run() -> None:
        async with gateway:
            pass

    asyncio.run(run())  # the broken plugin's error is logged, not raised
    assert recorder.calls == ["startup", "shutdown"]


def test_hook_mailwarden_scan() -> None:
    infected = scan(make_message(attachment=EICAR, filename="eicar.com"), builtins=True)
    expect_finding(infected, "AV_INFECTED", signature="Eicar-Test-Signature", object="eicar.com")
    expect_action(infected, "reject")


def test_hook_mailwarden_verdict() -> None:
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    trusted = Envelope(mail_from="trusted@example.org", rcpt_to=["bob@example.net"])
    decision = scan(
        make_message(body=gtube), plugins=[AllowListWrapper], builtins=True, envelope=trusted
    )
    expect_action(decision, "deliver")
    assert decision.verdict.spam.value == "allowed"


class _FailingObserver:
    @hookimpl
    def mailwarden_message_processed(self, event: MessageEvent) -> None:
        raise RuntimeError("statistics backend down")


def test_hook_mailwarden_message_processed(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, broken=_FailingObserver, observer=Observer)
    observer = gateway.plugins.plugins["observer"].obj
    runner = GatewayRunner(gateway).start()
    try:
        outcome = runner.process(make_message(subject="seen"), Envelope(rcpt_to=["b@example.net"]))
    finally:
        runner.stop()
    assert outcome.reply_code == 250
    assert [(e.subject, e.reply) for e in observer.events] == [("seen", outcome.reply)]


def test_hook_mailwarden_data_stores(thirdparty_dist: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "markerstore").mkdir(parents=True)
    (home / "markerstore" / "seen.txt").write_text("alice@example.org\n")
    env = {
        **os.environ,
        "MAILWARDEN_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(thirdparty_dist), str(ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    stores = {s["store"]["name"]: s for s in json.loads(result.stdout)}
    sightings = stores["marker sightings"]
    assert sightings["owner"] == "markerstore"
    assert sightings["store"]["max_entries"] == 1000
    assert sightings["store"]["when_full"] == "remove_oldest"
    assert (sightings["bytes"], sightings["files"]) == (len("alice@example.org\n"), 1)


def test_hook_mailwarden_cli_commands(thirdparty_dist: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(thirdparty_dist), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "marker-info"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"marker={MARKER.decode()}"


class _Notes:
    """A third party's quarantine (kept in memory), written against the SDK only."""

    name = "notes"
    title = "Noted mail"
    can_learn = False

    def __init__(self, host: Host) -> None:
        self.host = host
        self.held: dict[str, tuple[QuarantineEntry, bytes]] = {}

    def search(
        self, query: str = "", *, limit: int = 100, offset: int = 0
    ) -> list[QuarantineEntry]:
        found = [e for e, _ in self.held.values() if query.lower() in e.subject.lower()]
        return found[offset : offset + limit]

    def get(self, id: str) -> QuarantineEntry:
        if id not in self.held:
            raise QuarantineNotFound(id)
        return self.held[id][0]

    def raw(self, id: str) -> bytes:
        self.get(id)
        return self.held[id][1]

    async def release(self, id: str) -> str:
        entry = self.get(id)
        envelope = Envelope(mail_from=entry.sender, rcpt_to=entry.recipients)
        where = await self.host.deliver(self.raw(id), envelope)
        del self.held[id]
        return where

    async def delete(self, id: str) -> str:
        self.get(id)
        del self.held[id]
        return "deleted"

    async def learn(self, id: str, label: LearnLabel, *, by: str) -> str:
        raise QuarantineError("nothing to learn")


class _NotePlugin:
    def __init__(self) -> None:
        self.notes: _Notes | None = None

    @hookimpl
    def mailwarden_startup(self, host: Host) -> None:
        self.notes = _Notes(host)

    @hookimpl
    def mailwarden_quarantines(self) -> list[object]:
        if self.notes is None:
            return []
        # A taken name, a name that is not URL-safe and a non-quarantine are left out.
        bad_name = _Notes(self.notes.host)
        bad_name.name = "../notes"
        return [self.notes, _Notes(self.notes.host), bad_name, object()]


class _BrokenQuarantines:
    @hookimpl
    def mailwarden_quarantines(self) -> list[object]:
        raise RuntimeError("index unreadable")


def test_hook_mailwarden_quarantines(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, notes=_NotePlugin, broken=_BrokenQuarantines)
    assert gateway.plugin_quarantines() == {}  # nothing open before the start
    runner = GatewayRunner(gateway).start()
    try:
        offered = gateway.plugin_quarantines()
        assert list(offered) == ["notes"] and offered["notes"][0] == "notes"
        notes = offered["notes"][1]
        assert isinstance(notes, Quarantine) and isinstance(notes, _Notes)
        raw = make_message(subject="noted")
        notes.held["n1"] = (
            QuarantineEntry(
                id="n1",
                stored_at=0.0,
                sender="alice@example.org",
                recipients=["bob@example.net", "carol@example.net"],
                subject="noted",
                size=len(raw),
                reason="noted",
            ),
            raw,
        )
        # Host.deliver (SDK 1.7): the gateway's delivery path, no second scan.
        where = runner._call(notes.release("n1"))
        assert where.startswith("delivered as ")
        assert runner.delivered() == [raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")]
        assert runner.events() == []
        with pytest.raises(QuarantineNotFound):
            notes.get("n1")
    finally:
        runner.stop()


def test_sdk_types_round_trip_through_json() -> None:
    decision = scan(make_message(attachment=EICAR, filename="eicar.com"), builtins=True)
    encoded = msgspec.json.encode(decision.verdict)
    assert msgspec.json.decode(encoded, type=Verdict) == decision.verdict

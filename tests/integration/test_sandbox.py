"""The sandbox plugin against real analysis servers on 127.0.0.1.

c-icap with its ClamAV module (ICAP), and the project's reference submit-and-poll server (HTTP),
each run as its own process. Gateways run in-process (``GatewayRunner``) with a small
``time_scale`` so the 60 s minimum verdict timeout passes in about a second, or as
``mailwarden serve`` for the restart test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner
from mailwarden_antispam import GTUBE, AntispamPlugin
from mailwarden_antivirus import AntivirusPlugin
from mailwarden_sandbox import SandboxPlugin
from mailwarden_sandbox.backends import HttpBackend
from mailwarden_sandbox.config import SandboxConfig
from mailwarden_sandbox.icap import IcapClient, IcapError
from mailwarden_sandbox.objects import Analysis
from mailwarden_sandbox.store import HeldMessage, HeldObject, HoldStore, VerdictCache
from mailwarden_sandbox.watcher import Watcher
from mailwarden_sdk import Envelope, Host
from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_smtp_serve import _wait_for_port
from tests.services.icap import IcapServer, running_icap
from tests.services.sandboxd import ReferenceServer, running_reference_server

pytestmark = pytest.mark.integration

SCALE = 0.02  # 60 s of verdict timeout -> 1.2 s; 1 s of poll interval -> 20 ms
ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


def wait_until(predicate: Callable[[], Any], limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {limit} s")


@pytest.fixture(scope="module")
def icap() -> Iterator[IcapServer]:
    with running_icap() as server:
        yield server


@pytest.fixture
def reference() -> Iterator[ReferenceServer]:
    with running_reference_server() as server:
        yield server


@pytest.fixture
def held_reference() -> Iterator[ReferenceServer]:
    """A reference server that reports nothing until told to (a server that never answers)."""
    with running_reference_server(hold=True) as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayRunner]]:
    runners: list[GatewayRunner] = []

    def start(config: str, *, antivirus: bool = False, scale: float = SCALE) -> GatewayRunner:
        extra: dict[str, Any] = {"sandbox": SandboxPlugin(time_scale=scale)}
        if antivirus:
            extra["antivirus"] = AntivirusPlugin
        plugins = build_plugin_manager(entry_points=False, extra=extra)
        cfg = parse_config(config, plugins.config_schemas())
        # A second gateway in the test gets a home of its own (stores are per home).
        cfg.gateway.home = str(tmp_path / f"gw{len(runners)}" if runners else tmp_path)
        runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()


def http_config(server: ReferenceServer | str, **extra: object) -> str:
    url = server if isinstance(server, str) else server.url
    keys: dict[str, object] = {
        "enabled": True,
        "backend": "http",
        "http_url": url,
        "poll_interval": 1.0,
        "request_timeout": 2.0,
        **extra,
    }
    # JSON spells strings, numbers and booleans the way TOML does.
    lines = ["[sandbox]", *(f"{key} = {json.dumps(value)}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def headers_of(message: bytes) -> str:
    return message.split(b"\r\n\r\n", 1)[0].decode()


# -- ICAP against real c-icap + ClamAV ------------------------------------------------------


def test_icap_options_respmod_reqmod_and_preview_against_c_icap(icap: IcapServer) -> None:
    async def run() -> None:
        client = IcapClient(icap.url)
        options = await client.options()
        assert "RESPMOD" in options.headers["methods"]
        assert options.headers["allow"] == "204"
        assert client.istag and client.preview is not None

        infected = await client.respmod(EICAR, "eicar.com")
        assert infected.status == 200 and infected.verdict == "malicious"
        assert "EICAR" in (infected.threat or "")
        assert "Threat=" in infected.headers["x-infection-found"]

        clean = await client.respmod(b"quarterly figures\n" * 100, "report.txt")
        assert (clean.status, clean.verdict) == (204, "clean")

        # Larger than the preview: c-icap answers 100 Continue, then sees the EICAR at the end.
        late = await client.respmod(b"x" * (client.preview or 0) * 4 + EICAR, "late.bin")
        assert late.verdict == "malicious"

        upload = await client.reqmod(EICAR, "upload.bin")
        assert upload.verdict == "malicious"
        assert (await client.reqmod(b"harmless", "upload.txt")).status == 204

    asyncio.run(run())


def test_icap_server_down_is_an_error_not_a_verdict() -> None:
    async def run() -> None:
        with pytest.raises(IcapError):
            await IcapClient(f"icap://127.0.0.1:{free_port()}/avscan", timeout=2).respmod(b"x")

    asyncio.run(run())


def test_hold_over_icap_eicar_gets_the_rules_action_and_clean_is_delivered(
    icap: IcapServer, gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    runner = gateway(
        f'[sandbox]\nenabled = true\nmode = "hold"\nicap_url = "{icap.url}"\npoll_interval = 1.0\n'
    )
    bad = runner.process(make_message(attachment=EICAR, filename="eicar.com"), ENVELOPE)
    good = runner.process(make_message(subject="fine", attachment=b"%PDF-1.4 fine"), ENVELOPE)
    assert (bad.reply_code, good.reply_code) == (250, 250)
    assert "held for analysis" in bad.reply_text and "held for analysis" in good.reply_text

    delivered = wait_until(lambda: runner.delivered())
    assert len(delivered) == 1 and b"Subject: fine" in delivered[0]
    assert "X-Mailwarden-Sandbox: clean" in headers_of(delivered[0])
    wait_until(lambda: not list((tmp_path / "quarantine" / "sandbox").glob("*.eml")))
    # Malicious: the rule's action (reject, after the transaction: blocked), a backup first.
    events = runner.events()
    blocked = next(e for e in events if e.ingress == "resubmit" and e.verdict.sandbox)
    assert any(e.verdict.sandbox == "malicious" and e.action == "discard" for e in events)
    assert blocked is not None
    # The gateway's backup store holds the copy, as the web interface's backup page shows it.
    store = runner.gateway.stores.backup
    kept = [(e.reason, store.get(e.id)) for e in store.list()]
    assert len(kept) == 1 and kept[0][0] == "malicious" and b"eicar.com" in kept[0][1]
    assert len(runner.delivered()) == 1


# -- HTTP submit-and-poll against the reference server --------------------------------------


def test_hold_clean_is_released_and_delivered_after_the_verdict(
    held_reference: ReferenceServer, gateway: Callable[..., GatewayRunner]
) -> None:
    runner = gateway(http_config(held_reference, mode="hold", verdict_timeout=3000.0))
    outcome = runner.process(make_message(attachment=b"harmless data"), ENVELOPE)
    assert outcome.reply_code == 250 and "held for analysis" in outcome.reply_text
    time.sleep(0.5)
    assert runner.delivered() == []  # waiting for the verdict
    held_reference.finish()
    delivered = wait_until(lambda: runner.delivered())
    assert "X-Mailwarden-Sandbox: clean" in headers_of(delivered[0])
    assert [t["sha256"] for t in held_reference.tasks()] == [
        hashlib.sha256(b"harmless data").hexdigest()
    ]


def test_spam_held_for_analysis_is_kept_once_in_the_spam_quarantine(
    held_reference: ReferenceServer, tmp_path: Path
) -> None:
    """Spam the rule delivers, held for the sandbox's verdict and then resubmitted, passes the
    pipeline twice: the spam quarantine keeps it once (it kept it on each pass)."""
    extra: dict[str, Any] = {"sandbox": SandboxPlugin(time_scale=SCALE), "antispam": AntispamPlugin}
    plugins = build_plugin_manager(entry_points=False, extra=extra)
    config = http_config(held_reference, mode="hold", verdict_timeout=3000.0, send_detected=True)
    config += "[antispam]\nquarantine = ['spam']\nauthentication = false\n"
    config += '[[rules]]\nname = "default"\n[rules.actions]\nspam = "deliver"\n'
    cfg = parse_config(config, plugins.config_schemas())
    cfg.gateway.home = str(tmp_path)
    runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
    try:
        raw = make_message(body=GTUBE.decode() + "\n", attachment=b"harmless data")
        outcome = runner.process(raw, ENVELOPE)
        assert "held for analysis" in outcome.reply_text
        held_reference.finish()
        assert len(wait_until(lambda: runner.delivered())) == 1
        spam = runner.gateway.plugin_quarantines()["spam"][1]
        assert [e.recipients for e in spam.search()] == [ENVELOPE.rcpt_to]
    finally:
        runner.stop()


def test_hold_malicious_gets_the_rules_action_with_a_backup_copy_first(
    reference: ReferenceServer, gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    config = http_config(reference, mode="hold")
    config += '[[rules]]\nname = "default"\nactions = { malicious = "quarantine" }\n'
    runner = gateway(config)
    raw = make_message(attachment=b"MAILWARDEN-TEST-MALWARE-MARKER", filename="x.exe")
    assert runner.process(raw, ENVELOPE).reply_code == 250
    held = wait_until(lambda: runner.gateway.quarantine.held())
    assert held[0].reason == "malicious"
    store = runner.gateway.stores.backup
    assert [store.get(e.id) for e in store.list()] == [raw]
    assert runner.delivered() == []
    # The resubmission records its event just after the hold: visible a moment later.
    event = wait_until(lambda: [e for e in runner.events() if e.ingress == "resubmit"])[0]
    codes = {f.code for f in event.verdict.findings}
    assert "SANDBOX_MALICIOUS" in codes and event.verdict.sandbox == "malicious"


def test_a_server_that_never_answers_leads_to_the_timeout_action(
    held_reference: ReferenceServer, gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    config = http_config(held_reference, mode="hold", verdict_timeout=60.0)
    config += '[sandbox.rules.admin]\ntimeout_action = "hold"\n'
    config += '[[rules]]\nname = "admin"\nrecipients = ["@admin.test"]\n'
    config += '[[rules]]\nname = "default"\n'
    runner = gateway(config)
    began = time.monotonic()
    runner.process(make_message(subject="deliver me"), ENVELOPE)
    runner.process(make_message(subject="for the admin", attachment=b"abc"), ENVELOPE)
    runner.process(
        make_message(subject="wait", attachment=b"def"),
        Envelope(mail_from="a@example.org", rcpt_to=["x@admin.test"]),
    )
    # No attachment, nothing to send: delivered at once without waiting.
    assert b"Subject: deliver me" in wait_until(lambda: runner.delivered())[0]
    delivered = wait_until(lambda: len(runner.delivered()) == 2 and runner.delivered())
    assert time.monotonic() - began >= 60 * SCALE
    assert "X-Mailwarden-Sandbox: skipped (no verdict in time)" in headers_of(delivered[1])
    # The other rule holds it for an admin: still in the sandbox quarantine, "expired".
    home = {**os.environ, "MAILWARDEN_HOME": str(tmp_path)}
    listing = wait_until(lambda: "expired" in (out := _cli(home, "sandbox", "list").stdout) and out)
    held_id = listing.split()[0]
    released = _cli(home, "sandbox", "release", held_id)
    assert released.returncode == 0, released.stderr
    third = wait_until(lambda: len(runner.delivered()) == 3 and runner.delivered()[2])
    assert "released by an admin" in headers_of(third)


def test_two_commands_releasing_one_held_message_at_once_send_it_once(
    held_reference: ReferenceServer, gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    runner = gateway(http_config(held_reference, mode="hold", verdict_timeout=3000.0))
    runner.process(make_message(subject="once", attachment=b"pending"), ENVELOPE)
    home = {**os.environ, "MAILWARDEN_HOME": str(tmp_path)}
    listing = wait_until(lambda: "waiting" in (out := _cli(home, "sandbox", "list").stdout) and out)
    held_id = listing.split()[0]
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "sandbox", "release", held_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=home,
        )
        for _ in range(2)
    ]
    answers = [(p.wait(timeout=60), *p.communicate()) for p in both]
    assert sorted(code for code, _, _ in answers) == [0, 1], answers
    [(_, _, refused)] = [a for a in answers if a[0] == 1]
    # Asked while the first request was pending, or after it was carried out.
    assert "was requested already" in refused or "no such held message" in refused
    delivered = wait_until(lambda: runner.delivered())
    time.sleep(0.5)
    assert len(runner.delivered()) == 1
    assert "released by an admin" in headers_of(delivered[0])


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_full_quarantine_places_nothing_new_and_applies_the_fallback(
    held_reference: ReferenceServer, gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    config = http_config(
        held_reference, mode="hold", quarantine_max_messages=3, full_action="tempfail"
    )
    config += '[sandbox.rules.relaxed]\nfull_action = "deliver"\n'
    config += '[[rules]]\nname = "relaxed"\nrecipients = ["@relaxed.test"]\n'
    config += '[[rules]]\nname = "default"\n'
    runner = gateway(config)
    port = runner.start_smtp()
    replies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        for n in range(4):
            raw = make_message(subject=f"m{n}", attachment=f"data {n}".encode())
            client.mail("alice@example.org")
            client.rcpt("bob@example.net")
            replies.append(client.data(raw))
        client.mail("alice@example.org")
        client.rcpt("carol@relaxed.test")
        relaxed = client.data(make_message(subject="relaxed", attachment=b"data r"))
    assert [code for code, _ in replies] == [250, 250, 250, 451]
    assert b"held for analysis" in replies[0][1]
    assert len(list((tmp_path / "quarantine" / "sandbox").glob("*.eml"))) == 3
    skipped = next(e for e in runner.events() if e.subject == "m3")
    assert any(
        f.code == "SANDBOX_SKIPPED" and f.status == "skipped" for f in skipped.verdict.findings
    )
    # The other rule's fallback delivers with a header instead.
    assert relaxed[0] == 250
    delivered = runner.delivered()
    assert len(delivered) == 1
    assert "X-Mailwarden-Sandbox: skipped (sandbox quarantine full)" in headers_of(delivered[0])


def test_mirror_never_delays_delivery(
    gateway: Callable[..., GatewayRunner], tmp_path: Path
) -> None:
    with running_reference_server(delay=3.0) as slow:
        runner = gateway(http_config(slow, mode="mirror"), scale=1.0)
        port = runner.start_smtp()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            began = time.time()
            client.sendmail(
                "alice@example.org", ["bob@example.net"], make_message(attachment=b"zz")
            )
            replied = time.time()
        assert replied - began < 2.0
        assert len(runner.delivered()) == 1  # delivered when the 250 was given
        task = wait_until(lambda: [t for t in slow.tasks() if t["finished"]])[0]
        assert replied < task["finished"]  # the 250 came before the sandbox answered
    # Server down: nothing listens there; the reply is as quick and the mail delivered.
    down = gateway(http_config(f"http://127.0.0.1:{free_port()}", mode="mirror"), scale=1.0)
    began = time.monotonic()
    outcome = down.process(make_message(attachment=b"yy"), ENVELOPE)
    assert outcome.reply_code == 250 and time.monotonic() - began < 2.0
    assert len(down.delivered()) == 1


def test_an_admins_scan_of_a_sample_sends_nothing_to_the_sandbox(
    gateway: Callable[..., GatewayRunner],
) -> None:
    # `mailwarden scan` / `rules test` is a look at a message, not mail: a copy sent to an
    # external server from it would leave the site without a message having arrived.
    with running_reference_server() as server:
        runner = gateway(http_config(server, mode="mirror"), scale=1.0)
        looked = runner.scan(make_message(subject="look", attachment=b"looked at"), ENVELOPE)
        assert not any(f.code == "SANDBOX_MIRRORED" for f in looked.verdict.findings)
        outcome = runner.process(make_message(subject="mail", attachment=b"real mail"), ENVELOPE)
        assert outcome.reply_code == 250
        sent = wait_until(lambda: [t for t in server.tasks() if t["finished"]])
        # The scan came first; only the mail's object ever reached the server.
        assert [t["sha256"] for t in server.tasks()] == [t["sha256"] for t in sent]
        assert [t["sha256"] for t in sent] == [hashlib.sha256(b"real mail").hexdigest()]


def test_what_is_sent_size_limit_and_the_verdict_cache(
    reference: ReferenceServer, gateway: Callable[..., GatewayRunner]
) -> None:
    config = http_config(reference, mode="hold", max_object_size=1000)
    config += '[sandbox.rules.whole]\nsend = "message"\n'
    config += "[sandbox.rules.detected]\nsend_detected = true\nsend_clean = false\n"
    config += '[[rules]]\nname = "whole"\nrecipients = ["@whole.test"]\n'
    config += '[[rules]]\nname = "detected"\nrecipients = ["@detected.test"]\n'
    config += 'actions = { infected = "deliver" }\n'
    config += '[[rules]]\nname = "default"\nactions = { infected = "deliver" }\n'
    runner = gateway(config, antivirus=True)
    attachment = b"attached bytes"
    # Too big: not sent, "not scanned: size", delivered at once with a header.
    big = runner.process(make_message(subject="big", attachment=b"A" * 5000), ENVELOPE)
    assert "250" in big.reply and "held" not in big.reply_text
    finding = next(f for f in big.decision.verdict.findings if f.code == "SANDBOX_NOT_SCANNED")
    assert finding.details["reason"] == "not scanned: size"
    # Attachments only, then the same attachment again: answered from the cache.
    runner.process(make_message(subject="one", attachment=attachment), ENVELOPE)
    wait_until(lambda: len(runner.delivered()) == 2)
    again = runner.process(make_message(subject="two", attachment=attachment), ENVELOPE)
    assert "held" not in again.reply_text
    assert any(f.details.get("cached") == "yes" for f in again.decision.verdict.findings)
    # The whole message under another rule.
    whole = make_message(subject="whole")
    runner.process(whole, Envelope(mail_from="a@example.org", rcpt_to=["x@whole.test"]))
    wait_until(lambda: len(runner.delivered()) == 4)
    # Clean mail is not sent under "detected"; an already detected one is.
    runner.process(
        make_message(subject="c", attachment=b"clean one"),
        Envelope(mail_from="a@example.org", rcpt_to=["x@detected.test"]),
    )
    detected = runner.process(
        make_message(subject="d", attachment=EICAR, filename="e.com"),
        Envelope(mail_from="a@example.org", rcpt_to=["x@detected.test"]),
    )
    assert "held for analysis" in detected.reply_text
    wait_until(lambda: len(reference.tasks()) == 3)
    sent = [t["sha256"] for t in reference.tasks()]
    assert sent == [
        hashlib.sha256(attachment).hexdigest(),
        hashlib.sha256(whole).hexdigest(),
        hashlib.sha256(EICAR).hexdigest(),
    ]


def test_held_messages_survive_a_restart_of_serve_and_are_released_on_the_verdict(
    held_reference: ReferenceServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    # A submit the server took but answered after request_timeout is sent again (at least
    # once): 2 s is short on a loaded machine, and this test is about the restart.
    config = f"[smtp]\nport = {port}\n" + http_config(
        held_reference, mode="hold", poll_interval=0.2, request_timeout=10.0
    )
    (home / "mailwarden.toml").write_text(config)
    env = {**os.environ, "MAILWARDEN_HOME": str(home)}

    def serve(log: Path) -> subprocess.Popen[str]:
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mailwarden", "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        _wait_for_port(port, process, log)
        return process

    def stop(process: subprocess.Popen[str]) -> None:
        process.terminate()
        assert process.wait(timeout=15) == 0

    first = serve(tmp_path / "serve1.log")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            client.mail("alice@example.org")
            client.rcpt("bob@example.net")
            code, text = client.data(make_message(subject="kept", attachment=b"pending"))
        assert code == 250 and b"held for analysis" in text
        wait_until(lambda: held_reference.tasks())
        # Stopped once the task id is recorded: a stop between the server's answer and the
        # record submits again after the restart (at least once, never lost).
        held = HoldStore(home)
        wait_until(
            lambda: any(
                o.task for m in map(held.load, held.ids()) if m is not None for o in m.objects
            )
        )
    finally:
        stop(first)
    # One submission before the restart; else the log says why (a timed-out submit is sent
    # again: at least once).
    before = held_reference.tasks()
    assert len(before) == 1, (before, (tmp_path / "serve1.log").read_text()[-4000:])
    listing = _cli(env, "sandbox", "list").stdout
    assert "waiting" in listing and "1 held" in listing
    assert not (home / "maildir" / "new").exists() or not any((home / "maildir" / "new").iterdir())

    second = serve(tmp_path / "serve2.log")
    try:
        time.sleep(0.5)
        assert "1 held" in _cli(env, "sandbox", "list").stdout  # still waiting
        held_reference.finish()
        delivered = wait_until(
            lambda: (
                (home / "maildir" / "new").is_dir() and list((home / "maildir" / "new").iterdir())
            )
        )
        assert b"Subject: kept" in delivered[0].read_bytes()
        assert "0 held" in _cli(env, "sandbox", "list").stdout
    finally:
        stop(second)
    # The task id was kept across the restart: polled again, never submitted twice.
    after = held_reference.tasks()
    assert [t["id"] for t in after] == [t["id"] for t in before], (
        after,
        (tmp_path / "serve2.log").read_text()[-4000:],
    )


def test_a_held_message_watched_twice_at_once_is_submitted_once(
    held_reference: ReferenceServer, tmp_path: Path
) -> None:
    """The hold hook starts watching the message it placed, and so does the follow-up round
    when its listing saw the record before the hook resumed (under load): one watcher only,
    else both submit the object (the restart test then saw two tasks)."""
    config = SandboxConfig(
        enabled=True, backend="http", http_url=held_reference.url, poll_interval=0.2
    )
    store = HoldStore(tmp_path)
    now = time.time()
    meta = HeldMessage(
        id="ab" * 10,
        envelope=ENVELOPE,
        rule="default",
        size=10,
        held_at=now,
        deadline=now + 3000,
        objects=[HeldObject(sha256=hashlib.sha256(b"pending").hexdigest(), label="f", size=7)],
    )
    assert store.admit(make_message(attachment=b"pending"), meta)

    async def run() -> list[str | None]:
        backend = HttpBackend(held_reference.url, timeout=10.0)
        cache = VerdictCache(tmp_path / "verdicts", 60.0, 100)
        analysis = Analysis(
            config, backend, cache, asyncio.Semaphore(4), 1.0, asyncio.get_running_loop()
        )
        watcher = Watcher(cast(Host, None), store, analysis)
        watcher.owner = store.try_own()
        try:
            watcher.watch_soon(meta.id)  # the follow-up round
            watcher.watch_soon(meta.id)  # the hold hook, resumed after it
            for _ in range(100):
                await asyncio.sleep(0.05)
                held = await asyncio.to_thread(store.load, meta.id)
                if held is not None and held.objects[0].task and len(held_reference.tasks()):
                    break
            await asyncio.sleep(0.5)  # a second watcher's submit would be in by now
        finally:
            tasks = watcher.tasks()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            watcher.stopped()
            await backend.close()
            cache.close()
        held = store.load(meta.id)
        return [o.task for o in held.objects] if held else []

    recorded = asyncio.run(run())
    tasks = held_reference.tasks()
    assert len(tasks) == 1, tasks
    assert recorded == [str(tasks[0]["id"])]

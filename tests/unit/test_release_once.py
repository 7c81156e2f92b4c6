"""A quarantined message is released once, however many ask at the same moment.

Held messages (the core's quarantine) and the spam quarantine, with real threads, real
processes (the gateway's release in two processes, ``mailwarden antispam quarantine release``
twice) and a real SMTP next hop on 127.0.0.1 that can hold its answer back. What a user would
notice: recipients get one copy, the second caller is told the message is being released or is
gone, a failed delivery leaves the message held, and a release cut short by a killed process
does not strand the message.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.quarantine import QuarantineBusy, QuarantineError, ReleaseFailed
from mailwarden_antispam.quarantine import QuarantineBusy as SpamBusy
from mailwarden_antispam.quarantine import QuarantineError as SpamError
from mailwarden_antispam.quarantine import SpamQuarantine
from mailwarden_sdk import Envelope
from tests.conftest import free_port, make_message
from tests.integration.test_sandbox import wait_until

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


# -- held messages (the core's quarantine) ----------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    """A gateway delivering to its Maildir (home/maildir), as ``mailwarden serve`` would."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text("")
    return Gateway(load_config(home / "mailwarden.toml", {}), entry_points=False)


def _hold(gateway: Gateway, subject: str = "held one") -> str:
    return gateway.quarantine.hold(
        make_message(subject=subject), ENVELOPE, decision="d-1", rule="default", reason="test"
    )


def _delivered(gateway: Gateway) -> list[bytes]:
    new = gateway.maildir.root / "new"
    return [p.read_bytes() for p in new.iterdir()] if new.is_dir() else []


def _release_in_threads(gateway: Gateway, held_id: str, count: int) -> list[str]:
    """``count`` threads release ``held_id`` at the same moment; what each was told."""
    start = threading.Barrier(count)
    answers: list[str] = []

    def release() -> None:
        start.wait()
        try:
            answers.append("ok: " + asyncio.run(gateway.release(held_id)))
        except QuarantineError as exc:
            answers.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=release) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_a_held_message_released_by_many_threads_at_once_is_delivered_once(
    gateway: Gateway,
) -> None:
    for round in range(5):
        held_id = _hold(gateway, f"round {round}")
        answers = _release_in_threads(gateway, held_id, 6)
        assert len(answers) == 6
        assert sum(a.startswith("ok: delivered as ") for a in answers) == 1, answers
        for answer in answers:
            # The others: being released right now, or released already.
            assert answer.startswith(("ok: ", "QuarantineBusy: ", "QuarantineError: no held")), (
                answer
            )
        assert len(_delivered(gateway)) == round + 1
    assert gateway.quarantine.held() == []
    assert not any(e.claim for e in gateway.quarantine.store.entries("held"))


RELEASE_IN_A_PROCESS = """
import asyncio, json, sys
from pathlib import Path
from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.quarantine import QuarantineError
home = Path(sys.argv[1])
gateway = Gateway(load_config(home / "mailwarden.toml", {}), entry_points=False)
print("ready", flush=True)
sys.stdin.readline()
try:
    print(json.dumps({"ok": asyncio.run(gateway.release(sys.argv[2]))}), flush=True)
except QuarantineError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
"""


def test_a_held_message_released_by_two_processes_at_once_is_delivered_once(
    gateway: Gateway,
) -> None:
    # Two gateways (as two workers of `mailwarden serve`) release the same message, told to go
    # at the same moment.
    home = gateway.config.home
    for round in range(3):
        held_id = _hold(gateway, f"round {round}")
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RELEASE_IN_A_PROCESS, str(home), held_id],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        answers = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
        assert sorted("ok" in a for a in answers) == [False, True], answers
        [loser] = [a for a in answers if "error" in a]
        assert loser["error"] in ("QuarantineBusy", "QuarantineError"), loser
        assert "released" in loser["message"], loser
        assert len(_delivered(gateway)) == round + 1
    assert gateway.quarantine.held() == []


def test_a_held_message_whose_delivery_fails_stays_held_and_is_released_later(
    gateway: Gateway,
) -> None:
    held_id = _hold(gateway)
    # The Maildir cannot be created: a file is in its way (as a full or broken disk would).
    gateway.maildir.root.write_text("in the way")
    with pytest.raises(ReleaseFailed, match="it stays held"):
        asyncio.run(gateway.release(held_id))
    assert [h.id for h in gateway.quarantine.held()] == [held_id]
    assert not any(e.claim for e in gateway.quarantine.store.entries("held"))
    assert b"X-Mailwarden-Quarantine-Rule: default" in gateway.quarantine.raw(held_id)
    # Fixed: released now, once.
    gateway.maildir.root.unlink()
    assert asyncio.run(gateway.release(held_id)).startswith("delivered as ")
    [message] = _delivered(gateway)
    assert b"Subject: held one" in message and b"X-Mailwarden-Quarantine" not in message
    assert gateway.quarantine.held() == []


CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from mailwarden.quarantine import Quarantine
claim = Quarantine(Path(sys.argv[1])).claim(sys.argv[2])
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_held_message_left_mid_release_by_a_killed_process_is_released_later(
    gateway: Gateway,
) -> None:
    quarantine = gateway.quarantine
    quarantine.stale_after = 0.5
    held_id = _hold(gateway)
    claimer = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(quarantine.root), held_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert claimer.stdout is not None and claimer.stdout.readline() == "claimed\n"
        # Its release is under way: not listed, not released or deleted a second time.
        assert quarantine.held() == []
        with pytest.raises(QuarantineBusy, match="being released"):
            asyncio.run(gateway.release(held_id))
        with pytest.raises(QuarantineBusy):
            quarantine.delete(held_id)
        # Older than the limit, but its process lives (a slow release): still its release.
        time.sleep(0.6)
        assert quarantine.recover() == [] and quarantine.held() == []
        with pytest.raises(QuarantineBusy):
            asyncio.run(gateway.release(held_id))
    finally:
        claimer.send_signal(signal.SIGKILL)
        claimer.wait(timeout=30)
    # Its process is gone and the claim is old: held again (never deleted), released once.
    assert [h.id for h in quarantine.held()] == [held_id]
    assert asyncio.run(gateway.release(held_id)).startswith("delivered as ")
    assert len(_delivered(gateway)) == 1


def test_a_young_claim_of_a_killed_process_waits_for_the_limit(gateway: Gateway) -> None:
    quarantine = gateway.quarantine
    held_id = _hold(gateway)
    claimer = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(quarantine.root), held_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert claimer.stdout is not None and claimer.stdout.readline() == "claimed\n"
    claimer.send_signal(signal.SIGKILL)
    claimer.wait(timeout=30)
    # The default limit (minutes) has not passed: left alone for now.
    assert quarantine.held() == []
    with pytest.raises(QuarantineBusy):
        asyncio.run(gateway.release(held_id))
    # As at the next start of the gateway, once it is old enough.
    quarantine.stale_after = 0.0
    assert quarantine.recover() == [held_id]
    assert asyncio.run(gateway.release(held_id)).startswith("delivered as ")
    assert len(_delivered(gateway)) == 1


# -- the spam quarantine ----------------------------------------------------------------------


class _GatedHop:
    """An SMTP next hop on 127.0.0.1 that answers DATA only once ``gate`` is set, with
    ``reply``; ``entered`` says a message is waiting for its answer."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.reply = "250 2.0.0 Ok"
        self.received: list[tuple[str, list[str], bytes]] = []
        self.port = free_port()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 60)
        if self.reply.startswith("250"):
            self.received.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return self.reply


@pytest.fixture
def hop() -> Iterator[_GatedHop]:
    handler = _GatedHop()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        handler.gate.set()
        controller.stop()


@pytest.fixture
def spam(tmp_path: Path) -> Iterator[tuple[Path, SpamQuarantine]]:
    """A gateway home and its spam quarantine (where ``mailwarden antispam`` finds it)."""
    home = tmp_path / "home"
    home.mkdir()
    store = SpamQuarantine(home)
    try:
        yield home, store
    finally:
        store.close()


def _put(store: SpamQuarantine, subject: str = "cheap pills") -> str:
    raw = make_message(subject=subject, body="Buy now\r\n")
    entry_id = store.put(raw, "spammer@example.org", ["bob@example.net"], subject, 12.0, "spam")
    assert entry_id is not None
    return entry_id


def _cli(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailwarden", "antispam", "quarantine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
    )


def test_spam_released_by_many_threads_at_once_is_sent_once(
    spam: tuple[Path, SpamQuarantine], hop: _GatedHop
) -> None:
    _, store = spam
    entry_id = _put(store)
    hop.gate.clear()  # the next hop takes its time to answer
    start = threading.Barrier(6)
    answers: list[str] = []

    def release() -> None:
        start.wait()
        try:
            answers.append("ok: " + store.release(entry_id, "127.0.0.1", hop.port))
        except SpamError as exc:
            answers.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=release) for _ in range(6)]
    for thread in threads:
        thread.start()
    assert hop.entered.wait(30)
    # Everyone but the one sending is told at once, while it sends.
    wait_until(lambda: len(answers) == 5)
    assert all(a.startswith(f"QuarantineBusy: {entry_id} is being released") for a in answers)
    # Listed as being released meanwhile, and not deletable.
    [entry] = store.search()
    assert entry.claim and entry.claimed_by == os.getpid()
    with pytest.raises(SpamBusy):
        store.delete(entry_id)
    hop.gate.set()
    for thread in threads:
        thread.join(timeout=60)
    assert answers[-1] == f"ok: sent to 127.0.0.1:{hop.port}"
    assert [r[1] for r in hop.received] == [["bob@example.net"]]
    assert store.search() == []


def test_spam_released_by_two_commands_at_once_is_sent_once(
    spam: tuple[Path, SpamQuarantine], hop: _GatedHop
) -> None:
    home, store = spam
    entry_id = _put(store)
    hop.gate.clear()
    port = str(hop.port)
    both = [_cli(home, "release", entry_id, "--port", port) for _ in range(2)]
    assert hop.entered.wait(30)
    # The one that did not get it says so and fails, while the other one's release goes on.
    loser = wait_until(lambda: next((p for p in both if p.poll() is not None), None), 30)
    winner = next(p for p in both if p is not loser)
    out, err = loser.communicate(timeout=30)
    assert loser.returncode == 1 and "released" not in out
    # Told who has it once the winner's claim is recorded; "right now" if the loser found the
    # file locked a moment before that (both exit 1 and send nothing).
    assert f"{entry_id} is being released" in err
    assert "(process" not in err or f"(process {winner.pid}," in err
    hop.gate.set()
    out, err = winner.communicate(timeout=60)
    assert winner.returncode == 0, err
    assert out.startswith(f"released {entry_id} to 127.0.0.1:{port}")
    assert len(hop.received) == 1
    # And afterwards: nothing left to release, nothing sent.
    late = _cli(home, "release", entry_id, "--port", port)
    out, err = late.communicate(timeout=60)
    assert late.returncode == 1 and f"no quarantined message {entry_id}" in err
    assert len(hop.received) == 1


def test_spam_whose_release_is_refused_stays_held_and_is_released_later(
    spam: tuple[Path, SpamQuarantine], hop: _GatedHop
) -> None:
    home, store = spam
    entry_id = _put(store)
    hop.reply = "451 4.3.0 Try again later"
    refused = _cli(home, "release", entry_id, "--port", str(hop.port), "--learn-ham")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "451" in err and "it stays held" in err
    [entry] = store.search()
    assert entry.id == entry_id and not entry.claim
    hop.reply = "250 2.0.0 Ok"
    assert store.release(entry_id, "127.0.0.1", hop.port) == f"sent to 127.0.0.1:{hop.port}"
    assert len(hop.received) == 1 and store.search() == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_spam_left_mid_release_by_a_killed_command_is_released_later(
    spam: tuple[Path, SpamQuarantine], hop: _GatedHop, silent_port: int
) -> None:
    home, store = spam
    entry_id = _put(store)
    store.stale_after = 0.5
    stuck = _cli(home, "release", entry_id, "--port", str(silent_port))
    try:
        wait_until(lambda: store.get(entry_id).claim)
        with pytest.raises(SpamBusy, match="being released"):
            store.release(entry_id, "127.0.0.1", hop.port)
        # Older than the limit, but its process lives (waiting for the next hop): still its.
        time.sleep(0.6)
        assert store.recover() == [] and store.search()[0].claim
        with pytest.raises(SpamBusy):
            store.release(entry_id, "127.0.0.1", hop.port)
    finally:
        stuck.send_signal(signal.SIGKILL)
        stuck.communicate(timeout=30)
    # Killed mid-release: a longer limit leaves the young claim alone...
    store.stale_after = 60.0
    assert store.search()[0].claim
    with pytest.raises(SpamBusy):
        store.release(entry_id, "127.0.0.1", hop.port)
    # ...and once it is old, listing holds it again (nothing deleted); it is released once.
    store.stale_after = 0.5
    [entry] = store.search()
    assert entry.id == entry_id and not entry.claim
    assert store.release(entry_id, "127.0.0.1", hop.port) == f"sent to 127.0.0.1:{hop.port}"
    assert len(hop.received) == 1 and store.search() == []

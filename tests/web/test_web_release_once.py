"""Releasing from the web interface and the REST API happens once per message.

Several operators (each their own client, in their own thread) release the same held message
or the same spam at the same moment: the recipients get one copy, one operator is told where
it went and the others get 409 (being released) or 404 (gone). A release another process is
carrying out is refused with 409, as is a delete of it; a failed delivery answers 409 and
leaves the message held.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.unit.test_release_once import CLAIM_AND_WAIT, _GatedHop, wait_until
from tests.web.conftest import Web


def _at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run ``calls`` in threads that start together; their answers."""
    start = threading.Barrier(len(calls))
    answers: list[httpx.Response] = []

    def run(call: Callable[[], httpx.Response]) -> None:
        start.wait()
        answers.append(call())

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == len(calls)
    return answers


def _operators(web: Web, count: int) -> list[tuple[httpx.Client, dict[str, str]]]:
    made = []
    for _ in range(count):
        client, csrf = web.login("operator")
        made.append((client, {"x-csrf-token": csrf}))
    return made


def _audited(web: Web, act: str) -> int:
    return sum(r["act"] == act for r in web.state.audit.records())


def test_operators_releasing_one_held_message_at_once_deliver_it_once(web: Web) -> None:
    operators = _operators(web, 5)
    for round in range(3):
        held = web.hold(subject=f"held {round}")
        path = f"/api/quarantine/{held}/release"
        answers = _at_once(
            [
                lambda c=client, h=headers, u=path: c.post(u, headers=h)
                for client, headers in operators
            ]
        )
        codes = sorted(a.status_code for a in answers)
        assert codes.count(200) == 1 and set(codes) <= {200, 404, 409}, codes
        for answer in answers:
            if answer.status_code == 409:
                assert "released" in answer.json()["error"]
        assert len(web.gateway.maildir.messages()) == round + 1
    assert web.gateway.quarantine.held() == []
    assert _audited(web, "quarantine.release") == 3


def test_a_release_another_process_carries_out_is_refused_with_409(web: Web) -> None:
    held = web.hold()
    quarantine = web.gateway.quarantine
    client, csrf = web.login("operator")
    headers = {"x-csrf-token": csrf}
    claimer = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(quarantine.root), held],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert claimer.stdout is not None and claimer.stdout.readline() == "claimed\n"
        refused = client.post(f"/api/quarantine/{held}/release", headers=headers)
        assert refused.status_code == 409
        assert refused.json() == {"error": f"held message {held} is being released right now"}
        assert client.delete(f"/api/quarantine/{held}", headers=headers).status_code == 409
        # The page's button gets the same answer, as a page.
        form = client.post(f"/quarantine/{held}/release", data={"csrf": csrf})
        assert form.status_code == 409 and "being released" in form.text
        assert client.get("/api/quarantine").json() == []
    finally:
        claimer.send_signal(signal.SIGKILL)
        claimer.wait(timeout=30)
    assert web.gateway.maildir.messages() == []
    # The process is gone; past the (here zero) limit the list holds it again, and it goes.
    quarantine.stale_after = 0.0
    assert [h["id"] for h in client.get("/api/quarantine").json()] == [held]
    assert client.post(f"/api/quarantine/{held}/release", headers=headers).status_code == 200
    assert len(web.gateway.maildir.messages()) == 1


def test_a_release_whose_delivery_fails_answers_409_and_keeps_the_message(web: Web) -> None:
    held = web.hold()
    client, csrf = web.login("operator")
    headers = {"x-csrf-token": csrf}
    web.gateway.maildir.root.write_text("in the way")  # the Maildir cannot be created
    failed = client.post(f"/api/quarantine/{held}/release", headers=headers)
    assert failed.status_code == 409
    assert failed.json()["error"].endswith("; it stays held")
    assert [h["id"] for h in client.get("/api/quarantine").json()] == [held]
    web.gateway.maildir.root.unlink()
    released = client.post(f"/api/quarantine/{held}/release", headers=headers)
    assert released.status_code == 200 and released.json()["released"].startswith("delivered")
    [message] = web.gateway.maildir.messages()
    assert b"Subject: held one" in message.read_bytes()
    assert _audited(web, "quarantine.release") == 1


@pytest.fixture
def hop() -> Iterator[_GatedHop]:
    from aiosmtpd.controller import Controller

    handler = _GatedHop()
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        handler.gate.set()
        controller.stop()


@pytest.fixture
def spam_web(tmp_path: Path, hop: _GatedHop) -> Iterator[Web]:
    """Releases go over SMTP to ``hop`` (``release_host``), which answers when let."""
    made = Web(
        tmp_path / "home", antispam=f'release_host = "127.0.0.1"\nrelease_port = {hop.port}\n'
    )
    try:
        yield made
    finally:
        made.close()


def test_operators_releasing_one_spam_at_once_send_it_once(spam_web: Web, hop: _GatedHop) -> None:
    web = spam_web
    operators = _operators(web, 4)
    spam_id = web.spam("release me")
    hop.gate.clear()  # the MTA takes its time: every other click comes while it sends
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.extend(
            _at_once(
                [
                    lambda c=client, h=headers: c.post(
                        f"/api/quarantines/spam/{spam_id}/release", headers=h
                    )
                    for client, headers in operators
                ]
            )
        )
    )
    waiting.start()
    assert hop.entered.wait(30)
    client, headers = operators[0]
    # Listed as being released meanwhile; deleting it is refused too.
    [entry] = client.get("/api/quarantines/spam").json()
    assert entry["details"]["releasing"].startswith("since ")
    assert client.delete(f"/api/quarantines/spam/{spam_id}", headers=headers).status_code == 409
    hop.gate.set()
    waiting.join(timeout=60)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409, 409, 409], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert f"{spam_id} is being released" in answer.json()["error"]
    assert len(hop.received) == 1
    assert client.get("/api/quarantines/spam").json() == []


def test_release_and_learn_as_ham_twice_at_once_sends_and_learns_once(
    spam_web: Web, hop: _GatedHop
) -> None:
    web = spam_web
    bayes = web.gateway.plugins.plugins["antispam"].obj.bayes
    assert bayes is not None
    spam_before, ham_before = bayes.counts()
    spam_id = web.spam("not spam after all")
    operators = _operators(web, 2)
    answers = _at_once(
        [
            lambda c=client, h=headers: c.post(
                f"/api/quarantines/spam/{spam_id}/release-as-ham", headers=h
            )
            for client, headers in operators
        ]
    )
    codes = sorted(a.status_code for a in answers)
    assert codes[0] == 200 and codes[1] in (404, 409), [a.text for a in answers]
    wait_until(lambda: hop.received)
    assert len(hop.received) == 1
    assert bayes.counts() == (spam_before, ham_before + 1)

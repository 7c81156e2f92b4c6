"""What the gateway hands on through real Postfix is rewritten once and stays well-formed.

One ``mailwarden serve`` relays to a Postfix smtpd (whose relayhost is smtp-sink), is the
after-queue content filter of another Postfix smtpd and the milter of a third. A third-party
detector names a virus with a line break and a header line in the name, and a tagging plugin
puts ``[SPAM]`` before a spam message's subject (tests/thirdparty/hostile.py).
"""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, install_fake_distribution, make_message
from tests.integration.test_gateway_relay import Serve, Sink, relay_config
from tests.integration.test_postfix import Rig
from tests.services.postfix import Postfix, contrib_main
from tests.thirdparty.hostile import HOSTILE_MARKER

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

CONFIG = """\
[milter]
enabled = true
port = {milter}
[content_filter]
enabled = true
port = {filter}
reinject = "127.0.0.1:{reinject}"
[[rules]]
name = "tag"
recipients = ["@tag.test"]
[rules.actions]
infected = "tag"
spam = "deliver"
[[rules]]
name = "default"
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("postfix-flow")
    site = install_fake_distribution(
        work / "site",
        "hostile-plugins",
        "1.0",
        {
            "hostilename": "tests.thirdparty.hostile:HostileNameDetector",
            "spamtagger": "tests.thirdparty.hostile:SpamSubjectTagger",
        },
    )
    sink = Sink(work / "sink", free_port()).start()
    inbound, filter_in, content_filter, reinject, milter_in, milter = (
        free_port() for _ in range(6)
    )
    config = CONFIG.format(filter=content_filter, reinject=reinject, milter=milter)
    postfix = Postfix(sink.port)
    with pytest.MonkeyPatch.context() as env:
        # serve finds the plugins as installed: their dist-info on its PYTHONPATH.
        path = [str(site), str(Path(__file__).resolve().parents[2]), os.environ["PYTHONPATH"]]
        env.setenv("PYTHONPATH", os.pathsep.join(path))
        serve = Serve(work / "home", free_port(), relay_config(inbound) + config)
        serve.start(wait_port=content_filter)
    try:
        postfix.add_smtpd(inbound, "in")
        postfix.add_content_filter(filter_in, content_filter, reinject)
        postfix.add_smtpd(milter_in, "mw", **contrib_main("milter", {8891: milter}))
        postfix.start([inbound, filter_in, reinject, milter_in])
        # No milter of the test's own here (the last port).
        yield Rig(postfix, sink, serve, milter_in, filter_in, 0)
    finally:
        postfix.stop()
        serve.stop()
        sink.stop(remove=True)


def _message(tag: str, body: str) -> tuple[str, bytes]:
    mid = f"<{tag}@example.org>"
    raw = make_message(subject=tag, body=body, recipient="carol@tag.test")
    raw = raw.replace(b"Message-ID: <", b"X-Old-Id: <", 1)
    return mid, f"Message-ID: {mid}\r\n".encode() + raw


def _header_lines(message: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    return head.split(b"\n")


def test_relay_a_virus_name_with_a_line_break_injects_no_header(rig: Rig) -> None:
    mid, raw = _message("relay-hostile", HOSTILE_MARKER.decode() + "\n")
    rig.send(rig.serve.port, raw, ["carol@tag.test"])
    got = rig.arrived(mid)
    lines = _header_lines(got)
    assert not [line for line in lines if line.lower().startswith(b"x-injected")], lines
    # The name stays readable, on the one line of the header that reports it.
    assert b"X-Mailwarden-Virus: infected (Evil.Test  X-Injected: 1)" in lines
    assert b"Subject: [infected] relay-hostile" in lines
    parsed = email.message_from_bytes(got, policy=email.policy.compat32)
    assert parsed["X-Injected"] is None


@pytest.mark.parametrize("path", ["content_filter", "milter"])
def test_a_virus_name_with_a_line_break_injects_no_header_through_postfix(
    rig: Rig, path: str
) -> None:
    mid, raw = _message(f"{path}-hostile", HOSTILE_MARKER.decode() + "\n")
    rig.send(
        rig.filter_port if path == "content_filter" else rig.milter_port, raw, ["carol@tag.test"]
    )
    got = rig.arrived(mid)
    lines = _header_lines(got)
    assert not [line for line in lines if line.lower().startswith(b"x-injected")], lines
    assert b"X-Mailwarden-Virus: infected (Evil.Test  X-Injected: 1)" in lines
    subjects = [line for line in lines if line.lower().startswith(b"subject:")]
    assert subjects == [f"Subject: [infected] {path}-hostile".encode()], subjects


def test_content_filter_tags_a_spam_subject_once(rig: Rig) -> None:
    mid, raw = _message("cf-spam-once", GTUBE + "\n")
    rig.send(rig.filter_port, raw, ["carol@tag.test"])
    got = rig.arrived(mid)
    lines = _header_lines(got)
    assert b"X-Mailwarden-Spam: yes, status=spam" in got
    subjects = [line for line in lines if line.lower().startswith(b"subject:")]
    assert subjects == [b"Subject: [SPAM] cf-spam-once"], subjects

"""mailwarden embedded in a real Postfix: as a milter and as an after-queue content filter.

One Postfix instance (tests/services/postfix.py) has three smtpd listeners: one with
``smtpd_milters`` pointing at ``mailwarden serve``'s milter, one with ``content_filter``
pointing at its content filter (re-injection on a fourth port, with XFORWARD), and one with a
milter in this process that uses every end-of-message change. The next hop is Postfix's
smtp-sink; these are the configurations docs/embedding.md shows.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mailwarden.ingress.milter import MilterMessage, MilterResult, MilterServer
from mailwarden.stores.backup import BackupStore
from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_gateway_relay import Serve, Sink, wait_until
from tests.services.postfix import Postfix, contrib_main

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

SERVE_CONFIG = """\
enabled = false
[milter]
enabled = true
port = {milter}
quarantine = "hold"
[content_filter]
enabled = true
port = {filter}
reinject = "127.0.0.1:{reinject}"
[[rules]]
name = "tempfail"
recipients = ["@tempfail.test"]
[rules.actions]
infected = "tempfail"
[[rules]]
name = "hold"
recipients = ["@hold.test"]
[rules.actions]
infected = "quarantine"
[[rules]]
name = "tag"
recipients = ["@tag.test"]
[rules.actions]
spam = "deliver"
[[rules]]
name = "default"
"""


class Stripper:
    """A milter that removes attachments (replaces the body) and uses every other change."""

    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        parsed = email.message_from_bytes(message.raw(), policy=email.policy.SMTP)
        for part in list(parsed.iter_attachments()):
            parsed.get_payload().remove(part)  # type: ignore[union-attr]
        _head, _, body = parsed.as_bytes().partition(b"\r\n\r\n")
        return MilterResult(
            "accept",
            add_headers=[("X-Stripped", "attachments removed")],
            insert_headers=[(0, "X-Inserted-First", "yes")],
            change_headers=[("Subject", 1, "[stripped] " + str(parsed["Subject"]))],
            body=body,
            sender="<changed@example.org>",
            add_recipients=["<added@example.net>"],
            delete_recipients=["<removed@example.net>"],
        )


class ThreadedMilter:
    """A MilterServer on its own event loop in a thread (stopped by the fixture)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = MilterServer(Stripper())
        listener = self.loop.run_until_complete(server.start("127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()
        listener.close()
        self.loop.run_until_complete(listener.wait_closed())
        self.loop.close()

    def start(self) -> ThreadedMilter:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Rig:
    postfix: Postfix
    sink: Sink
    serve: Serve
    milter_port: int  # Postfix smtpd with mailwarden's milter
    filter_port: int  # Postfix smtpd with mailwarden as content filter
    strip_port: int  # Postfix smtpd with the Stripper milter

    def send(
        self,
        port: int,
        raw: bytes,
        recipients: list[str],
        sender: str = "alice@example.org",
        helo: str = "client.lab.test",
    ) -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=60) as smtp:
            smtp.sendmail(sender, recipients, raw)

    def arrived(self, message_id: str, limit: float = 30) -> bytes:
        found: list[bytes] = []

        def check() -> bool:
            found[:] = [m for m in self.sink.messages() if message_id.encode() in m]
            return bool(found)

        wait_until(check, limit, f"{message_id} at the sink")
        return found[0]

    def queued(self, what: str, limit: float = 30) -> dict[str, object]:
        """The Postfix queue entry whose recipients mention ``what``."""
        found: list[dict[str, object]] = []

        def check() -> bool:
            found[:] = [e for e in self.postfix.queue() if what in str(e.get("recipients"))]
            return bool(found) and all(
                r.get("delay_reason") or e["queue_name"] == "hold"
                for e in found
                for r in e["recipients"]  # type: ignore[attr-defined]
            )

        wait_until(check, limit, f"a queue entry for {what}")
        return found[0]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("postfix-rig")
    sink = Sink(work / "sink", free_port()).start()
    milter, content_filter, reinject = free_port(), free_port(), free_port()
    config = SERVE_CONFIG.format(milter=milter, filter=content_filter, reinject=reinject)
    serve = Serve(work / "home", free_port(), config).start(wait_port=milter)
    stripper = ThreadedMilter(free_port()).start()
    postfix = Postfix(sink.port)
    ports = {"mw": free_port(), "cf": free_port(), "strip": free_port()}
    try:
        postfix.add_smtpd(ports["mw"], "mw", **contrib_main("milter", {8891: milter}))
        postfix.add_smtpd(ports["strip"], "strip", smtpd_milters=f"inet:127.0.0.1:{stripper.port}")
        postfix.add_content_filter(ports["cf"], content_filter, reinject)
        postfix.start([*ports.values(), reinject])
        yield Rig(postfix, sink, serve, ports["mw"], ports["cf"], ports["strip"])
    finally:
        postfix.stop()
        stripper.stop()
        serve.stop()
        sink.stop(remove=True)


def _backed_up(rig: Rig, subject: str) -> list[str]:
    """Reasons of the gateway's backup copies of the message with ``subject`` (read from
    another process, as the web interface of another worker would)."""
    store = BackupStore(rig.serve.home / "backup")
    return [e.reason for e in store.list() if e.subject == subject]


def _message(tag: str, **kw: object) -> tuple[str, bytes]:
    mid = f"<{tag}@example.org>"
    raw = make_message(subject=tag, **kw)  # type: ignore[arg-type]
    raw = raw.replace(b"Message-ID: <", b"X-Old-Id: <", 1)
    return mid, f"Message-ID: {mid}\r\n".encode() + raw


# -- milter ------------------------------------------------------------------------------------


def test_milter_clean_message_arrives_with_our_headers(rig: Rig) -> None:
    mid, raw = _message("milter-clean")
    rig.send(rig.milter_port, raw, ["bob@example.net"])
    got = rig.arrived(mid)
    assert b"X-Mailwarden-Virus: clean" in got
    assert b"X-Mailwarden-Spam: no, status=clean" in got


def test_milter_eicar_is_rejected_with_our_text(rig: Rig) -> None:
    _, raw = _message("milter-eicar", attachment=EICAR, filename="eicar.com")
    with pytest.raises(smtplib.SMTPDataError) as err:
        rig.send(rig.milter_port, raw, ["bob@example.net"])
    assert err.value.smtp_code == 550
    assert b"5.7.1 Message rejected by policy: infected" in err.value.smtp_error
    assert "milter-reject: END-OF-MESSAGE" in rig.postfix.maillog()
    assert _backed_up(rig, "milter-eicar") == ["infected"]  # the copy came first


def test_milter_spam_is_tagged_under_a_tagging_rule(rig: Rig) -> None:
    mid, raw = _message("milter-spam", body=GTUBE + "\n")
    rig.send(rig.milter_port, raw, ["carol@tag.test"])
    got = rig.arrived(mid)
    assert b"X-Mailwarden-Spam: yes, status=spam" in got


def test_milter_tempfail_makes_postfix_defer(rig: Rig) -> None:
    _, raw = _message("milter-tempfail", attachment=EICAR, filename="eicar.com")
    with pytest.raises(smtplib.SMTPDataError) as err:
        rig.send(rig.milter_port, raw, ["erin@tempfail.test"])
    assert err.value.smtp_code == 451
    assert b"4.7.1 Message not accepted now (infected" in err.value.smtp_error


def test_milter_quarantine_puts_the_message_on_postfix_hold(rig: Rig) -> None:
    _, raw = _message("milter-hold", attachment=EICAR, filename="eicar.com")
    rig.send(rig.milter_port, raw, ["dan@hold.test"])
    entry = rig.queued("dan@hold.test")
    assert entry["queue_name"] == "hold"


def test_milter_body_replacement_and_envelope_changes_arrive_intact(rig: Rig) -> None:
    mid, raw = _message("milter-strip", attachment=EICAR, filename="eicar.com")
    rig.send(rig.strip_port, raw, ["kept@example.net", "removed@example.net"])
    got = rig.arrived(mid)
    assert EICAR not in got and b"eicar.com" not in got
    assert b"Just a clean message." in got  # the text part survived the replacement
    assert b"X-Stripped: attachments removed" in got
    assert b"X-Inserted-First: yes" in got
    assert b"Subject: [stripped] milter-strip" in got
    assert b"X-Mail-Args: <changed@example.org>" in got
    rcpts = [line for line in got.splitlines() if line.startswith(b"X-Rcpt-Args:")]
    text = b"\n".join(rcpts)
    assert b"kept@example.net" in text and b"added@example.net" in text
    assert b"removed@example.net" not in text
    parsed = email.message_from_bytes(got, policy=email.policy.SMTP)
    assert parsed.get_content_type() == "multipart/mixed"


# -- after-queue content filter ----------------------------------------------------------------


def test_content_filter_reinjects_with_xforward(rig: Rig) -> None:
    mid, raw = _message("cf-clean")
    rig.send(rig.filter_port, raw, ["bob@example.net"], helo="original-client.lab.test")
    got = rig.arrived(mid)
    assert b"X-Mailwarden-Virus: clean" in got
    # Our filter sits between two Postfix Received lines: the first hop's and re-injection's.
    received = [ln for ln in got.splitlines() if ln.startswith(b"Received: from")]
    assert received[-1].startswith(b"Received: from original-client.lab.test")
    assert received[-2].startswith(b"Received: from mailwarden.localhost")
    # The re-injection smtpd took XFORWARD and logs the original queue id and client.
    # The lowest "with ESMTP id" is the queue id the first smtpd gave the message.
    first_id = got.split(b"with ESMTP id ")[-1].split()[0].decode()
    reinjected = [ln for ln in rig.postfix.maillog().splitlines() if "postfix/reinject" in ln]
    expected = f"orig_queue_id={first_id}, orig_client=localhost[127.0.0.1]"
    assert any(expected in ln for ln in reinjected), reinjected
    assert any("xforward=1" in ln for ln in reinjected)
    # Postfix logs the filter's 250 after the re-injected copy may already be at the sink.
    wait_until(
        lambda: "status=sent (250 2.0.0 Ok: filtered as" in rig.postfix.maillog(),
        30,
        "Postfix to log the filter's 250",
    )


def test_content_filter_spam_tagged_and_split_by_rule(rig: Rig) -> None:
    mid, raw = _message("cf-split", body=GTUBE + "\n")
    rig.send(rig.filter_port, raw, ["carol@tag.test", "bob@example.net"])
    got = rig.arrived(mid)
    assert b"X-Mailwarden-Spam: yes, status=spam" in got
    rcpts = b"\n".join(line for line in got.splitlines() if line.startswith(b"X-Rcpt-Args:"))
    # bob's rule rejects spam: he is left out, not bounced to the sender.
    assert b"carol@tag.test" in rcpts and b"bob@example.net" not in rcpts


def test_content_filter_refused_reinjection_stays_queued_in_postfix(rig: Rig) -> None:
    _, raw = _message("cf-refused")
    rig.send(rig.filter_port, raw, ["refuse@blocked.test"])
    entry = rig.queued("refuse@blocked.test")
    assert entry["queue_name"] in ("deferred", "active")
    reason = str(entry["recipients"])
    assert "451 4.4.0 Re-injection failed" in reason, reason


def test_content_filter_tempfail_leaves_the_message_queued(rig: Rig) -> None:
    _, raw = _message("cf-tempfail", attachment=EICAR, filename="eicar.com")
    rig.send(rig.filter_port, raw, ["erin@tempfail.test"])
    entry = rig.queued("erin@tempfail.test")
    assert "451 4.7.1 Message not accepted now (infected" in str(entry["recipients"])


def test_content_filter_eicar_is_refused_with_our_text(rig: Rig) -> None:
    _, raw = _message("cf-eicar", attachment=EICAR, filename="eicar.com")
    rig.send(rig.filter_port, raw, ["frank@example.net"])

    def bounced() -> list[str]:
        return [
            ln
            for ln in rig.postfix.maillog().splitlines()
            if "to=<frank@example.net>" in ln and "status=bounced" in ln
        ]

    # Postfix had said 250 to the client already; our 550 makes it bounce (FILTER_README).
    wait_until(lambda: bool(bounced()), 30, "Postfix to bounce on our 550")
    assert "5.7.1 Message rejected by policy: infected" in bounced()[0]
    assert _backed_up(rig, "cf-eicar") == ["infected"]

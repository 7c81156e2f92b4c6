"""The pipeline as a plugin author and an admin see it: findings, isolation, decisions."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import scan
from mailwarden_sdk import ActionKind, AntivirusStatus, Envelope, SpamStatus
from tests.conftest import EICAR, make_message
from tests.thirdparty.detectors import (
    MARKER,
    AllowListWrapper,
    AsyncMarkerDetector,
    MarkerDetector,
    Observer,
    RaisingDetector,
    SlowAsyncDetector,
    SlowSyncDetector,
    WrongTypeDetector,
)

FAST_BUDGET = "[detectors]\ntimeout = 0.5\n"


def test_third_party_findings_reach_the_verdict() -> None:
    raw = make_message(body=f"hello {MARKER.decode()}\n")
    decision = scan(raw, plugins={"marker": MarkerDetector})
    codes = [f.code for f in decision.verdict.findings]
    assert codes == ["TEST_MARKER"]
    assert decision.verdict.spam_score == 3.0


def test_third_party_config_section_is_validated_and_used() -> None:
    raw = make_message(body=f"{MARKER.decode()}\n")
    decision = scan(raw, plugins={"marker": MarkerDetector}, config="[marker]\nscore = 7.5\n")
    assert decision.verdict.spam_score == 7.5


def test_async_and_sync_detectors_both_run() -> None:
    raw = make_message(attachment=MARKER + b" inside", filename="m.bin")
    decision = scan(raw, plugins={"marker": MarkerDetector, "asyncmarker": AsyncMarkerDetector})
    assert sorted(f.code for f in decision.verdict.findings) == ["ASYNC_MARKER", "TEST_MARKER"]


def test_builtin_antivirus_finds_eicar_in_base64_attachment() -> None:
    raw = make_message(attachment=EICAR, filename="eicar.com")
    decision = scan(raw, builtins=True)
    assert decision.verdict.antivirus is AntivirusStatus.INFECTED
    assert decision.verdict.virus_names == ["Eicar-Test-Signature"]
    assert decision.action.kind is ActionKind.REJECT
    assert decision.action.smtp_code == 550
    finding = decision.verdict.findings[0]
    assert finding.details["object"] == "eicar.com"
    assert decision.message.parts[finding.part].filename == "eicar.com"


def test_clean_message_is_delivered_with_status_headers() -> None:
    decision = scan(make_message(), builtins=True)
    assert decision.verdict.findings == []
    assert decision.action.kind is ActionKind.DELIVER
    headers = dict(decision.action.add_headers)
    assert headers["X-Mailwarden-Virus"] == "clean"
    assert decision.with_headers().startswith(b"X-Mailwarden-Virus: clean\r\n")


def test_gtube_is_spam_and_rejected_by_default() -> None:
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    decision = scan(make_message(body=gtube + "\n"), builtins=True)
    assert decision.verdict.spam is SpamStatus.SPAM
    assert decision.action.kind is ActionKind.REJECT


def test_score_thresholds_of_antispam_apply_to_third_party_scores() -> None:
    raw = make_message(body=f"{MARKER.decode()}\n")
    config = "[marker]\nscore = 6.0\n[antispam]\nprobable_spam_score = 5.0\nspam_score = 8.0\n"
    decision = scan(raw, plugins={"marker": MarkerDetector}, builtins=True, config=config)
    assert decision.verdict.spam is SpamStatus.PROBABLE_SPAM
    assert decision.action.kind is ActionKind.DELIVER
    assert "status=probable_spam" in dict(decision.action.add_headers)["X-Mailwarden-Spam"]


@pytest.mark.parametrize(
    ("name", "plugin", "code"),
    [
        ("raising", RaisingDetector, "DETECTOR_ERROR"),
        ("slowsync", SlowSyncDetector, "DETECTOR_TIMEOUT"),
        ("slowasync", SlowAsyncDetector, "DETECTOR_TIMEOUT"),
        ("wrongtype", WrongTypeDetector, "DETECTOR_ERROR"),
    ],
)
def test_failing_detector_becomes_error_finding_and_policy_still_decides(
    name: str, plugin: type, code: str
) -> None:
    infected = make_message(attachment=EICAR, filename="eicar.com")
    began = time.monotonic()
    decision = scan(infected, plugins={name: plugin}, builtins=True, config=FAST_BUDGET)
    elapsed = time.monotonic() - began
    errors = [f for f in decision.verdict.findings if f.status == "error"]
    assert [(f.code, f.detector) for f in errors] == [(code, name)]
    assert decision.verdict.errors == [name]
    # The other detectors still ran and the rule still decided on what they found.
    assert decision.verdict.antivirus is AntivirusStatus.INFECTED
    assert decision.action.kind is ActionKind.REJECT
    # A stuck detector costs its budget, not its own idea of how long to take.
    assert elapsed < 2.5

    # Fail closed: a message a detector could not judge is not delivered by default.
    clean = scan(make_message(), plugins={name: plugin}, builtins=True, config=FAST_BUDGET)
    assert clean.action.kind is ActionKind.TEMPFAIL
    assert clean.action.smtp_code == 451


def test_rule_error_action_applies_to_detector_errors() -> None:
    config = FAST_BUDGET + '[[rules]]\nname = "lenient"\n[rules.actions]\nerror = "deliver"\n'
    decision = scan(make_message(), plugins={"raising": RaisingDetector}, config=config)
    assert decision.action.kind is ActionKind.DELIVER
    assert dict(decision.action.add_headers)["X-Mailwarden-Errors"] == "raising"


def test_rules_pick_detectors_per_recipient() -> None:
    config = (
        '[[rules]]\nname = "vip"\nrecipients = ["@vip.example"]\ndetectors = ["-antivirus"]\n'
        '[[rules]]\nname = "default"\n'
    )
    raw = make_message(attachment=EICAR, filename="eicar.com")
    vip = scan(raw, builtins=True, config=config, envelope=Envelope(rcpt_to=["boss@vip.example"]))
    other = scan(raw, builtins=True, config=config, envelope=Envelope(rcpt_to=["x@example.net"]))
    assert (vip.rule.name, vip.verdict.antivirus) == ("vip", AntivirusStatus.CLEAN)
    assert (other.rule.name, other.verdict.antivirus) == ("default", AntivirusStatus.INFECTED)


def test_each_gateway_has_its_own_plugin_instances() -> None:
    first = build_plugin_manager(entry_points=False, extra={"marker": MarkerDetector})
    second = build_plugin_manager(entry_points=False, extra={"marker": MarkerDetector})
    assert first.plugins["marker"].obj is not second.plugins["marker"].obj


def test_process_delivers_to_maildir_and_records_event(tmp_path) -> None:
    plugins = build_plugin_manager()
    config = parse_config("", plugins.config_schemas())
    config.gateway.home = str(tmp_path)

    async def run() -> None:
        async with Gateway(config, plugins=plugins) as gateway:
            envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
            clean = await gateway.process(make_message(subject="clean one"), envelope)
            bad = await gateway.process(make_message(subject="bad one", attachment=EICAR), envelope)
            assert clean.reply_code == 250 and bad.reply_code == 550
            delivered = gateway.maildir.messages()
            assert len(delivered) == 1
            assert b"Subject: clean one" in delivered[0].read_bytes()
            events = gateway.events.search()
            assert [(e.subject, e.action) for e in events] == [
                ("bad one", ActionKind.REJECT),
                ("clean one", ActionKind.DELIVER),
            ]
            assert events[0].verdict.virus_names == ["Eicar-Test-Signature"]
            assert events[0].attachments == ["file.bin"]

    asyncio.run(run())


def test_delivery_failure_is_a_temporary_reply(tmp_path) -> None:
    plugins = build_plugin_manager(entry_points=False)
    config = parse_config("", plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    (tmp_path / "maildir").write_text("a file where the Maildir should be")

    async def run() -> None:
        async with Gateway(config, plugins=plugins) as gateway:
            outcome = await gateway.process(make_message(), Envelope(rcpt_to=["bob@example.net"]))
            assert outcome.reply_code == 451
            assert outcome.reply_text.startswith("4.3.0 Maildir delivery failed")

    asyncio.run(run())


def test_verdict_wrapper_runs_around_the_other_verdict_hooks() -> None:
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    raw = make_message(body=gtube + "\n")
    trusted = Envelope(mail_from="trusted@example.org", rcpt_to=["bob@example.net"])
    other = Envelope(mail_from="someone@example.org", rcpt_to=["bob@example.net"])
    plugins = {"allow": AllowListWrapper}
    allowed = scan(raw, plugins=plugins, builtins=True, envelope=trusted)
    assert (allowed.verdict.spam, allowed.action.kind) == (SpamStatus.ALLOWED, ActionKind.DELIVER)
    denied = scan(raw, plugins=plugins, builtins=True, envelope=other)
    assert (denied.verdict.spam, denied.action.kind) == (SpamStatus.SPAM, ActionKind.REJECT)


def test_observers_see_every_recorded_event(tmp_path) -> None:
    plugins = build_plugin_manager(extra={"observer": Observer})
    config = parse_config("", plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    observer = plugins.plugins["observer"].obj

    async def run() -> None:
        async with Gateway(config, plugins=plugins) as gateway:
            envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
            await gateway.process(make_message(subject="one"), envelope)
            await gateway.process(make_message(subject="two", attachment=EICAR), envelope)

    asyncio.run(run())
    assert [(e.subject, e.action) for e in observer.events] == [
        ("one", ActionKind.DELIVER),
        ("two", ActionKind.REJECT),
    ]


SPLIT_RULES = """
[[rules]]
name = "lab"
recipients = ["@lab.example"]
[rules.actions]
infected = "{lab}"
[[rules]]
name = "default"
[rules.actions]
infected = "{default}"
"""


def _split(tmp_path, lab: str, default: str):
    plugins = build_plugin_manager()
    config = parse_config(SPLIT_RULES.format(lab=lab, default=default), plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    envelope = Envelope(mail_from="a@example.org", rcpt_to=["x@lab.example", "y@example.net"])

    async def run():
        async with Gateway(config, plugins=plugins) as gateway:
            outcome = await gateway.process(make_message(attachment=EICAR), envelope)
            # Every group's copy was handed on or removed: the spool keeps nothing behind.
            assert gateway.spool.ids() == []
            return outcome, gateway.maildir.messages(), gateway.quarantine.messages()

    return asyncio.run(run())


def test_split_when_every_rule_refuses_the_reply_refuses_and_tempfail_wins(tmp_path) -> None:
    outcome, delivered, held = _split(tmp_path, lab="reject", default="tempfail")
    # The sender must retry rather than bounce: the temporary refusal covers both groups.
    assert outcome.reply_code == 451
    assert [g.decision.action.kind for g in outcome.groups] == [
        ActionKind.REJECT,
        ActionKind.TEMPFAIL,
    ]
    assert delivered == [] and held == []


def test_split_with_one_rule_accepting_blocks_the_rejected_recipients(tmp_path) -> None:
    outcome, delivered, held = _split(tmp_path, lab="deliver", default="reject")
    assert outcome.reply_code == 250
    lab, default = outcome.groups
    assert lab.decision.envelope.rcpt_to == ["x@lab.example"]
    assert default.decision.envelope.rcpt_to == ["y@example.net"]
    assert default.decision.action.kind is ActionKind.DISCARD
    assert default.reply_text.startswith("2.0.0 Blocked for these recipients")
    assert len(delivered) == 1 and held == []
    # The recorded events say which recipient got what.
    assert (lab.event and lab.event.rcpt_to) == ["x@lab.example"]
    assert (default.event and default.event.action) is ActionKind.DISCARD


def test_split_tempfail_beside_an_accepting_rule_is_held_not_lost(tmp_path) -> None:
    outcome, delivered, held = _split(tmp_path, lab="tempfail", default="deliver")
    assert outcome.reply_code == 250
    assert [g.decision.action.kind for g in outcome.groups] == [
        ActionKind.QUARANTINE,
        ActionKind.DELIVER,
    ]
    assert len(delivered) == 1 and len(held) == 1


def test_decision_ids_are_uuid4_and_a_forked_worker_makes_its_own() -> None:
    """Decision ids are taken from a batch of random bytes: each is a version 4 UUID's hex,
    and a worker forked with part of a batch left never gives out its parent's."""
    import os
    import uuid

    from mailwarden.pipeline import new_id

    ids = [new_id() for _ in range(600)]  # more than one batch
    assert len(set(ids)) == 600
    for made in ids:
        parsed = uuid.UUID(hex=made)
        assert (parsed.hex, parsed.version, parsed.variant) == (made, 4, uuid.RFC_4122)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(new_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(child) == 10
    assert not child & {new_id() for _ in range(10)}


def test_what_a_detector_returns_becomes_its_findings_or_an_error_finding() -> None:
    """A list, a tuple, a generator or a set of findings are the findings; a string, a
    number or an item that is not a Finding are error findings (the rule's error action)."""
    from mailwarden.detect import checked_findings
    from mailwarden_sdk import Category, Finding

    found = [
        Finding(code=f"F{n}", detector="d", category=Category.OTHER, status="clean")
        for n in range(3)
    ]

    def codes(result: object) -> list[str]:
        return [f.code for f in checked_findings("d", result)]

    for given in (found, tuple(found), (f for f in found)):
        assert codes(given) == ["F0", "F1", "F2"]
    assert codes(found[0]) == ["F0"] and codes(None) == [] and codes([]) == []
    for wrong in ("F0", b"F0", 3, {"code": "F0"}.items(), [found[0], "F1"], (found[1], None)):
        assert "DETECTOR_ERROR" in codes(wrong), wrong
    assert codes([found[0], "F1"])[0] == "F0"

"""Notifications: who gets told what, from which template, and never about automatic mail."""

from __future__ import annotations

import asyncio
import email
from email.policy import default
from pathlib import Path

import pytest

from mailwarden import Gateway
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, make_message

RULE = """
[[rules]]
name = "default"
[rules.actions]
infected = "{action}"
[rules.notify]
admin = ["admin@example.org"]
{extra}
"""


def _run(
    tmp_path: Path,
    raw: bytes,
    action: str = "quarantine",
    extra: str = "sender = true\nrecipients = true",
):
    plugins = build_plugin_manager()
    config = parse_config(RULE.format(action=action, extra=extra), plugins.config_schemas())
    config.gateway.home = str(tmp_path)
    config.gateway.hostname = "gw.example.org"
    envelope = Envelope(mail_from="alice@example.net", rcpt_to=["bob@example.org"])

    async def run():
        async with Gateway(config, plugins=plugins) as gateway:
            outcome = await gateway.process(raw, envelope)
            notices = [
                email.message_from_bytes(p.read_bytes(), policy=default)
                for p in gateway.maildir.messages()
            ]
            return outcome, notices

    return asyncio.run(run())


def test_admin_sender_and_recipient_are_told_about_a_quarantined_virus(tmp_path) -> None:
    raw = make_message(subject="quarterly report", attachment=EICAR, filename="report.com")
    outcome, notices = _run(tmp_path, raw)
    assert outcome.reply_code == 250
    by_to = {str(n["To"]): n for n in notices}
    assert set(by_to) == {"admin@example.org", "alice@example.net", "bob@example.org"}
    admin = by_to["admin@example.org"]
    assert admin["Subject"] == "[mailwarden] quarantined: quarterly report"
    body = admin.get_content()
    assert "infected: Eicar-Test-Signature" in body
    assert "report.com" in body and outcome.decision.id[:12] in body
    for notice in notices:
        # From the postmaster, marked automatic, so no auto-responder answers it.
        assert notice["From"] == "postmaster@gw.example.org"
        assert notice["Auto-Submitted"] == "auto-replied"
    assert "was quarantined" in by_to["alice@example.net"].get_content()


def test_a_rejected_sender_gets_no_second_notice(tmp_path) -> None:
    outcome, notices = _run(tmp_path, make_message(attachment=EICAR), action="reject")
    assert outcome.reply_code == 550
    assert sorted(str(n["To"]) for n in notices) == ["admin@example.org", "bob@example.org"]


def test_clean_mail_and_automatic_mail_cause_no_notice(tmp_path) -> None:
    _, notices = _run(tmp_path / "a", make_message(subject="hello"))
    assert [str(n["Subject"]) for n in notices] == ["hello"]  # just the delivered message
    auto = make_message(attachment=EICAR).replace(
        b"Subject:", b"Auto-Submitted: auto-generated\r\nSubject:", 1
    )
    _, notices = _run(tmp_path / "b", auto)
    assert notices == []


def test_a_rules_own_templates_replace_the_built_in_ones(tmp_path) -> None:
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "admin.txt").write_text(
        "Subject: AV $reason\nX-Ticket: $id\n\nRule $rule: $details\n"
    )
    raw = make_message(attachment=EICAR)
    outcome, notices = _run(tmp_path, raw, extra=f'templates = "{templates}"')
    (notice,) = notices
    assert notice["Subject"] == "AV infected"
    assert notice["X-Ticket"] == outcome.decision.id[:12]
    assert notice.get_content().strip() == "Rule default: Eicar-Test-Signature"


@pytest.mark.parametrize(
    "subject",
    [
        b"=?utf-8?q?x=0ABcc=3A_victim=40example=2Ecom?=",
        # an encoded word inside an encoded word: decoded once, it is the first case again
        b"=?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3D0ABcc=3D3A=5Fvictim=3D40example=3D2Ecom=3F=3D?=",
    ],
)
def test_a_hostile_subject_cannot_add_headers_to_a_notice(tmp_path, subject: bytes) -> None:
    raw = make_message(subject="x", attachment=EICAR).replace(
        b"Subject: x", b"Subject: " + subject, 1
    )
    _, notices = _run(tmp_path, raw)
    assert notices and all(n["Bcc"] is None for n in notices)

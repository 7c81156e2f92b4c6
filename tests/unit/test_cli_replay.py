"""``mailwarden replay``: a stricter config tried on mail the gateway already handled."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner, Result

from mailwarden.cli import cli
from mailwarden.pipeline import Gateway
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, make_message

# The default rule with two stricter lines: macro documents are blocked, viruses held.
STRICTER = """
[[rules]]
name = "strict"
senders = ["*"]
recipients = ["*"]
detectors = ["*"]

[rules.actions]
infected = "quarantine"
blocked = "reject"

[rules.content]
names = ["*.docm"]
"""


def _home(tmp_path: Path) -> Path:
    """A home whose config names it; the config's path."""
    home = tmp_path / "home"
    home.mkdir()
    config = home / "mailwarden.toml"
    config.write_text(f'[gateway]\nhome = "{home}"\n')
    return config


def _replay(config: Path, candidate: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["replay", "--config", str(config), "--candidate", str(candidate), *args]
    )


def _stored_set(home: Path, mail: Path) -> dict[str, bytes]:
    """Five messages the gateway on its defaults handled (and recorded); copies in ``mail``."""
    messages = {
        "plain": make_message(subject="lunch", body="Noon?\r\n"),
        "macro": make_message(
            subject="invoice",
            body="Attached.\r\n",
            attachment=b"Sub AutoOpen()",
            filename="q3.docm",
        ),
        "text": make_message(
            subject="notes", body="Attached.\r\n", attachment=b"some notes", filename="notes.txt"
        ),
        "virus": make_message(
            subject="eicar", body="Test.\r\n", attachment=EICAR, filename="e.com"
        ),
        "other": make_message(subject="report", body="Numbers.\r\n"),
    }

    async def main() -> None:
        async with Gateway.from_file(str(home / "mailwarden.toml")) as gateway:
            for name, raw in messages.items():
                envelope = Envelope(mail_from=f"{name}@example.org", rcpt_to=["bob@example.net"])
                await gateway.process(raw, envelope)

    asyncio.run(main())
    mail.mkdir()
    for name, raw in messages.items():
        (mail / f"{name}.eml").write_bytes(raw)
    return messages


def test_replay_with_a_stricter_config_reports_exactly_the_changed_actions(tmp_path: Path) -> None:
    config = _home(tmp_path)
    home = config.parent
    _stored_set(home, tmp_path / "mail")
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(STRICTER)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))

    result = _replay(config, candidate, "--json", str(tmp_path / "mail"))
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["counts"] == {
        "replayed": 5,
        "action_changed": 2,
        "verdict_changed_only": 0,
        "unchanged": 3,
        "not_recorded": 0,
    }
    changed = {Path(m["source"]).stem: m for m in report["messages"]}
    assert sorted(changed) == ["macro", "virus"]
    assert changed["macro"]["recorded"]["action"] == "deliver"
    assert changed["macro"]["candidate"]["action"] == "reject"
    assert changed["virus"]["recorded"]["action"] == "reject"
    assert changed["virus"]["candidate"]["action"] == "quarantine"
    # The envelope is the recorded one, from the event log.
    assert changed["macro"]["mail_from"] == "macro@example.org"

    # The delivered copies in the gateway's Maildir: four, one of them changes.
    text = _replay(config, candidate, str(home / "maildir"))
    assert text.exit_code == 1, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith("replayed 4: 1 action changes, 0 verdict changes only, 3 unchanged")
    assert len(lines) == 2 and "deliver -> reject" in lines[1]

    # Replaying acted on nothing: the home holds what it held (no delivery, event, hold).
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_replay_with_the_same_config_changes_nothing(tmp_path: Path) -> None:
    config = _home(tmp_path)
    home = config.parent
    _stored_set(home, tmp_path / "mail")
    result = _replay(config, config, str(tmp_path / "mail"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "replayed 5: 0 action changes, 0 verdict changes only, 5 unchanged, 0 without a record"
    ]


def test_replay_of_the_gateways_quarantine(tmp_path: Path) -> None:
    config = _home(tmp_path)
    broken = make_message(
        subject="archive", body="See zip.\r\n", attachment=b"PK\x03\x04 torn", filename="a.zip"
    )

    async def main() -> None:
        async with Gateway.from_file(str(config)) as gateway:
            envelope = Envelope(mail_from="zip@example.org", rcpt_to=["bob@example.net"])
            await gateway.process(broken, envelope)

    asyncio.run(main())
    candidate = tmp_path / "lenient.toml"
    candidate.write_text(
        '[[rules]]\nname = "lenient"\nsenders = ["*"]\nrecipients = ["*"]\n'
        'detectors = ["*"]\n[rules.actions]\ncorrupted = "deliver"\n'
    )
    result = _replay(config, candidate, "--quarantine", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["counts"]["replayed"] == 1 and report["counts"]["action_changed"] == 1
    (held,) = report["messages"]
    assert held["source"].startswith("quarantine:")
    assert (held["recorded"]["action"], held["candidate"]["action"]) == ("quarantine", "deliver")


def test_replay_of_an_mbox_takes_the_envelopes_from_the_event_log(tmp_path: Path) -> None:
    import mailbox

    config = _home(tmp_path)
    messages = _stored_set(config.parent, tmp_path / "mail")
    box = mailbox.mbox(tmp_path / "saved.mbox")
    for raw in messages.values():
        box.add(raw)
    box.close()
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(STRICTER)
    result = _replay(config, candidate, "--json", str(tmp_path / "saved.mbox"))
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["counts"]["replayed"] == 5 and report["counts"]["action_changed"] == 2
    assert sorted(m["mail_from"] for m in report["messages"]) == [
        "macro@example.org",
        "virus@example.org",
    ]
    assert all("saved.mbox#" in m["source"] for m in report["messages"])


def test_replay_of_the_backups(tmp_path: Path) -> None:
    config = _home(tmp_path)
    _stored_set(config.parent, tmp_path / "mail")
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(STRICTER)
    result = _replay(config, candidate, "--backups")
    # The rejected virus was backed up before it was refused; the candidate would hold it.
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0] == (
        "replayed 1: 1 action changes, 0 verdict changes only, 0 unchanged, 0 without a record"
    )
    assert lines[1].startswith("backup:") and "reject -> quarantine" in lines[1]

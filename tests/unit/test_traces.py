"""``[stores] traces = true`` writes a trace of every message (it wrote nothing: no code called
the trace store); off, no trace folder is made."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mailwarden.pipeline import Gateway
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, make_message


def _process(home: Path, stores: str) -> str:
    config = home / "mailwarden.toml"
    config.write_text(f"[smtp]\nenabled = false\n{stores}")

    async def run() -> str:
        async with Gateway.from_file(str(config)) as gateway:
            envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
            raw = make_message(subject="traced", attachment=EICAR, filename="x.com")
            outcome = await gateway.process(raw, envelope)
            assert outcome.event is not None
            return outcome.event.id

    return asyncio.run(run())


def test_traces_on_write_one_line_per_message_with_its_findings(tmp_path: Path) -> None:
    event_id = _process(tmp_path, "[stores]\ntraces = true\n")
    [segment] = (tmp_path / "traces" / "pipeline").glob("*.log")
    [line] = segment.read_text().splitlines()
    trace = json.loads(line)
    assert trace["id"] == event_id and trace["subject"] == "traced"
    assert "Eicar-Test-Signature" in trace["verdict"]["virus_names"]
    assert "detect" in trace["timings_ms"]
    assert segment.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("stores", ["", "[stores]\ntraces = false\n"])
def test_traces_off_write_nothing(tmp_path: Path, stores: str) -> None:
    _process(tmp_path, stores)
    assert not (tmp_path / "traces").exists()

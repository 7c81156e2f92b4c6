"""Spool entries that cannot be read: moved to ``damaged/`` once, logged once with the reason,
listed by the data inventory; the queue goes on with the others."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailwarden import Gateway
from mailwarden.config import load_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.spool import Spool
from mailwarden_sdk import Envelope
from tests.conftest import make_message


def _spool_good(spool: Spool, subject: str) -> str:
    entry = spool.write(
        make_message(subject=subject),
        Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"]),
    )
    entry.release()
    return entry.id


def _run_queue(home: Path, until: float) -> Gateway:
    """Start a gateway's delivery queue (local Maildir) for ``until`` seconds."""

    async def run() -> Gateway:
        plugins = build_plugin_manager()
        config = load_config(home / "mailwarden.toml", plugins.config_schemas())
        gateway = Gateway(config, plugins=plugins)
        await gateway.start()
        await gateway.delivery.start()
        try:
            await asyncio.sleep(until)
        finally:
            await gateway.delivery.stop()
            await gateway.stop()
        return gateway

    return asyncio.run(run())


def test_unreadable_entries_go_to_damaged_and_the_queue_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text("[delivery]\nqueue_scan_interval = 0.2\n")
    spool = Spool(home / "spool")
    # Sorted first, so that a walk stopped by it would never reach the good message.
    queue = spool.queue
    _spool_good(spool, "good")
    (queue / "0000a.msg").mkdir()  # a directory where a file belongs: EISDIR on open
    (queue / "0000b.msg").write_bytes(b"Q{not json at all\nbody\n")
    (queue / "0000c.msg").write_bytes(b"\x00" * 512)  # zeroed by a crash: no envelope line
    (queue / "0000c.state").write_bytes(b'{"decided":true}')

    caplog.set_level(logging.INFO, logger="mailwarden")
    _run_queue(home, until=1.5)  # about seven walks of the spool

    delivered = list((home / "maildir" / "new").iterdir())
    assert len(delivered) == 1 and b"Subject: good" in delivered[0].read_bytes()
    assert spool.ids() == []
    damaged = spool.damaged
    assert sorted(p.name for p in damaged.iterdir()) == [
        "0000a.msg",
        "0000a.reason",
        "0000b.msg",
        "0000b.reason",
        "0000c.msg",
        "0000c.reason",
        "0000c.state",
    ]
    assert (damaged / "0000b.msg").read_bytes() == b"Q{not json at all\nbody\n"
    assert "Is a directory" in (damaged / "0000a.reason").read_text()
    assert "does not decode" in (damaged / "0000b.reason").read_text()
    for id in ("0000a", "0000b", "0000c"):
        said = [r for r in caplog.records if id in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        assert said[0].exc_info is None  # a reason, not a traceback

    result = subprocess.run(
        [sys.executable, "-m", "mailwarden", "data-inventory", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [listed] = [s for s in json.loads(result.stdout) if s["store"]["path"] == str(damaged)]
    assert listed["files"] == 6  # the directory holds no file
    assert listed["store"]["when_full"] == "remove_oldest"


def test_damaged_folder_is_capped_oldest_first_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool", damaged_max_bytes=3000)
    spool.queue.mkdir(parents=True)
    ids = []
    for n in range(4):
        id = f"{time.time_ns():x}{n}"
        (spool.queue / f"{id}.msg").write_bytes(b"X" * 1000)
        ids.append(id)
        assert spool.claim(id) is None
    left = sorted({p.name.split(".")[0] for p in spool.damaged.iterdir()})
    assert left == ids[2:]
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert [m.split()[3] for m in removed] == ids[:2]

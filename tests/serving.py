"""``mailwarden serve`` as a child process for tests: started on a home, waited for, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.integration.test_smtp_serve import _wait_for_port

__all__ = ["start_serve", "stop_serve"]


def start_serve(
    home: Path,
    log: Path,
    ports: Sequence[int],
    *,
    ready: int = 1,
    command: Sequence[str] | None = None,
    **popen: Any,
) -> subprocess.Popen[str]:
    """``serve`` for ``home`` (output in ``log``), once it listens on ``ports`` and has said
    ``ready`` that many times (once per worker). A gateway that never comes up is killed."""
    with log.open("w") as out:
        process = subprocess.Popen(
            list(command or [sys.executable, "-m", "mailwarden", "serve"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
            **popen,
        )
    try:
        for port in ports:
            _wait_for_port(port, process, log)
        deadline = time.monotonic() + 30
        while log.read_text().count("ready") < ready and time.monotonic() < deadline:
            time.sleep(0.05)
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise
    return process


def stop_serve(process: subprocess.Popen[str], log: Path) -> None:
    """SIGTERM, and a clean exit within a minute."""
    process.terminate()
    process.wait(timeout=60)
    assert process.returncode == 0, log.read_text()

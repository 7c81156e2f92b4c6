"""`make serve`, the newcomer's first command, answers SMTP."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.integration.test_smtp_serve import _wait_for_port

pytestmark = pytest.mark.integration


def test_make_serve_answers_smtp(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is not installed; README's two commands need it")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n")
    log = tmp_path / "make-serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "-s", "serve"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
            start_new_session=True,
        )
    try:
        _wait_for_port(port, process, log, limit=300)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            code, banner = client.ehlo("tour.example")
            assert code == 250
            assert b"SMTPUTF8" in banner
        assert f"smtp     127.0.0.1:{port}" in log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

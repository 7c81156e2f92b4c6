"""``[gateway] event_loop``: serve runs on the loop the config names, and says which."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EICAR, free_port, make_message
from tests.integration.test_smtp_serve import _wait_for_port

pytestmark = pytest.mark.integration


def _wait_for_log(log: Path, process: subprocess.Popen[str], text: str, count: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = log.read_text()
        if seen.count(text) >= count:
            return seen
        assert process.poll() is None, seen
        time.sleep(0.05)
    raise AssertionError(f"{text!r} x{count} not in the log: {log.read_text()}")


SHOWN = {"uvloop": "  loop     uvloop 0.", "asyncio": "  loop     asyncio\n"}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_configured_loop_through_mail_signals_and_stop(
    tmp_path: Path, event_loop: str, workers: int
) -> None:
    shown = SHOWN[event_loop]
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    config = home / "mailwarden.toml"
    head = f'[gateway]\nevent_loop = "{event_loop}"\n[smtp]\nport = {port}\nworkers = {workers}\n'
    config.write_text(head)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "MAILWARDEN_HOME": str(home)},
        )
    try:
        _wait_for_port(port, process, log)
        seen = _wait_for_log(log, process, "ready", workers)
        # Every process that serves says which loop it runs, as the running loop reports it.
        assert seen.count(shown) == workers, seen
        assert seen.count("  loop     ") == workers, seen
        # Mail, the verdict's answer and the spool's thread hops, on that loop.
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example.org")
            assert client.sendmail("a@example.org", ["b@example.net"], make_message()) == {}
            with pytest.raises(smtplib.SMTPDataError) as rejected:
                client.sendmail("a@example.org", ["b@example.net"], make_message(attachment=EICAR))
        assert rejected.value.smtp_code == 550
        assert len(list((home / "maildir" / "new").iterdir())) == 1
        # The loop's signal handlers: SIGHUP reloads (in every worker), SIGTERM stops cleanly.
        config.write_text(head + '[[rules]]\nname = "again"\n')
        process.send_signal(signal.SIGHUP)
        _wait_for_log(log, process, "reloaded rules: again", workers)
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if process.poll() is None:
            # SIGTERM first: the supervisor stops its workers, which a SIGKILL would orphan.
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

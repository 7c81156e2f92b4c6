"""``[gateway] event_loop``: serve runs on the loop the config names, and says which."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.conftest import EICAR, make_message
from tests.integration.test_reload import RULES, Serve

pytestmark = pytest.mark.integration

SHOWN = {"uvloop": "  loop     uvloop 0.", "asyncio": "  loop     asyncio\n"}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_serve_runs_on_the_configured_loop_through_mail_signals_and_stop(
    tmp_path: Path, event_loop: str, workers: int
) -> None:
    serve = Serve(tmp_path, workers, f'[gateway]\nevent_loop = "{event_loop}"\n')
    try:
        # Every process that serves says which loop it runs, as the running loop reports it.
        seen = serve.wait_for_log("ready", count=workers)
        assert seen.count(SHOWN[event_loop]) == workers, seen
        assert seen.count("  loop     ") == workers, seen
        # Mail, the verdict's answer and the spool's thread hops, on that loop.
        with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
            client.ehlo("client.example.org")
            assert client.sendmail("a@example.org", ["b@example.net"], make_message()) == {}
            with pytest.raises(smtplib.SMTPDataError) as rejected:
                client.sendmail("a@example.org", ["b@example.net"], make_message(attachment=EICAR))
        assert rejected.value.smtp_code == 550
        assert len(list((serve.home / "maildir" / "new").iterdir())) == 1
        # The loop's signal handlers: SIGHUP reloads (in every worker), SIGTERM stops cleanly.
        serve.write(RULES.format(name="again", infected="reject"))
        serve.reload("reloaded rules: again", count=workers)
    finally:
        if serve.process.poll() is None:
            serve.stop()
    assert "Traceback" not in serve.log.read_text(), serve.log.read_text()

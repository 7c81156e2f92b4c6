"""End to end in headless Chromium against a real `mailwarden serve`: log in, search an event,
open a quarantined message, release it, see it delivered; the same for the spam quarantine
(release and learn as not spam); a dashboard screenshot is kept."""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EICAR, free_port, make_message, need
from tests.integration.test_smtp_serve import _wait_for_port
from tests.services import ensure_packages
from tests.web.conftest import GTUBE

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("MAILWARDEN_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    home = tmp_path / "home"
    home.mkdir()
    smtp_port, web_port = free_port(), free_port()
    (home / "mailwarden.toml").write_text(
        f"[smtp]\nport = {smtp_port}\n[web]\nenabled = true\nport = {web_port}\n"
        '[antispam]\nquarantine = ["spam"]\n'
        # Spam is kept in the spam quarantine only (accepted, not delivered).
        '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\nspam = "discard"\n'
    )
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
        _wait_for_port(web_port, process, log)
        _wait_for_port(smtp_port, process, log)
        yield home, smtp_port, web_port
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()


def test_log_in_search_open_release_in_chromium(serve: tuple[Path, int, int]) -> None:
    ensure_packages("chromium")
    binary = shutil.which("chromium")
    need(binary is not None, "chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    home, smtp_port, web_port = serve
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
        client.sendmail(
            "alice@example.org", ["bob@example.net"], make_message(subject="weekly report")
        )
        client.sendmail(
            "mallory@example.org",
            ["bob@example.net"],
            make_message(
                subject="<b>invoice</b> attached", attachment=EICAR, filename="invoice.com"
            ),
        )
        client.sendmail(
            "news@example.org",
            ["bob@example.net"],
            make_message(subject="<i>newsletter</i>", body=GTUBE.decode() + "\r\n"),
        )
    password = (home / "web" / "initial-admin-password").read_text().strip()
    assert (home / "web" / "initial-admin-password").stat().st_mode & 0o777 == 0o600
    base = f"https://127.0.0.1:{web_port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(f"{base}/events")
            assert page.url.startswith(f"{base}/login")  # not logged in yet
            page.fill("#name", "admin")
            page.fill("#password", password)
            page.click("#login")
            page.wait_for_url(f"{base}/events")
            page.fill("#subject", "weekly")
            page.click("#search")
            rows = page.locator("#events tbody tr")
            assert rows.count() == 1 and "weekly report" in rows.first.inner_text()
            page.goto(f"{base}/quarantine")
            page.click("a.open")
            assert page.locator("h1.subject").inner_text() == "<b>invoice</b> attached"
            page.click("#release")
            page.wait_for_url(f"{base}/quarantine")
            assert "Nothing is held" in page.locator("#held").inner_text()
            # The spam quarantine (a plugin's, through mailwarden_quarantines).
            page.click("#plugin-quarantines a[href='/quarantines/spam']")
            page.wait_for_url(f"{base}/quarantines/spam")
            page.click("#entries a.open")
            assert page.locator("h1.subject").inner_text() == "<i>newsletter</i>"
            page.click("#release-as-ham")
            page.wait_for_url(f"{base}/quarantines/spam")
            assert "Nothing is held" in page.locator("#entries").inner_text()
            page.goto(f"{base}/")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert page.locator("#messages").inner_text() == "3"
            assert "signatures loaded" in page.locator("#signatures").inner_text()
            # A setting changed through its generated form, validated and saved.
            page.goto(f"{base}/settings?section=events")
            page.fill("#events\\.retention_days", "0")
            page.click("#save-events")
            assert "events.retention_days" in page.locator("#error").inner_text()
            page.fill("#events\\.retention_days", "2")
            page.click("#save-events")
            assert "[events] saved: retention_days" in page.locator("#notice").inner_text()
            # A custom role made on the Users & roles page.
            page.goto(f"{base}/users")
            page.fill("#role-name", "Help desk")
            page.check("input[value='queues.view']")
            page.click("#save-role")
            page.wait_for_url(f"{base}/users")
            assert "Help desk" in page.locator("#roles").inner_text()
        finally:
            browser.close()
    delivered = [p.read_bytes() for p in sorted((home / "maildir" / "new").iterdir())]
    assert len(delivered) == 3
    assert any(b"invoice.com" in m for m in delivered)  # the released one, as it arrived
    assert any(GTUBE in m for m in delivered)  # released from the spam quarantine
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 1000
    config = (home / "mailwarden.toml").read_text()
    assert "retention_days = 2.0" in config and "Help desk" in config

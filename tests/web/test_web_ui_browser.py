"""The pages of issue 22 in headless Chromium against a real `mailwarden serve`, with
screenshots kept under the test artifacts (``$MAILWARDEN_ARTIFACTS/web-ui``): an event's
detail, a bulk release with its notice, a delete confirmed, a digest link followed with no
login, a settings error beside its field, and the dashboard at 1280 and 390 pixels wide (no
sideways scrolling, Log out on screen)."""

from __future__ import annotations

import json
import shutil
import smtplib
from pathlib import Path
from typing import Any

import pytest

from mailwarden.web.digest import DigestSigner
from tests.conftest import EICAR, make_message, need
from tests.services import ensure_packages
from tests.web.conftest import GTUBE
from tests.web.test_web_browser import ARTIFACTS, serve  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration

SHOTS = ARTIFACTS / "web-ui"


def _send(smtp_port: int) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], make_message(subject="hello"))
        for i in range(4):
            client.sendmail(
                f"mallory{i}@evil.example",
                ["bob@example.net"],
                make_message(subject=f"invoice {i}", attachment=EICAR, filename=f"inv{i}.com"),
            )
        client.sendmail(
            "news@spam.example",
            ["bob@example.net"],
            make_message(subject="cheap pills", body=GTUBE.decode() + "\r\n"),
        )
        client.sendmail(
            "promo@spam.example",
            ["carol@example.net"],
            make_message(subject="digest offer", body=GTUBE.decode() + "\r\n"),
        )


def _fits(page: Any, width: int) -> None:
    """Nothing scrolls sideways and Log out is on screen."""
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= width, f"the page is {overflow} px wide at {width} px"
    box = page.locator("#logout").bounding_box()
    assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= width


def test_issue_22_pages_in_chromium(serve: tuple[Path, int, int]) -> None:  # noqa: F811
    ensure_packages("chromium")
    binary = shutil.which("chromium")
    need(binary is not None, "chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    home, smtp_port, web_port = serve
    _send(smtp_port)
    password = (home / "web" / "initial-admin-password").read_text().strip()
    base = f"https://127.0.0.1:{web_port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            page = context.new_page()
            page.goto(f"{base}/login?next=/events")
            page.fill("#name", "admin")
            page.fill("#password", password)
            page.click("#login")
            page.wait_for_url(f"{base}/events")
            # Events: filter by verdict from its choice list, open the detail.
            page.select_option("#status", "spam")
            page.fill("#sender", "news@spam.example")
            page.click("#search")
            rows = page.locator("#events tbody tr")
            assert rows.count() == 1 and "cheap pills" in rows.first.inner_text()
            time_cell = page.locator("#events td.time").first.bounding_box()
            assert time_cell is not None and time_cell["height"] < 30  # one line
            page.click("#events a.detail")
            assert "GTUBE" in page.locator("#findings").inner_text()
            assert page.locator("#reply").inner_text().startswith("250")
            assert "detector.antispam" in page.locator("#timings").inner_text()
            page.screenshot(path=str(SHOTS / "event-detail.png"), full_page=True)
            # Quarantine: tick three, release them, read the notice.
            page.goto(f"{base}/quarantine")
            boxes = page.locator("#held input[name=id]")
            assert boxes.count() == 4
            for i in range(3):
                boxes.nth(i).check()
            page.click("#bulk-release")
            page.wait_for_url(f"{base}/quarantine")
            assert page.locator("#notice").inner_text() == "Released 3 messages."
            assert page.locator("#held input[name=id]").count() == 1
            page.screenshot(path=str(SHOTS / "quarantine-bulk-release.png"), full_page=True)
            # Delete asks first; Cancel keeps the message, confirming deletes it.
            page.locator("#held input[name=id]").first.check()
            page.click("#bulk-delete")
            assert "invoice" in page.locator("#confirm-list").inner_text()
            page.screenshot(path=str(SHOTS / "quarantine-delete-confirm.png"), full_page=True)
            page.click("#cancel")
            assert page.locator("#held input[name=id]").count() == 1
            page.locator("#held input[name=id]").first.check()
            page.click("#bulk-delete")
            page.click("#confirm-delete")
            assert page.locator("#notice").inner_text() == "Deleted 1 message."
            # A digest link, opened with no login: it shows what it does, acts when confirmed.
            page.goto(f"{base}/api/quarantines/spam?q=digest")
            [entry] = json.loads(page.locator("body").inner_text())
            signer = DigestSigner(home / "web")
            link = signer.sign("spam", entry["id"], "carol@example.net", "release", days=7)
            stranger = browser.new_context(ignore_https_errors=True).new_page()
            stranger.goto(f"{base}/digest/{link}")
            assert "digest offer" in stranger.locator("#digest-entry").inner_text()
            stranger.screenshot(path=str(SHOTS / "digest-link.png"), full_page=True)
            stranger.click("#digest-confirm")
            assert "released to you" in stranger.locator("#notice").inner_text()
            stranger.screenshot(path=str(SHOTS / "digest-released.png"), full_page=True)
            stranger.goto(f"{base}/quarantines/spam")
            assert "/login" in stranger.url  # the link gave no session
            # The spam quarantine: release and learn as not spam, with its notice.
            page.goto(f"{base}/quarantines/spam")
            page.locator("#entries input[name=id]").first.check()
            page.click("#bulk-release-as-ham")
            notice = page.locator("#notice").inner_text()
            assert notice == "Released 1 message and learned it as not spam."
            page.screenshot(path=str(SHOTS / "spam-release-as-ham.png"), full_page=True)
            # Settings: the error stands beside the field it is about.
            page.goto(f"{base}/settings?section=events")
            page.fill("#events\\.retention_days", "0")
            page.click("#save-events")
            error = page.locator("#error")
            assert "events.retention_days" in error.inner_text()
            field = page.locator("#events\\.retention_days").bounding_box()
            said = error.bounding_box()
            assert field is not None and said is not None
            assert 0 <= said["y"] - field["y"] < 80  # just under the input, not at the top
            error.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "settings-inline-error.png"))
            # The dashboard, wide and phone-sized.
            page.goto(f"{base}/?period=7d")
            assert page.locator("#messages").inner_text() == "7"
            assert page.locator("#actions-chart svg rect").count() >= 2
            page.screenshot(path=str(SHOTS / "dashboard-1280.png"), full_page=True)
            _fits(page, 1280)
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{base}/")
            _fits(page, 390)
            page.screenshot(path=str(SHOTS / "dashboard-390.png"), full_page=True)
            for path in ("/events", "/quarantine", "/settings"):
                page.goto(base + path)
                _fits(page, 390)
                page.screenshot(path=str(SHOTS / f"{path[1:]}-390.png"), full_page=True)
            page.click("#logout")
            page.wait_for_url(f"{base}/login")
        finally:
            browser.close()
    for name in ("event-detail", "quarantine-bulk-release", "settings-inline-error"):
        assert (SHOTS / f"{name}.png").stat().st_size > 1000
    delivered = list((home / "maildir" / "new").iterdir())
    # hello, three released, the digest link's release, the spam released as ham
    assert len(delivered) == 6

"""The digest link flow end to end (issue 22): `mailwarden serve` relays through a real Postfix
that delivers into Maildirs (its virtual delivery agent); the digest the gateway sends arrives
there, headless Chromium follows its Release and Always allow links with no login, the
released message arrives through Postfix too, and the sender's next spam reaches the mailbox.
Then the rules page: an edit, its dry run and the save, in Chromium. Screenshots are kept
under ``$MAILWARDEN_ARTIFACTS/web-ui``."""

from __future__ import annotations

import email
import re
import shutil
import smtplib
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, make_message, need
from tests.integration.test_gateway_relay import (  # noqa: F401 (the fixture)
    Serve,
    port_open,
    serve_factory,
    wait_until,
)
from tests.services import ensure_packages
from tests.services.postfix import Postfix
from tests.web.conftest import GTUBE
from tests.web.test_web_browser import ARTIFACTS

pytestmark = pytest.mark.integration

SHOTS = ARTIFACTS / "web-ui"
VMAIL_UID = 65534


@pytest.fixture
def postfix() -> Iterator[tuple[Postfix, int, Path]]:
    """Postfix taking mail for example.net on a free port and delivering it to Maildirs."""
    port = free_port()
    server = Postfix(relay_port=free_port())
    vmail = server.root / "vmail"
    vmail.mkdir()
    shutil.chown(vmail, VMAIL_UID, VMAIL_UID)
    mailboxes = server.etc / "vmailbox"
    mailboxes.write_text("carol@example.net example.net/carol/\n")
    server.main.update(
        virtual_mailbox_domains="example.net",
        virtual_mailbox_base=str(vmail),
        virtual_mailbox_maps=f"texthash:{mailboxes}",
        virtual_uid_maps=f"static:{VMAIL_UID}",
        virtual_gid_maps=f"static:{VMAIL_UID}",
        virtual_minimum_uid="100",
    )
    server.services.append("virtual   unix  -       n       n       -       -       virtual")
    server.add_smtpd(port, "gateway")
    try:
        server.start([port])
        yield server, port, vmail / "example.net" / "carol" / "new"
    finally:
        server.stop()


def _mailbox(folder: Path) -> list[email.message.EmailMessage]:
    paths = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]


def _subjects(folder: Path) -> list[str]:
    return [str(m["Subject"]) for m in _mailbox(folder)]


def _send(smtp_port: int, sender: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
        body = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
        client.sendmail(sender, ["carol@example.net"], body)


def _start(serve: Serve, web_port: int) -> Serve:
    serve.start(wait_port=web_port)
    wait_until(lambda: port_open(serve.port), 30, "the SMTP listener")
    return serve


def test_digest_through_postfix_and_rules_dry_run_in_chromium(
    serve_factory: Callable[..., Serve],  # noqa: F811
    postfix: tuple[Postfix, int, Path],
) -> None:
    ensure_packages("chromium")
    binary = shutil.which("chromium")
    need(binary is not None, "chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    _, postfix_port, inbox = postfix
    smtp_port, web_port = free_port(), free_port()
    base = f"https://127.0.0.1:{web_port}"
    config = (
        f'[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{postfix_port}"\n'
        "retry_initial = 0.5\nretry_max_interval = 1.0\nqueue_scan_interval = 0.3\n"
        f"[web]\nenabled = true\nport = {web_port}\n"
        "{digest}"
        '[antispam]\nquarantine = ["spam"]\n'
        '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
        'spam = "discard"\n'
    )
    # The spam arrives while digests are off; turning them on sends the day's at the start.
    serve = _start(serve_factory(config.format(digest=""), port=smtp_port), web_port)
    home = serve.home
    _send(smtp_port, "promo@shop.example", "first offer")
    _send(smtp_port, "deals@market.example", "second offer")
    assert serve.stop() == 0, serve.log.read_text()
    digest = (
        f'digest_hours = 24\ndigest_url = "{base}"\n'
        'digest_from = "quarantine@example.org"\ndigest_link_days = 7\n'
    )
    (home / "mailwarden.toml").write_text(
        f"[smtp]\nport = {smtp_port}\n" + config.format(digest=digest)
    )
    _start(serve, web_port)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        wait_until(lambda: any("digest" in s for s in _subjects(inbox)), 60, "the digest")
        [mail] = [m for m in _mailbox(inbox) if "digest" in str(m["Subject"])]
        assert "mx.lab.test" in str(mail["Received"])  # it came through Postfix
        text = mail.get_content()
        links: dict[tuple[str, str], str] = {}
        for block in text.split("\n\n"):
            subject = re.search(r"^Subject: (.+)$", block, re.M)
            for act, url in re.findall(r"^ +(Release|Delete|Always allow) +(\S+)$", block, re.M):
                assert subject and url.startswith(f"{base}/digest/")
                links[(subject.group(1), act)] = url
        assert {s for s, _ in links} == {"first offer", "second offer"}
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=binary, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            try:
                _follow_links(browser, links, inbox)
                _edit_rules(browser, base, home)
            finally:
                browser.close()
        # The always-allowed sender's next spam is delivered; the other's is still held.
        _send(smtp_port, "promo@shop.example", "third offer")
        _send(smtp_port, "deals@market.example", "fourth offer")
        wait_until(lambda: "third offer" in _subjects(inbox), 60, "the allowed sender's mail")
        assert "fourth offer" not in _subjects(inbox)
    finally:
        assert serve.stop() == 0, serve.log.read_text()


def _follow_links(browser: Any, links: dict[tuple[str, str], str], inbox: Path) -> None:
    stranger = browser.new_context(ignore_https_errors=True).new_page()
    stranger.goto(links[("second offer", "Release")])
    assert "second offer" in stranger.locator("#digest-entry").inner_text()
    assert _subjects(inbox).count("second offer") == 0  # opening changes nothing
    stranger.screenshot(path=str(SHOTS / "digest-postfix-link.png"), full_page=True)
    stranger.click("#digest-confirm")
    assert "released to you" in stranger.locator("#notice").inner_text()
    stranger.screenshot(path=str(SHOTS / "digest-postfix-released.png"), full_page=True)
    wait_until(lambda: "second offer" in _subjects(inbox), 60, "the released message")
    stranger.goto(links[("first offer", "Always allow")])
    assert "always accept mail from promo@shop.example" in stranger.locator("main").inner_text()
    stranger.click("#digest-confirm")
    assert "always allowed" in stranger.locator("#notice").inner_text()
    stranger.screenshot(path=str(SHOTS / "digest-postfix-always-allow.png"), full_page=True)
    wait_until(lambda: "first offer" in _subjects(inbox), 60, "the allowed message")
    # A used link acts no more.
    stranger.goto(links[("second offer", "Delete")])
    assert "no longer held" in stranger.locator("main").inner_text()


def _edit_rules(browser: Any, base: str, home: Path) -> None:
    page = browser.new_context(
        ignore_https_errors=True, viewport={"width": 1280, "height": 900}
    ).new_page()
    password = (home / "web" / "initial-admin-password").read_text().strip()
    page.goto(f"{base}/login?next=/rules")
    page.fill("#name", "admin")
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_url(f"{base}/rules")
    text = page.locator("#rules-text").input_value()
    assert 'name = "always allow promo@shop.example to carol@example.net"' in text
    # Deliver spam for everyone: the held ("discarded") offers would change, nothing else.
    page.fill("#rules-text", text.replace('spam = "discard"', 'spam = "deliver"'))
    page.click("#dry-run")
    summary = page.locator("#dry-run-summary").inner_text()
    assert summary.startswith("1 of the last "), summary  # "second offer" (first is allowed)
    rows = page.locator("#dry-run-changes tbody tr")
    assert rows.count() == 1 and "default: discard" in rows.first.inner_text()
    page.screenshot(path=str(SHOTS / "rules-dry-run.png"), full_page=True)
    # A typo is shown beside the editor with its key and line; nothing is saved.
    page.fill("#rules-text", text.replace('spam = "discard"', 'spam = "discrad"'))
    page.click("#save-rules")
    assert "spam" in page.locator("#rules-error").inner_text()
    page.screenshot(path=str(SHOTS / "rules-error.png"), full_page=True)
    page.fill("#rules-text", text.replace('infected = "quarantine"', 'infected = "reject"'))
    page.click("#save-rules")
    page.wait_for_url(re.compile(r".*/rules\?saved=\d+$"))
    assert page.locator("#notice").inner_text().startswith("Saved 2 rules")
    page.screenshot(path=str(SHOTS / "rules-saved.png"), full_page=True)
    assert 'infected = "reject"' in (home / "mailwarden.toml").read_text()

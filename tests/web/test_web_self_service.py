"""The mail user's side of the spam quarantine (issue 22): an "always allow" digest link
releases the message and lets the sender's later mail through for that recipient alone; a
directory user with no role logs in to their own quarantine, sees only what is held for their
address, and releases, deletes or always allows it."""

from __future__ import annotations

import re
import shutil
import smtplib
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailwarden.events import EventQuery
from mailwarden.web.digest import send_digests
from mailwarden_sdk import Envelope
from tests.conftest import free_port, make_message, need
from tests.integration.test_gateway_relay import (  # noqa: F401 (the fixture)
    Serve,
    port_open,
    serve_factory,
    wait_until,
)
from tests.services import ensure_packages
from tests.services.slapd import BASE_DN, Slapd, directory_section, running_slapd
from tests.web.conftest import GTUBE, PASSWORD, Web
from tests.web.test_web_browser import ARTIFACTS
from tests.web.test_web_ui_digest import _mailbox

SHOTS = ARTIFACTS / "web-ui"


def _send_spam(web: Web, sender: str, recipient: str, subject: str) -> str:
    """Process a GTUBE message; the action the gateway took."""
    raw = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
    envelope = Envelope(mail_from=sender, rcpt_to=[recipient])
    web.loop.run_until_complete(web.gateway.process(raw, envelope, ingress="smtp"))
    [event] = [
        e for e in web.gateway.events.search(EventQuery(subject=subject)) if e.subject == subject
    ]
    return str(event.action)


def _held(web: Web, subject: str) -> list[str]:
    _, spam = web.gateway.plugin_quarantines()["spam"]
    return [e.id for e in spam.search(subject)]


def _rule_names(web: Web) -> list[str]:
    config = tomllib.loads(web.config_path.read_text())
    return [rule["name"] for rule in config["rules"]]


def test_an_always_allow_link_releases_and_lets_that_sender_through(web: Web) -> None:
    assert _send_spam(web, "promo@shop.example", "erin@example.net", "first offer") == "reject"
    assert _send_spam(web, "promo@shop.example", "frank@example.net", "frank offer") == "reject"
    web.loop.run_until_complete(
        send_digests(
            web.gateway,
            web.state.digest,
            base_url="https://mail.example",
            sender="postmaster@example.net",
            since=time.time() - 3600,
        )
    )
    [digest] = [m for m in _mailbox(web) if m["To"] == "erin@example.net"]
    found = re.search(
        r"^ +Always allow +https://mail\.example(\S+?)\r?$", digest.get_content(), re.M
    )
    assert found, digest.get_content()
    anonymous = web.client()
    page = anonymous.get(found.group(1))
    assert page.status_code == 200 and "always accept mail from promo@shop.example" in page.text
    assert "always allow" not in " ".join(_rule_names(web))  # opening changes nothing
    done = anonymous.post(found.group(1))
    assert done.status_code == 200 and "always allowed" in done.text, done.text
    assert "first offer" in [m["Subject"] for m in _mailbox(web)]
    assert _held(web, "first offer") == []
    assert len(_held(web, "frank offer")) == 1
    # The rule stands first in the file, for that sender and that recipient only.
    assert _rule_names(web)[0] == "always allow promo@shop.example to erin@example.net"
    assert "# hand-written comment that an API edit must keep" in web.config_path.read_text()
    assert _send_spam(web, "promo@shop.example", "erin@example.net", "second offer") == "deliver"
    assert "second offer" in [m["Subject"] for m in _mailbox(web)]
    assert _held(web, "second offer") == []
    assert _send_spam(web, "promo@shop.example", "frank@example.net", "third offer") == "reject"
    assert _send_spam(web, "other@shop.example", "erin@example.net", "fourth offer") == "reject"
    acts = [r["act"] for r in web.state.audit.records()]
    assert acts.count("digest.allow") == 1


def test_a_bounce_cannot_be_always_allowed(web: Web) -> None:
    _send_spam(web, "", "erin@example.net", "bounce spam")
    [entry] = _held(web, "bounce spam")
    token = web.state.digest.sign("spam", entry, "erin@example.net", "allow", days=1)
    answer = web.client().post(f"/digest/{token}")
    assert answer.status_code == 422 and "cannot be always allowed" in answer.text
    assert _held(web, "bounce spam") == [entry]
    assert not any(name.startswith("always allow") for name in _rule_names(web))


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        for cn in ("Carol White", "Bob Jones"):
            server.ldapadd(
                f"dn: cn={cn},ou=Users,{BASE_DN}\nchangetype: modify\n"
                f"replace: userPassword\nuserPassword: {PASSWORD}\n"
            )
        yield server


def _form_login(web: Web, name: str) -> tuple[object, str]:
    browser = web.client()
    answer = browser.post(
        "/login",
        data={"name": name, "password": PASSWORD, "csrf": web.login_form_token(browser)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text[-600:]
    return browser, answer.headers.get("location", "")


def test_a_mail_user_works_their_own_quarantine(tmp_path: Path, slapd: Slapd) -> None:
    web = Web(tmp_path / "home", extra_config=directory_section(slapd))
    try:
        _send_spam(web, "promo@shop.example", "carol@example.test", "carol offer")
        _send_spam(web, "promo@shop.example", "carol@example.test", "carol second")
        _send_spam(web, "deals@shop.example", "carol@example.test", "carol third")
        _send_spam(web, "promo@shop.example", "bob@example.test", "bob offer")
        [bobs] = _held(web, "bob offer")
        carol, where = _form_login(web, "carol@example.test")
        # No role of this interface: her own quarantine, not a 403 dashboard.
        assert where == "/my/quarantine"
        page = carol.get("/my/quarantine")  # type: ignore[attr-defined]
        assert page.status_code == 200
        assert "carol offer" in page.text and "carol third" in page.text
        assert "bob offer" not in page.text
        assert carol.get("/quarantines/spam").status_code == 403  # type: ignore[attr-defined]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        post = carol.post  # type: ignore[attr-defined]
        # Bob's message is not hers to release, whatever id she sends.
        assert (
            post(f"/my/quarantine/{bobs}", data={"csrf": csrf[1], "act": "release"}).status_code
            == 404
        )
        [first] = _held(web, "carol offer")
        released = post(f"/my/quarantine/{first}", data={"csrf": csrf[1], "act": "release"})
        assert released.status_code == 200 and "released to you" in released.text
        assert [m["Subject"] for m in _mailbox(web)] == ["carol offer"]
        [third] = _held(web, "carol third")
        deleted = post(f"/my/quarantine/{third}", data={"csrf": csrf[1], "act": "delete"})
        assert deleted.status_code == 200 and _held(web, "carol third") == []
        [second] = _held(web, "carol second")
        allowed = post(f"/my/quarantine/{second}", data={"csrf": csrf[1], "act": "allow"})
        assert allowed.status_code == 200 and "always allowed" in allowed.text
        assert _send_spam(web, "promo@shop.example", "carol@example.test", "later") == "deliver"
        assert _send_spam(web, "promo@shop.example", "bob@example.test", "bob later") == "reject"
        # Without the CSRF token nothing happens.
        [bob_later] = _held(web, "bob later")
        assert post(f"/my/quarantine/{bob_later}", data={"act": "release"}).status_code == 403
        acts = [r["act"] for r in web.state.audit.records()]
        assert [a for a in acts if a.startswith("self.")] == [
            "self.release",
            "self.delete",
            "self.allow",
        ]
        # An account of the interface has no mail of its own here.
        admin, _ = web.login("administrator")
        assert "not-mail-user" in admin.get("/my/quarantine").text
    finally:
        web.close()


@pytest.mark.integration
def test_a_mail_user_releases_their_spam_in_chromium(
    slapd: Slapd,
    serve_factory: Callable[..., Serve],  # noqa: F811
) -> None:
    ensure_packages("chromium")
    binary = shutil.which("chromium")
    need(binary is not None, "chromium is not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    web_port = free_port()
    serve = serve_factory(
        f"[web]\nenabled = true\nport = {web_port}\n"
        + directory_section(slapd)
        + '[antispam]\nquarantine = ["spam"]\n'
        '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
        'spam = "discard"\n'
    ).start(wait_port=web_port)
    wait_until(lambda: port_open(serve.port), 30, "the SMTP listener")
    with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
        for subject, rcpt in (("for carol", "carol@example.test"), ("for bob", "bob@example.test")):
            raw = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
            client.sendmail("promo@shop.example", [rcpt], raw)
    base = f"https://127.0.0.1:{web_port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_context(
                ignore_https_errors=True, viewport={"width": 390, "height": 844}
            ).new_page()
            page.goto(f"{base}/login")
            page.fill("#name", "carol@example.test")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url(f"{base}/my/quarantine")
            rows = page.locator("#my-held .held-entry")
            assert rows.count() == 1 and "for carol" in rows.first.inner_text()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(SHOTS / "my-quarantine-390.png"), full_page=True)
            rows.first.locator(".my-release").click()
            page.wait_for_url(f"{base}/my/quarantine?done=release")
            assert page.locator("#notice").inner_text() == "The message was released to you."
            assert "Nothing is held for you." in page.locator("#my-held").inner_text()
            page.screenshot(path=str(SHOTS / "my-quarantine-released.png"), full_page=True)
        finally:
            browser.close()
    inbox = serve.home / "maildir" / "new"
    wait_until(lambda: inbox.is_dir() and any(inbox.iterdir()), 30, "the released message")
    [delivered] = [p.read_bytes() for p in inbox.iterdir()]
    assert b"Subject: for carol" in delivered
    assert serve.stop() == 0, serve.log.read_text()

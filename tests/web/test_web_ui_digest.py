"""The end user's quarantine digest (issue 22): one mail per recipient listing their held spam
with signed, expiring links; a link shows what it does and acts only when confirmed, for that
recipient alone; altered, expired or foreign links do nothing."""

from __future__ import annotations

import email
import re
import time
from email import policy
from pathlib import Path

import pytest

from mailwarden.errors import ConfigError
from mailwarden.web.digest import DigestSigner, send_digests
from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.web.conftest import GTUBE, Web


def _spam(web: Web, subject: str, recipients: list[str]) -> str:
    raw = make_message(subject=subject, body=GTUBE.decode() + "\r\n")
    envelope = Envelope(mail_from="spammer@spam.example", rcpt_to=recipients)
    web.loop.run_until_complete(web.gateway.process(raw, envelope, ingress="smtp"))
    _, spam = web.gateway.plugin_quarantines()["spam"]
    return next(e.id for e in spam.search(subject))


def _mailbox(web: Web) -> list[email.message.EmailMessage]:
    folder = web.home / "maildir" / "new"
    paths = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]


def _digest_links(web: Web, recipient: str) -> dict[str, list[str]]:
    [digest] = [m for m in _mailbox(web) if m["To"] == recipient and "digest" in m["Subject"]]
    body = digest.get_content()
    links: dict[str, list[str]] = {}
    for act, url in re.findall(r"^ +(Release|Delete) +(\S+?)\r?$", body, re.M):
        links.setdefault(act.lower(), []).append(url.removeprefix("https://mail.example"))
    return links


def test_digest_links_release_and_delete_per_recipient(web: Web) -> None:
    shared = _spam(web, "shared offer", ["bob@example.net", "carol@example.net"])
    _spam(web, "bob only", ["bob@example.net"])
    signer = web.state.digest
    sent = web.loop.run_until_complete(
        send_digests(
            web.gateway,
            signer,
            base_url="https://mail.example",
            sender="postmaster@example.net",
            since=time.time() - 86400,
        )
    )
    assert sorted(sent) == ["bob@example.net", "carol@example.net"]
    bob, carol = _digest_links(web, "bob@example.net"), _digest_links(web, "carol@example.net")
    assert len(bob["release"]) == 2 and len(carol["release"]) == 1
    anonymous = web.client()
    # Opening a link changes nothing (link scanners open them all).
    page = anonymous.get(carol["release"][0])
    assert page.status_code == 200 and "shared offer" in page.text and "digest-confirm" in page.text
    _, spam = web.gateway.plugin_quarantines()["spam"]
    assert len(spam.search("")) == 2
    # Confirmed: released to Carol alone; Bob's copy stays held for him.
    done = anonymous.post(carol["release"][0])
    assert done.status_code == 200 and "released to you" in done.text
    released = [m for m in _mailbox(web) if m["Subject"] == "shared offer"]
    assert len(released) == 1
    assert shared in [e.id for e in spam.search("")]
    # Carol's link does not act twice.
    assert anonymous.post(carol["release"][0]).status_code == 404
    assert len([m for m in _mailbox(web) if m["Subject"] == "shared offer"]) == 1
    # Bob deletes both of his.
    for url in bob["delete"]:
        assert anonymous.post(url).status_code == 200
    assert spam.search("") == []
    # A used link, an altered one, and one from another key do nothing.
    assert anonymous.post(bob["delete"][0]).status_code == 404
    token = bob["release"][0].rsplit("/", 1)[1]
    body, mac = token.split(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    assert anonymous.get(f"/digest/{forged}").status_code == 404
    assert anonymous.get("/digest/nonsense").status_code == 404
    acts = [r["act"] for r in web.state.audit.records()]
    assert acts.count("digest.release") == 1 and acts.count("digest.delete") == 2


def test_digest_links_expire_and_name_their_recipient(web: Web, tmp_path: Path) -> None:
    entry = _spam(web, "old offer", ["dave@example.net"])
    now = [time.time()]
    signer = DigestSigner(web.home / "web", clock=lambda: now[0])
    token = signer.sign("spam", entry, "dave@example.net", "release", days=1)
    assert not isinstance(signer.check(token), str)
    now[0] += 2 * 86400
    assert "expired" in str(signer.check(token))
    # A link naming someone the message was not sent to releases nothing.
    foreign = web.state.digest.sign("spam", entry, "eve@example.net", "release", days=1)
    answer = web.client().post(f"/digest/{foreign}")
    assert answer.status_code == 404 and _mailbox(web) == []
    assert (web.home / "web" / "digest-key").stat().st_mode & 0o777 == 0o600


def test_digests_go_out_once_per_period_with_what_is_new(tmp_path: Path) -> None:
    web = Web(
        tmp_path / "home",
        extra_config='digest_hours = 24\ndigest_url = "https://mail.example"\n'
        'digest_from = "quarantine@example.net"\n',
    )
    try:
        _spam(web, "monday spam", ["frank@example.net"])
        now = time.time()
        first = web.loop.run_until_complete(web.state.send_due_digests(now))
        assert first is not None and list(first) == ["frank@example.net"]
        # Not due again within the day, whichever worker asks.
        assert web.loop.run_until_complete(web.state.send_due_digests(now + 3600)) is None
        _spam(web, "tuesday spam", ["frank@example.net"])
        second = web.loop.run_until_complete(web.state.send_due_digests(now + 86400))
        assert second is not None
        digests = [m for m in _mailbox(web) if "digest" in m["Subject"]]
        assert [m["From"] for m in digests] == ["quarantine@example.net"] * 2
        # The second lists only what was held since the first.
        assert "tuesday spam" in digests[1].get_content()
        assert "monday spam" not in digests[1].get_content()
    finally:
        web.close()


def test_a_digest_without_its_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="digest_url"):
        Web(tmp_path / "home", extra_config="digest_hours = 24\n")

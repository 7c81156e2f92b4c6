"""DNSBL, RHSBL and URIBL lookups against a real rbldnsd on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailwarden.testing import expect_finding, no_finding, scan
from mailwarden_sdk import Envelope
from tests.services.rbldnsd import Rbldnsd, running_rbldnsd

pytestmark = pytest.mark.integration

ZONES = {
    "bl.test": ("ip4set", ":127.0.0.2:Listed $\n192.0.2.1\n198.51.100.0/24 :127.0.0.3:Net $\n"),
    "dbl.test": ("dnset", ":127.0.1.2:Domain listed $\nspammer.example\n"),
    "uri.test": ("dnset", ":127.0.0.6:URI listed $\nbad-links.example\n"),
}


@pytest.fixture(scope="module")
def rbldnsd() -> Iterator[Rbldnsd]:
    with running_rbldnsd(ZONES) as server:
        yield server


def _config(server: Rbldnsd) -> str:
    return f"""
[antispam]
authentication = false
dns_servers = ["127.0.0.1"]
dns_port = {server.port}
dns_timeout = 1.0

[[antispam.dns_lists]]
zone = "bl.test"
kind = "ip"
codes = {{ "127.0.0.2" = 3.0, "127.0.0.3" = 1.0 }}

[[antispam.dns_lists]]
zone = "dbl.test"
kind = "domain"
score = 2.5

[[antispam.dns_lists]]
zone = "uri.test"
kind = "uri"
bits = {{ "2" = 2.0, "4" = 1.5 }}
"""


MESSAGE = (
    b"From: Offers <deals@spammer.example>\r\nTo: bob@example.net\r\nSubject: deals\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@spammer.example>\r\n\r\n"
    b"See http://www.bad-links.example/offer and http://fine.example/\r\n"
)


def test_listed_ip_sender_domain_and_url_domain(rbldnsd: Rbldnsd) -> None:
    env = Envelope(mail_from="deals@spammer.example", client_address="192.0.2.1")
    decision = scan(MESSAGE, builtins=True, config=_config(rbldnsd), envelope=env)
    ip = expect_finding(decision, "DNSBL_LISTED")
    assert (ip.score, ip.details["answer"]) == (3.0, "127.0.0.2")
    domain = expect_finding(decision, "RHSBL_LISTED")
    assert (domain.score, domain.details["item"]) == (2.5, "spammer.example")
    uri = expect_finding(decision, "URIBL_LISTED")
    # 127.0.0.6 has bits 2 and 4; the URL's registered domain was asked, not www.
    assert (uri.score, uri.details["item"]) == (3.5, "bad-links.example")
    assert decision.verdict.spam_score >= 9.0


def test_return_code_map_and_unlisted(rbldnsd: Rbldnsd) -> None:
    env = Envelope(mail_from="a@example.org", client_address="198.51.100.9")
    clean = MESSAGE.replace(b"spammer.example", b"example.org").replace(b"bad-links", b"good")
    decision = scan(clean, builtins=True, config=_config(rbldnsd), envelope=env)
    assert expect_finding(decision, "DNSBL_LISTED").score == 1.0
    no_finding(decision, "RHSBL_LISTED")
    no_finding(decision, "URIBL_LISTED")
    env = Envelope(mail_from="a@example.org", client_address="203.0.113.5")
    no_finding(scan(clean, builtins=True, config=_config(rbldnsd), envelope=env), "DNSBL_LISTED")


def test_unreachable_list_is_reported_not_scored() -> None:
    config = """
[antispam]
authentication = false
dns_servers = ["127.0.0.1"]
dns_port = 9
dns_timeout = 0.3

[[antispam.dns_lists]]
zone = "bl.test"
"""
    env = Envelope(mail_from="a@example.org", client_address="192.0.2.1")
    decision = scan(MESSAGE, builtins=True, config=config, envelope=env)
    finding = expect_finding(decision, "DNSLIST_UNAVAILABLE")
    assert (finding.score, finding.details["zone"]) == (0.0, "bl.test")
    no_finding(decision, "DNSBL_LISTED")

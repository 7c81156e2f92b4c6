"""Reputation over DNS lists against a real rbldnsd on 127.0.0.1.

Zones in the conventions the plugin speaks: an RFC 5782 IPv4 list (``ip4set``, reversed
octets), a domain list (``dnset``), and hash lists (``generic``) whose names are lowercase hex
with a SHA-256 split into two 32-digit labels; a URL is listed by the SHA-256 of its normalised
form. The names below are built here from the RFC and the list conventions, not with the
plugin's own encoder, so a wrong encoding fails the test.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.testing import build_message, expect_action, expect_finding, no_finding, scan
from mailwarden_sdk import AntivirusStatus, Envelope
from tests.conftest import free_port
from tests.services.rbldnsd import Rbldnsd, running_rbldnsd

pytestmark = pytest.mark.integration

LISTED_FILE = b"MAILWARDEN-REPUTATION-LISTED-FILE\n"
LISTED_MD5_FILE = b"MAILWARDEN-REPUTATION-LISTED-BY-MD5\n"
LISTED_URL = "http://www.phish.test/login?next=1"
LISTED_IP = "45.67.89.10"
CONSENT = 'consent = true\nconsent_by = "Jane Admin"\nconsent_at = "2025-01-31T09:30:00Z"\n'


def _sha256_labels(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:32]}.{digest[32:]}"


def _zones() -> dict[str, tuple[str, str]]:
    file_name = _sha256_labels(LISTED_FILE)
    md5_name = hashlib.md5(LISTED_MD5_FILE).hexdigest()
    url_name = _sha256_labels(LISTED_URL.encode())
    return {
        "ip.rep.test": ("ip4set", f":127.0.0.2:Listed in ip.rep.test: $\n{LISTED_IP}\n"),
        "dom.rep.test": ("dnset", ":127.0.1.2:Domain listed\n.evil.test\n"),
        "hash.rep.test": (
            "generic",
            f'{file_name} 60 A 127.0.2.9\n{file_name} 60 TXT "malware;name=Lab.Test-File"\n'
            f'{md5_name} 60 A 127.0.2.9\n{md5_name} 60 TXT "malware;name=Lab.Md5-Only"\n',
        ),
        "url.rep.test": ("generic", f'{url_name} 60 A 127.0.1.4\n{url_name} 60 TXT "phish"\n'),
    }


@pytest.fixture(scope="module")
def rbldnsd() -> Iterator[Rbldnsd]:
    with running_rbldnsd(_zones()) as server:
        yield server


def _config(server: Rbldnsd, consent: bool = True) -> str:
    return (
        "[reputation]\n"
        + (CONSENT if consent else "")
        + f'dns_server = "127.0.0.1"\ndns_port = {server.port}\n'
        + 'dns_ip_zone = "ip.rep.test"\ndns_domain_zone = "dom.rep.test"\n'
        + 'dns_hash_zone = "hash.rep.test"\ndns_url_zone = "url.rep.test"\n'
        + 'dns_suspicious_codes = ["127.0.1.4"]\n'
    )


def _listed_message() -> bytes:
    return build_message(
        "invoice",
        f"Please log in at {LISTED_URL} and see http://cdn.evil.test/a.js today.\n",
        attachments=[("invoice.pdf", LISTED_FILE)],
    )


def _clean_message() -> bytes:
    return build_message(
        "minutes",
        "The minutes are at https://docs.example.org/minutes and nothing else.\n",
        attachments=[("minutes.pdf", b"nothing listed here\n")],
    )


def test_listed_hash_url_domain_and_ip_each_give_their_finding(
    rbldnsd: Rbldnsd, tmp_path: Path
) -> None:
    decision = scan(
        _listed_message(),
        builtins=True,
        config=_config(rbldnsd),
        envelope=Envelope(client_address=LISTED_IP, rcpt_to=["bob@example.net"]),
        home=tmp_path,
    )
    file_hit = expect_finding(decision, "REPUTATION_FILE", signature="Reputation.Lab.Test-File")
    assert file_hit.details["sha256"] == hashlib.sha256(LISTED_FILE).hexdigest()
    assert file_hit.details["object"] == "invoice.pdf"
    assert decision.verdict.antivirus is AntivirusStatus.INFECTED
    assert "Reputation.Lab.Test-File" in decision.verdict.virus_names
    # The URL list answers 127.0.1.4, configured as a "suspicious" code.
    url_hit = expect_finding(decision, "REPUTATION_URL", host="www.phish.test")
    assert url_hit.status == "suspicious"
    domain_hit = expect_finding(decision, "REPUTATION_DOMAIN", host="cdn.evil.test")
    assert domain_hit.status == "malicious"
    ip_hit = expect_finding(decision, "REPUTATION_IP", ip=LISTED_IP)
    assert ip_hit.details["list"] == f"Listed in ip.rep.test: {LISTED_IP}"
    assert decision.verdict.reputation == "malicious"
    assert decision.verdict.spam_score >= 10.0
    expect_action(decision, "reject")
    no_finding(decision, "REPUTATION_UNAVAILABLE")


def test_an_md5_listing_alone_is_enough(rbldnsd: Rbldnsd, tmp_path: Path) -> None:
    raw = build_message("x", "no links\n", attachments=[("a.bin", LISTED_MD5_FILE)])
    decision = scan(raw, builtins=True, config=_config(rbldnsd), home=tmp_path)
    hit = expect_finding(decision, "REPUTATION_FILE", signature="Reputation.Lab.Md5-Only")
    assert hit.details["md5"] == hashlib.md5(LISTED_MD5_FILE).hexdigest()


def test_unlisted_values_give_no_finding_and_queries_carry_no_url_text(
    rbldnsd: Rbldnsd, tmp_path: Path
) -> None:
    before = len(rbldnsd.queries())
    decision = scan(
        _clean_message(),
        builtins=True,
        config=_config(rbldnsd),
        envelope=Envelope(client_address="45.67.89.11", rcpt_to=["bob@example.net"]),
        home=tmp_path,
    )
    assert [f.code for f in decision.verdict.findings if f.detector == "reputation"] == []
    expect_action(decision, "deliver")
    asked = "\n".join(rbldnsd.queries()[before:])
    # sha256 + md5 of the attachment, the URL hash, its host, and the client IP.
    sha = hashlib.sha256(b"nothing listed here\n").hexdigest()
    assert f"{sha[:32]}.{sha[32:]}.hash.rep.test" in asked
    assert "docs.example.org.dom.rep.test" in asked
    assert "11.89.67.45.ip.rep.test" in asked
    assert "minutes" not in asked  # the URL travels only as its hash


def test_with_consent_off_no_packet_reaches_rbldnsd(rbldnsd: Rbldnsd, tmp_path: Path) -> None:
    before = len(rbldnsd.queries())
    decision = scan(
        _listed_message(),
        builtins=True,
        config=_config(rbldnsd, consent=False),
        envelope=Envelope(client_address=LISTED_IP),
        home=tmp_path,
    )
    assert [f for f in decision.verdict.findings if f.detector == "reputation"] == []
    assert rbldnsd.queries()[before:] == []


def test_a_dns_server_that_is_not_there_still_gives_a_verdict_in_time(tmp_path: Path) -> None:
    config = (
        "[detectors]\ntimeout = 5\n[reputation]\n" + CONSENT
        + f'dns_server = "127.0.0.1"\ndns_port = {free_port()}\ntimeout = 0.5\n'
        + 'dns_ip_zone = "ip.rep.test"\ndns_hash_zone = "hash.rep.test"\n'
    )  # fmt: skip
    began = time.monotonic()
    decision = scan(
        _listed_message(), builtins=True, config=config,
        envelope=Envelope(client_address=LISTED_IP), home=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    unavailable = expect_finding(decision, "REPUTATION_UNAVAILABLE")
    assert unavailable.details["kinds"] == "ip,md5,sha256"
    no_finding(decision, "DETECTOR_TIMEOUT")
    expect_action(decision, "deliver")  # the local engines read it; not a scan error
    assert elapsed < 2.0, f"took {elapsed:.2f} s"

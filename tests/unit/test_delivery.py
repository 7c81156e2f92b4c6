"""Delivery helpers: next-hop syntax, line endings, and the DSN a sender receives."""

from __future__ import annotations

import email
import email.policy

from mailwarden.delivery import build_dsn, parse_next_hop
from mailwarden.delivery.queue import crlf
from tests.conftest import make_message


def test_next_hop_forms() -> None:
    assert parse_next_hop("mx.example.net:2525") == ("mx.example.net", 2525)
    assert parse_next_hop("[127.0.0.1]:26") == ("127.0.0.1", 26)
    assert parse_next_hop("mx.example.net") == ("mx.example.net", 25)


def test_crlf_fixes_bare_newlines_only() -> None:
    assert crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"


def test_dsn_is_an_rfc3464_report_for_the_failed_recipients() -> None:
    original = make_message(subject="lost")
    data = build_dsn(
        hostname="mx.example.org",
        sender="alice@example.org",
        original=original,
        failures={"nobody@example.net": (550, "5.1.1 no such user")},
        remote="127.0.0.1:25",
        arrival=0.0,
    )
    dsn = email.message_from_bytes(data, policy=email.policy.default)
    assert dsn["To"].addresses[0].addr_spec == "alice@example.org"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn.get_content_type() == "multipart/report"
    text, status, headers = dsn.iter_parts()
    assert "nobody@example.net" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    report = status.as_string()
    assert "Reporting-MTA: dns; mx.example.org" in report
    assert "Status: 5.1.1" in report and "Diagnostic-Code: smtp; 550 5.1.1" in report
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: lost" in data and b"Just a clean message" not in data


def test_expired_dsn_says_4_4_7() -> None:
    data = build_dsn(
        hostname="mx.example.org",
        sender="alice@example.org",
        original=make_message(),
        failures={"bob@example.net": (451, "4.4.1 connection refused")},
        remote="127.0.0.1:25",
        arrival=0.0,
        expired=True,
    )
    assert b"Status: 4.4.7" in data and b"Action: failed" in data

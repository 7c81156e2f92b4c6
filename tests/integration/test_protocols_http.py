"""rspamd's HTTP scan API on `mailwarden serve`, driven by the real `rspamc`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from mailwarden.testing import build_message
from tests.integration.protocols_serve import (
    CLEAN,
    INFECTED,
    SPAM,
    Served,
    exchange,
    serve_protocols,
)
from tests.services import ensure_packages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ensure_packages("rspamd")
    with serve_protocols(tmp_path_factory.mktemp("http")) as server:
        yield server


def rspamc(served: Served, message: bytes, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        ["rspamc", "-h", f"127.0.0.1:{served.http}", "-j", *args, "symbols"],
        input=message,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def test_rspamc_gets_actions_scores_and_symbols(served: Served) -> None:
    clean = rspamc(served, CLEAN)
    assert (clean["action"], clean["score"], clean["required_score"]) == ("no action", 0.0, 5.0)
    spam = rspamc(served, SPAM)
    assert spam["action"] == "reject" and spam["score"] >= 100.0
    assert spam["symbols"]["GTUBE"]["name"] == "GTUBE"
    assert spam["symbols"]["GTUBE"]["score"] == spam["score"]
    assert spam["messages"]["smtp_message"].startswith("5.7.1")
    infected = rspamc(served, INFECTED)
    assert infected["action"] == "reject"
    assert "signature=Eicar-Test-Signature" in infected["symbols"]["AV_INFECTED"]["options"]
    assert "Eicar-Test-Signature" in infected["messages"]["smtp_message"]


def test_mail_checked_through_the_http_api_is_autolearned(served: Served) -> None:
    """As rspamd's checkv2: what its MTA delivers on the answer is real mail, learned."""
    message = build_message(subject="agenda for thursday", body="the agenda is attached\n")
    assert rspamc(served, message)["action"] == "no action"
    journal = served.journal_with(" autolearn learn ham ")
    assert " autolearn learn ham " in journal, journal


def test_rspamc_envelope_headers_reach_the_scan(served: Served) -> None:
    message = build_message(subject="envelope check", body="hello\n")
    rspamc(
        served,
        message,
        "--ip=192.0.2.7",
        "--from=alice@example.org",
        "--rcpt=bob@example.net",
        "--rcpt=carol@example.net",
        "--helo=mx.example.org",
        "--header=Queue-Id: 4ABC123",
        "--user=alice",
        "--pass-all",
    )
    events = served.cli("events", "--json", "--subject", "envelope check")
    assert events.returncode == 0, events
    (event,) = [json.loads(line) for line in events.stdout.splitlines()]
    assert event["ingress"] == "http_scan"
    assert event["client_address"] == "192.0.2.7"
    assert event["mail_from"] == "alice@example.org"
    assert event["rcpt_to"] == ["bob@example.net", "carol@example.net"]
    assert (event["helo"], event["queue_id"]) == ("mx.example.org", "4ABC123")


def test_ping_legacy_check_and_errors(served: Served) -> None:
    assert exchange(served.http, b"GET /ping HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\npong\r\n")
    request = f"POST /check HTTP/1.0\r\nContent-Length: {len(SPAM)}\r\n\r\n".encode() + SPAM
    head, _, body = exchange(served.http, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    legacy = json.loads(body)["default"]
    assert legacy["is_spam"] is True and legacy["GTUBE"]["name"] == "GTUBE"
    assert exchange(served.http, b"POST /checkv2 HTTP/1.1\r\nContent-Length: x\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    big = f"POST /checkv2 HTTP/1.1\r\nContent-Length: {30 * 1024 * 1024}\r\n\r\n".encode()
    assert exchange(served.http, big).startswith(b"HTTP/1.1 413 ")

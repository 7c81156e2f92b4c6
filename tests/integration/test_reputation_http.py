"""Reputation over HTTPS against ``mailwarden reputation serve`` started for real.

One service per module, loaded from a CSV and a JSON feed; each test counts the requests that
reached it (``/v1/server-stats``) to show what the gateway sent, and when it sent nothing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import parse_config
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import (
    GatewayRunner,
    build_message,
    expect_action,
    expect_finding,
    no_finding,
    scan,
)
from mailwarden_sdk import AntivirusStatus, Envelope
from tests.services.repservice import RepService, running_service

pytestmark = pytest.mark.integration

LISTED_FILE = b"MAILWARDEN-REPUTATION-LISTED-FILE\n"
LISTED_URL = "http://www.phish.test/login?next=1"
LISTED_IP = "45.67.89.10"
CONSENT = 'consent = true\nconsent_by = "Jane Admin"\nconsent_at = "2025-01-31T09:30:00Z"\n'


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepService]:
    base = tmp_path_factory.mktemp("repservice")
    csv_feed = base / "feed.csv"
    csv_feed.write_text(
        "kind,value,verdict,name\n"
        f"sha256,{hashlib.sha256(LISTED_FILE).hexdigest().upper()},malicious,Lab.Test-File\n"
        f"url,{LISTED_URL.replace('www.phish.test', 'WWW.Phish.Test')},malicious,Lab.Phish\n"
        f"ip,{LISTED_IP},malicious,Lab.Botnet\n"
    )
    json_feed = base / "feed.json"
    json_feed.write_text(
        json.dumps([{"kind": "domain", "value": "cdn.evil.test", "verdict": "suspicious"}])
    )
    with running_service(base / "data", csv_feed, json_feed) as server:
        yield server


def _config(service: RepService, *, consent: bool = True, extra: str = "") -> str:
    return (
        "[reputation]\n"
        + (CONSENT if consent else "")
        + f'http_url = "{service.url}"\nhttp_ca_file = "{service.ca_file}"\n'
        + extra
    )


def _listed_message() -> bytes:
    return build_message(
        "invoice",
        f"Please log in at {LISTED_URL} and load http://cdn.evil.test/a.js today.\n",
        attachments=[("invoice.pdf", LISTED_FILE)],
    )


def _clean_message(tag: str = "minutes") -> bytes:
    return build_message(
        tag,
        f"The {tag} are at https://docs.example.org/{tag} and nothing else.\n",
        attachments=[(f"{tag}.pdf", f"{tag}: nothing listed here\n".encode())],
    )


def _runner(config: str, home: Path) -> GatewayRunner:
    plugin_set = build_plugin_manager()
    cfg = parse_config(config, plugin_set.config_schemas())
    cfg.gateway.home = str(home)
    return GatewayRunner(Gateway(cfg, plugins=plugin_set)).start()


def _reputation(runner: GatewayRunner) -> Any:
    return runner.gateway.plugins.plugins["reputation"].obj


def _mailwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_listed_hash_url_and_ip_give_findings_in_one_batched_request(
    service: RepService, tmp_path: Path
) -> None:
    before = service.lookups_received()
    decision = scan(
        _listed_message(),
        builtins=True,
        config=_config(service),
        envelope=Envelope(client_address=LISTED_IP, rcpt_to=["bob@example.net"]),
        home=tmp_path,
    )
    expect_finding(decision, "REPUTATION_FILE", signature="Reputation.Lab.Test-File")
    assert decision.verdict.antivirus is AntivirusStatus.INFECTED
    expect_finding(decision, "REPUTATION_URL", host="www.phish.test", list="Lab.Phish")
    domain = expect_finding(decision, "REPUTATION_DOMAIN", host="cdn.evil.test")
    assert domain.status == "suspicious" and domain.score == 4.0
    expect_finding(decision, "REPUTATION_IP", ip=LISTED_IP, list="Lab.Botnet", source="http")
    assert decision.verdict.reputation == "malicious"
    expect_action(decision, "reject")
    # sha256 + md5, two URLs, two hosts and the IP went in a single POST.
    assert service.lookups_received() == before + 1


def test_unlisted_values_give_none_and_the_clean_answer_is_cached_for_negative_ttl(
    service: RepService, tmp_path: Path
) -> None:
    runner = _runner(_config(service, extra="negative_ttl = 1.0\n"), tmp_path)
    try:
        before = service.lookups_received()
        first = runner.scan(_clean_message(), Envelope(client_address="45.67.89.11"))
        assert [f for f in first.verdict.findings if f.detector == "reputation"] == []
        expect_action(first, "deliver")
        assert service.lookups_received() == before + 1
        runner.scan(_clean_message(), Envelope(client_address="45.67.89.11"))
        assert service.lookups_received() == before + 1  # answered by the cache
        time.sleep(1.1)
        runner.scan(_clean_message(), Envelope(client_address="45.67.89.11"))
        assert service.lookups_received() == before + 2  # the negative answers expired
    finally:
        runner.stop()


def test_with_consent_off_the_service_receives_nothing(service: RepService, tmp_path: Path) -> None:
    before = service.server_stats()
    runner = _runner(
        _config(service, consent=False, extra="statistics = true\nstatistics_interval = 0.1\n"),
        tmp_path,
    )
    try:
        decision = runner.scan(_listed_message(), Envelope(client_address=LISTED_IP))
        time.sleep(0.3)  # three statistics intervals
    finally:
        runner.stop()
    assert [f for f in decision.verdict.findings if f.detector == "reputation"] == []
    after = service.server_stats()
    assert after["by_path"].get("/v1/lookup") == before["by_path"].get("/v1/lookup")
    assert after["by_path"].get("/v1/statistics") == before["by_path"].get("/v1/statistics")


def test_statistics_are_sent_with_consent_and_withdrawal_stops_everything_at_once(
    service: RepService, tmp_path: Path
) -> None:
    config_file = tmp_path / "mailwarden.toml"
    config_file.write_text(
        _config(service, extra='statistics = true\nstatistics_interval = 3600\nnode = "mx1"\n')
    )
    runner = _runner(config_file.read_text(), tmp_path)
    plugin = _reputation(runner)
    try:
        runner.scan(_listed_message(), Envelope(client_address=LISTED_IP))
        pending = plugin.statistics.pending()
        assert pending == {"file:infected": 1, "url:malicious": 1, "domain:suspicious": 1,
                           "ip:malicious": 1}  # fmt: skip
        shown = _mailwarden("reputation", "stats", "--config", str(config_file), "--json")
        assert json.loads(shown.stdout) == pending
        received_before = service.server_stats()["statistics_received"].get("ip:malicious", 0)
        assert runner._call(plugin.deliver_statistics()) == 4
        stats = service.server_stats()["statistics_received"]
        assert stats.get("ip:malicious", 0) == received_before + 1
        assert plugin.statistics.pending() == {}

        # Counts from a second message wait for the next delivery; then consent is withdrawn.
        runner.scan(_listed_message(), Envelope(client_address=LISTED_IP))
        assert plugin.statistics.pending() != {}
        withdrawn = _mailwarden(
            "reputation", "consent", "--config", str(config_file), "--withdraw", "--by", "Jane"
        )
        assert withdrawn.returncode == 0, withdrawn.stderr
        assert "pending statistics deleted" in withdrawn.stdout
        assert plugin.statistics.pending() == {}

        seen = service.server_stats()["by_path"]
        decision = runner.scan(_listed_message(), Envelope(client_address="45.67.89.12"))
        assert runner._call(plugin.deliver_statistics()) == 0
        assert service.server_stats()["by_path"] == seen  # not a single request more
        # The cache still knows the earlier answers; nothing new was asked or counted.
        assert [f for f in decision.verdict.findings if f.detector == "reputation"] == []
        assert plugin.statistics.pending() == {}
        status = _mailwarden("reputation", "consent", "--config", str(config_file))
        assert "withdrawn by Jane at" in status.stdout
    finally:
        runner.stop()


def test_statistics_are_delivered_periodically_and_only_once(
    service: RepService, tmp_path: Path
) -> None:
    before = service.server_stats()["statistics_received"].get("file:infected", 0)
    runner = _runner(
        _config(service, extra="statistics = true\nstatistics_interval = 0.2\n"), tmp_path
    )
    try:
        runner.scan(_listed_message(), Envelope(client_address=LISTED_IP))
        deadline = time.monotonic() + 5
        while _reputation(runner).statistics.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _reputation(runner).statistics.pending() == {}
        time.sleep(0.5)  # more intervals pass with nothing pending
    finally:
        runner.stop()
    received = service.server_stats()["statistics_received"]
    assert received.get("file:infected", 0) == before + 1


def test_a_stopped_service_still_gives_a_verdict_within_budget_and_the_cache_answers(
    tmp_path: Path,
) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(f"kind,value,verdict,name\nip,{LISTED_IP},malicious,Lab.Botnet\n")
    home = tmp_path / "home"
    budget = "[detectors]\ntimeout = 5\n"
    with running_service(tmp_path / "data", feed) as live:
        config = budget + _config(live, extra="timeout = 1.0\n")
        warm = scan(
            _clean_message(), builtins=True, config=config,
            envelope=Envelope(client_address=LISTED_IP), home=home,
        )  # fmt: skip
        expect_finding(warm, "REPUTATION_IP", ip=LISTED_IP)
    # The service is stopped now; a new gateway on the same home (a restart) still has the
    # cached answer for the IP, and what it never asked about becomes a stated gap.
    began = time.monotonic()
    decision = scan(
        _clean_message("agenda"), builtins=True, config=config,
        envelope=Envelope(client_address=LISTED_IP), home=home,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    expect_finding(decision, "REPUTATION_IP", ip=LISTED_IP, source="http")
    unavailable = expect_finding(decision, "REPUTATION_UNAVAILABLE")
    assert unavailable.status == "unavailable"
    # The host docs.example.org was answered (clean) before the stop, so only the new
    # attachment's hashes and the new URL go unanswered.
    assert unavailable.details["kinds"] == "md5,sha256,url"
    assert unavailable.details["unanswered"] == "3"
    no_finding(decision, "DETECTOR_TIMEOUT")
    # A missing second opinion is not a scan error (that would tempfail all mail by default).
    assert "reputation" not in decision.verdict.errors
    expect_action(decision, "reject")  # the cached malicious IP still decides
    assert elapsed < 5.0, f"took {elapsed:.2f} s"


def test_a_hanging_service_costs_at_most_the_timeout_then_is_skipped(tmp_path: Path) -> None:
    import socket

    # A real listener that accepts connections and never answers: the slow-service case.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        config = (
            "[detectors]\ntimeout = 5\n[reputation]\n" + CONSENT
            + f'http_url = "https://127.0.0.1:{port}"\ntimeout = 0.5\nretry_after = 60\n'
        )  # fmt: skip
        runner = _runner(config, tmp_path)
        try:
            took = []
            for tag in ("first", "second"):
                began = time.monotonic()
                decision = runner.scan(_clean_message(tag), Envelope(client_address=LISTED_IP))
                took.append(time.monotonic() - began)
                expect_finding(decision, "REPUTATION_UNAVAILABLE")
                no_finding(decision, "DETECTOR_TIMEOUT")
                expect_action(decision, "deliver")  # the local engines read it; not a scan error
        finally:
            runner.stop()
    assert 0.5 <= took[0] < 2.0, f"first message took {took[0]:.2f} s"
    # The service failed, so the next message does not wait for it again.
    assert took[1] < 0.4, f"second message took {took[1]:.2f} s"


def test_a_token_protected_service_refuses_a_gateway_without_the_token(
    tmp_path: Path,
) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text(f"kind,value,verdict,name\nip,{LISTED_IP},malicious,Lab.Botnet\n")
    with running_service(tmp_path / "data", feed, token="s3cret") as live:
        envelope = Envelope(client_address=LISTED_IP)
        with_token = scan(
            _clean_message(), builtins=True, envelope=envelope, home=tmp_path / "a",
            config=_config(live, extra='http_token = "s3cret"\n'),
        )  # fmt: skip
        expect_finding(with_token, "REPUTATION_IP", ip=LISTED_IP)
        without = scan(
            _clean_message(), builtins=True, envelope=envelope, home=tmp_path / "b",
            config=_config(live),
        )  # fmt: skip
        no_finding(without, "REPUTATION_IP")
        expect_finding(without, "REPUTATION_UNAVAILABLE")


def test_data_inventory_lists_the_cache_and_statistics_with_their_entries(
    service: RepService, tmp_path: Path
) -> None:
    config_file = tmp_path / "mailwarden.toml"
    config_file.write_text(_config(service, extra="cache_max_entries = 5000\n"))
    scan(
        _listed_message(), builtins=True, config=config_file.read_text(),
        envelope=Envelope(client_address=LISTED_IP), home=tmp_path,
    )  # fmt: skip
    shown = _mailwarden("data-inventory", "--config", str(config_file), "--json")
    assert shown.returncode == 0, shown.stderr
    stores = {s["store"]["name"]: s for s in json.loads(shown.stdout)}
    cache = stores["reputation cache"]
    assert cache["owner"] == "reputation"
    assert cache["store"]["path"] == str(tmp_path / "reputation" / "cache")
    assert cache["store"]["max_entries"] == 5000
    assert cache["store"]["when_full"] == "evict_lru"
    assert cache["store"]["entries"] == 7  # sha256, md5, 2 URLs, 2 hosts, the IP
    assert cache["exists"] and cache["bytes"] > 0
    assert "SHA-256 and MD5 of each attachment" in cache["store"]["holds"]
    assert stores["reputation statistics"]["store"]["path"] == str(
        tmp_path / "reputation" / "statistics"
    )
    text = _mailwarden("data-inventory", "--config", str(config_file)).stdout
    assert "5,000 entries; when full: evict_lru" in text
    assert "7 entries" in text

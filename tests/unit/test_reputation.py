"""The reputation plugin without a network: what it would send, consent rules, feeds, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailwarden.cli import cli
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import build_message, scan
from mailwarden_reputation import ReputationPlugin
from mailwarden_reputation.backends import dns_name
from mailwarden_reputation.lookups import Lookup, lookups_for, normalise_url
from mailwarden_reputation.service import FeedError, read_feed
from mailwarden_reputation.state import PendingStatistics
from mailwarden_sdk import Envelope, ScanContext, parse

CONSENT = 'consent = true\nconsent_by = "Jane Admin"\nconsent_at = "2025-01-31T09:30:00Z"\n'


def _load(section: str) -> Any:
    schemas = build_plugin_manager().config_schemas()
    return parse_config(f"[reputation]\n{section}", schemas).plugins["reputation"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("consent = true\n", "consent needs consent_by and consent_at"),
        ('consent = true\nconsent_by = "Jane"\n', "consent needs consent_by and consent_at"),
        (
            'consent = true\nconsent_by = "Jane"\nconsent_at = "last tuesday"\n',
            "consent_at must be an ISO 8601",
        ),
        ('http_url = "http://rep.example"\n', "http_url must be https://"),
    ],
)
def test_consent_must_say_who_and_when_and_lookups_never_go_in_clear(
    section: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(section)


def test_recorded_consent_is_accepted() -> None:
    config = _load(CONSENT)
    assert config.consent_by == "Jane Admin"


def test_a_message_asks_about_hashes_urls_hosts_and_the_public_client_ip_only() -> None:
    raw = build_message(
        "x",
        "See HTTP://WWW.Example.ORG/Path?q=1, www.other.test/a and http://10.0.0.1/x.\n",
        attachments=[("a.bin", b"abc")],
    )
    items = lookups_for(ScanContext(Envelope(client_address="45.67.89.10"), parse(raw)))
    assert [(i.kind, i.value) for i in items] == [
        ("sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("md5", "900150983cd24fb0d6963f7d28e17f72"),
        ("url", "http://www.example.org/Path?q=1"),
        ("domain", "www.example.org"),
        ("url", "http://www.other.test/a"),
        ("domain", "www.other.test"),
        ("url", "http://10.0.0.1/x"),
        ("ip", "45.67.89.10"),
    ]
    private = lookups_for(ScanContext(Envelope(client_address="192.168.1.5"), parse(raw)))
    assert "ip" not in {i.kind for i in private}  # never tell a list about the LAN


def test_urls_are_capped_per_message() -> None:
    body = " ".join(f"http://host{i}.test/" for i in range(30))
    items = lookups_for(ScanContext(Envelope(), parse(build_message("x", body))), max_urls=5)
    assert sum(1 for i in items if i.kind == "url") == 5


def test_dns_names_follow_rfc_5782_and_the_hash_list_conventions() -> None:
    assert dns_name(Lookup(kind="ip", value="192.0.2.1"), "bl.test") == "1.2.0.192.bl.test"
    v6 = dns_name(Lookup(kind="ip", value="2001:db8::1"), "bl.test")
    assert v6 == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.test"
    sha = "ab" * 32
    assert dns_name(Lookup(kind="sha256", value=sha), "h.test") == f"{'ab' * 16}.{'ab' * 16}.h.test"
    assert dns_name(Lookup(kind="domain", value="evil.test"), "d.test.") == "evil.test.d.test"


def test_url_normalisation_matches_what_feeds_hold() -> None:
    assert normalise_url("HTTPS://Bücher.Example:8443") == (
        "https://xn--bcher-kva.example:8443/",
        "xn--bcher-kva.example",
    )
    assert normalise_url("ftp://x.test/") is None


def test_feeds_name_the_file_and_line_at_fault(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("kind,value,verdict,name\nip,45.067.89.10,malicious,x\n")
    with pytest.raises(FeedError, match=r"good.csv:2: bad IP address"):
        list(read_feed(good))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"kind": "sha256", "value": "abc"}]')
    with pytest.raises(FeedError, match=r"bad.json\[0\]: sha256 must be 64 hex digits"):
        list(read_feed(bad))


def test_load_command_reports_counts_and_errors(tmp_path: Path) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("kind,value\ndomain,Evil.Test.\nmd5," + "A" * 32 + "\n")
    runner = CliRunner()
    data = str(tmp_path / "svc")
    result = runner.invoke(cli, ["reputation", "load", "--data", data, str(feed)])
    assert result.exit_code == 0, result.output
    assert "loaded 2 entries" in result.output
    feed.write_text("kind,value\nurl,not a url\n")
    result = runner.invoke(cli, ["reputation", "load", "--data", data, str(feed)])
    assert result.exit_code != 0 and "feed.csv:2: not an http(s) URL" in result.output


def test_starting_without_consent_deletes_statistics_left_from_before(tmp_path: Path) -> None:
    stats = PendingStatistics(tmp_path / "reputation" / "statistics")
    stats.add({"ip:malicious": 3})
    stats.close()
    # No backend is configured, so nothing could be sent even if the check were wrong.
    scan(build_message(), plugins={"reputation": ReputationPlugin}, home=tmp_path)
    again = PendingStatistics(tmp_path / "reputation" / "statistics")
    try:
        assert again.pending() == {}
    finally:
        again.close()


def test_inventory_counts_pending_statistics_not_their_files(tmp_path: Path) -> None:
    def pending_entries() -> int:
        runner = CliRunner(env={"MAILWARDEN_HOME": str(tmp_path), "MAILWARDEN_CONFIG": ""})
        result = runner.invoke(cli, ["data-inventory", "--json"])
        assert result.exit_code == 0, result.output
        [state] = [
            s for s in json.loads(result.output) if s["store"]["name"] == "reputation statistics"
        ]
        assert state["files"] == 2  # LMDB's data.mdb and lock.mdb
        return int(state["records"])

    stats = PendingStatistics(tmp_path / "reputation" / "statistics")
    stats.close()
    # The files are there, nothing waits to be sent: the KSN entry said "2 entries".
    assert pending_entries() == 0
    stats = PendingStatistics(tmp_path / "reputation" / "statistics")
    stats.add({"ip:malicious": 3, "url:phishing": 1, "sha256:malicious": 2})
    stats.close()
    assert pending_entries() == 3

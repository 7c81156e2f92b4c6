"""Antispam DNS when the resolver is dead or slow: per-message budget and circuit breaker.

Real sockets on 127.0.0.1 only: the DNS test server (tests/services/dns_zone.py) answers from a
zone or, ``silent``, reads and drops every query like a firewalled resolver; what reached it
is counted there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, expect_finding, no_finding
from mailwarden_antispam.resolver import Resolver
from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.services.dns_zone import TIMEOUT, ZoneServer, running_zone, txt_rdata

RESOLVER_LOG = "mailwarden_antispam.resolver"
ENVELOPE = Envelope(
    mail_from="alice@example.org", rcpt_to=["bob@example.net"], client_address="192.0.2.1"
)
# SPF passes for 192.0.2.1 once the server answers; example.org has no DMARC record.
ZONE: dict[str, list[tuple[str, str] | str]] = {
    "example.org": [("TXT", txt_rdata("v=spf1 ip4:192.0.2.1 -all"))],
}


def _config(server: ZoneServer, extra: str = "", **keys: float) -> str:
    lines = [
        "[antispam]",
        "dns_servers = ['127.0.0.1']",
        f"dns_port = {server.port}",
        "bayes = false",
    ]
    lines += [f"{key} = {value!r}" for key, value in keys.items()]
    return "\n".join(lines) + "\n" + extra


def _dkim_signature(selector: str) -> str:
    # Well-formed enough for dkimpy to go and fetch the key, which is all these tests need.
    return (
        f"v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s={selector}; "
        "h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA=="
    )


def _signed(subject: str, selectors: list[str]) -> bytes:
    raw = make_message(subject=subject)
    head = "".join(f"DKIM-Signature: {_dkim_signature(s)}\r\n" for s in selectors)
    return head.encode() + raw


@pytest.fixture
def runner_for(tmp_path: Path) -> Iterator[Any]:
    """Start a gateway with a config text; stopped at the end of the test."""
    runners: list[GatewayRunner] = []

    def start(config: str) -> GatewayRunner:
        plugins = build_plugin_manager()
        cfg = parse_config(config, plugins.config_schemas())
        cfg.gateway.home = str(tmp_path / f"home{len(runners)}")
        runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()


def _auth_results(decision: Any) -> str:
    return str(dict(decision.action.add_headers)["Authentication-Results"])


def test_dead_resolver_opens_the_breaker_and_mail_keeps_flowing(
    runner_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RESOLVER_LOG)
    with running_zone(ZONE) as server:
        server.silent = True
        config = _config(
            server,
            "[[antispam.dns_lists]]\nzone = 'bl.test'\n",
            dns_timeout=0.2,
            # Room for the first message's three sequential timeouts on a busy machine.
            dns_budget=2.0,
            dns_breaker_cooloff=600.0,
        )
        runner = runner_for(config)
        decisions = [runner.scan(_signed(f"message {i}", ["sel"]), ENVELOPE) for i in range(20)]
        reached = len(server.queries)
    # Five timeouts in a row open the breaker (default dns_breaker_timeouts); at most the
    # lookups already in flight at that moment get through besides. Without it: 4 x 20.
    assert 5 <= reached <= 7, server.queries
    for decision in decisions:
        results = _auth_results(decision)
        for check in ("spf=temperror", "dkim=temperror", "dmarc=temperror"):
            assert check in results, results
        expect_finding(decision, "DKIM_ERROR")
        expect_finding(decision, "DNSLIST_UNAVAILABLE", zone="bl.test")
    # Each message from the third on was scanned with the breaker open: told, not scored.
    for decision in decisions[2:]:
        marker = expect_finding(decision, "DNS_UNAVAILABLE", reason="resolver_down")
        assert marker.score == 0.0
        assert "DNS_UNAVAILABLE" in dict(decision.action.add_headers)["X-Spam-Status"]
    no_finding(decisions[0], "DNS_UNAVAILABLE")
    warnings = [
        r for r in caplog.records if r.name == RESOLVER_LOG and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1 and "did not answer" in warnings[0].getMessage()


def test_one_message_stops_asking_when_its_budget_is_spent(runner_for: Any) -> None:
    # Ten signatures whose keys never come: dkimpy fetches them one after another, 10 x 0.2 s.
    selectors = [f"s{i}" for i in range(10)]
    zone: dict[str, list[tuple[str, str] | str]] = dict(ZONE)
    zone.update({f"{s}._domainkey.example.org": [TIMEOUT] for s in selectors})
    with running_zone(zone) as server:
        # The breaker is kept out of the way so the budget alone is at work.
        config = _config(server, dns_timeout=0.2, dns_budget=0.5, dns_breaker_timeouts=100)
        runner = runner_for(config)
        decision = runner.scan(_signed("many signatures", selectors), ENVELOPE)
        keys = [q for q in server.queries if "._domainkey." in q[0]]
    # 0.5 s holds two full 0.2 s lookups and part of a third; the other seven are never sent.
    assert 1 <= len(keys) <= 3, keys
    results = _auth_results(decision)
    assert results.count("dkim=temperror") == 10, results
    assert "dmarc=temperror" in results  # asked after DKIM, with nothing left
    marker = expect_finding(decision, "DNS_UNAVAILABLE", reason="budget")
    assert int(marker.details["skipped"]) >= 7


def test_breaker_closes_after_the_cooloff_when_the_resolver_answers_again(
    runner_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=RESOLVER_LOG)
    with running_zone(ZONE) as server:
        server.silent = True
        config = _config(
            server,
            dns_timeout=0.2,
            dns_budget=1.0,
            dns_breaker_timeouts=2,
            dns_breaker_cooloff=0.3,
        )
        runner = runner_for(config)
        down = runner.scan(make_message(subject="first"), ENVELOPE)
        assert "spf=temperror" in _auth_results(down)
        down = runner.scan(make_message(subject="second"), ENVELOPE)
        expect_finding(down, "DNS_UNAVAILABLE", reason="resolver_down")
        server.silent = False
        time.sleep(0.4)
        back = runner.scan(make_message(subject="third"), ENVELOPE)
    results = _auth_results(back)
    assert "spf=pass smtp.mailfrom=example.org" in results, results
    assert "dmarc=none" in results
    no_finding(back, "DNS_UNAVAILABLE")
    levels = [r.levelno for r in caplog.records if r.name == RESOLVER_LOG]
    assert levels == [logging.WARNING, logging.INFO], caplog.records


def test_negative_answers_count_as_answers_for_the_breaker() -> None:
    # NXDOMAIN between timeouts shows the server is up: only an unbroken run opens it.
    zone: dict[str, list[tuple[str, str] | str]] = {f"t{i}.test": [TIMEOUT] for i in range(9)}
    with running_zone(zone) as server:

        async def go() -> list[str]:
            resolver = Resolver(["127.0.0.1"], port=server.port, timeout=0.1, breaker_timeouts=5)
            statuses = []
            for name in ("t0", "t1", "t2", "t3", "gone", "t4", "t5", "t6", "t7"):
                statuses.append((await resolver.query(f"{name}.test", "A")).status)
            statuses.append((await resolver.query("t8.test", "A")).status)
            refused = await resolver.query("other.test", "A")
            assert refused.skipped == "resolver_down" and "down" in refused.detail
            return statuses

        statuses = asyncio.run(go())
        assert statuses == ["timeout"] * 4 + ["nxdomain"] + ["timeout"] * 5
        # Everything up to the fifth timeout in a row was sent; the query after it was not.
        assert [q[0] for q in server.queries][-1] == "t8.test"
        assert len(server.queries) == 10


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ("dns_timeout = 2.0\ndns_budget = 1.0", "dns_budget"),
        ("dns_budget = 0", "dns_budget"),
        ("dns_budget = -5.0", "dns_budget"),
        ("dns_breaker_timeouts = 0", "dns_breaker_timeouts"),
        ("dns_breaker_cooloff = 0.0", "dns_breaker_cooloff"),
        ("dns_timeout = 0.0", "dns_timeout"),
    ],
)
def test_bad_dns_settings_are_refused_naming_the_key(keys: str, named: str) -> None:
    schemas = build_plugin_manager().config_schemas()
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[antispam]\n{keys}\n", schemas)
    assert named in str(caught.value)

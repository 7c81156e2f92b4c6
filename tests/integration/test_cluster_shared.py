"""What plugins share through the cluster's Redis (mailwarden_sdk.shared_state): Bayes counts
and the index of learned messages, fuzzy sketches of reported spam, the reputation cache's
second level. Two real gateways (the antispam plugin, each its own home) share Debian's
redis-server; Redis is killed by PID to test an outage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import parse_config
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, _gateway
from mailwarden_antispam import AntispamPlugin
from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.integration.test_greylist_ratelimit import metric, redis_section
from tests.integration.test_greylist_ratelimit import redis as redis  # the fixture
from tests.integration.test_reputation_http import LISTED_IP, _config
from tests.integration.test_reputation_http import service as service  # the module's service
from tests.services.redis import Redis
from tests.services.repservice import RepService

pytestmark = pytest.mark.integration

ANTISPAM = """
[antispam]
authentication = false
bayes_min_learned = 1
autolearn = false
"""
SPAM_TEXT = (
    "Congratulations winner you have been selected for an exclusive casino bonus of five "
    "thousand dollars claim your prize now by sending your bank details to our agent today "
    "this offer expires at midnight so act fast and do not miss the jackpot of the year"
)
HAM_TEXT = (
    "Hi Bob the quarterly planning meeting moves to Thursday afternoon in the small room "
    "please bring the draft budget and the notes from the supplier review so we can agree "
    "on the schedule for the next release before the holidays thanks Alice"
)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[[str], GatewayRunner]]:
    runners: list[GatewayRunner] = []

    def make(config: str) -> GatewayRunner:
        home = tmp_path / f"node{len(runners)}"
        gateway = _gateway({"antispam": AntispamPlugin}, False, config, home)
        runner = GatewayRunner(gateway).start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop()


def antispam(runner: GatewayRunner) -> Any:
    return runner.gateway.plugins.plugins["antispam"].obj


def learn(runner: GatewayRunner, raw: bytes, label: str) -> str | None:
    """A lesson the way spamd TELL and the quarantine give it (mailwarden_learn)."""
    result: str | None = runner._call(antispam(runner).mailwarden_learn(raw, label, "test"))
    return result


def codes(runner: GatewayRunner, raw: bytes) -> dict[str, dict[str, str]]:
    decision = runner.scan(raw)
    return {f.code: dict(f.details) for f in decision.verdict.findings}


def bayes_band(found: dict[str, dict[str, str]]) -> str | None:
    return next((code for code in found if code.startswith("BAYES_")), None)


def test_a_ham_lesson_on_one_node_moves_the_bayes_verdict_of_another(
    redis: Redis, node: Callable[[str], GatewayRunner]
) -> None:
    config = ANTISPAM + redis_section(redis)
    a, b = node(config), node(config)
    assert learn(a, make_message("win big", SPAM_TEXT), "spam") == "learned as spam"
    assert learn(a, make_message("lunch", "see you at noon in the canteen friday"), "ham")
    message = make_message("planning", HAM_TEXT)
    before = bayes_band(codes(b, message))
    # B learned nothing itself, yet it has a verdict: the counts are the cluster's.
    assert antispam(b).bayes.counts() == (0, 0)
    assert before is not None
    assert learn(a, message, "ham") == "learned as ham"
    after = bayes_band(codes(b, message))
    assert after in ("BAYES_00", "BAYES_05"), (before, after)
    assert after != before
    # The index of learned messages is shared too: B knows the message was learned already.
    assert learn(b, message, "ham") == "already learned as ham"
    # Moving it to spam on B undoes A's ham lesson everywhere.
    assert learn(b, message, "spam") == "learned as spam"
    assert bayes_band(codes(a, message)) in ("BAYES_95", "BAYES_99", "BAYES_999")


def test_spam_reported_on_one_node_is_found_by_its_fuzzy_sketch_on_another(
    redis: Redis, node: Callable[[str], GatewayRunner]
) -> None:
    config = ANTISPAM + redis_section(redis)
    a, b = node(config), node(config)
    learn(a, make_message("win big", SPAM_TEXT), "spam")
    # The same campaign with a few words changed, another subject and sender.
    variant = SPAM_TEXT.replace("five thousand", "seven thousand").replace("today", "tonight")
    found = codes(b, make_message("you won", variant, sender="promo@other.test"))
    assert "FUZZY_SPAM" in found, found
    assert float(found["FUZZY_SPAM"]["similarity"]) >= 0.5
    assert found["FUZZY_SPAM"]["source"] == "redis"
    assert "FUZZY_SPAM" not in codes(b, make_message("planning", HAM_TEXT))
    # Autolearn is not a report: only what a person said is spam is hashed.
    learn_auto = antispam(a).bayes.learn
    a._call(_in_thread(learn_auto, make_message("other", HAM_TEXT * 2), "spam", "autolearn"))
    assert "FUZZY_SPAM" not in codes(b, make_message("again", HAM_TEXT * 2))


async def _in_thread(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(function, *args)


def test_with_redis_killed_bayes_and_fuzzy_go_on_with_the_local_store(
    redis: Redis, node: Callable[[str], GatewayRunner]
) -> None:
    config = ANTISPAM + redis_section(redis, "breaker_failures = 1\nbreaker_reset = 60\n")
    a = node(config)
    spam = make_message("win big", SPAM_TEXT)
    learn(a, spam, "spam")
    learn(a, make_message("planning", HAM_TEXT), "ham")
    redis.kill()
    # Scanning and learning go on: the answers come from A's own LMDB stores.
    found = codes(a, make_message("you won", SPAM_TEXT))
    assert found["FUZZY_SPAM"]["source"] == "local", found
    assert bayes_band(found) in ("BAYES_95", "BAYES_99", "BAYES_999"), found
    assert learn(a, make_message("another", HAM_TEXT + " bye"), "ham") == "learned as ham"
    assert antispam(a).bayes.counts() == (1, 2)
    assert metric(a, "mailwarden_shared_state_redis") == 0
    assert metric(a, "mailwarden_shared_state_fallbacks_total") >= 2


def test_a_reputation_answer_one_node_got_saves_the_other_node_the_lookup(
    redis: Redis, service: RepService, tmp_path: Path
) -> None:
    runners = []
    for name in ("a", "b"):
        plugin_set = build_plugin_manager()
        cfg = parse_config(_config(service) + redis_section(redis), plugin_set.config_schemas())
        cfg.gateway.home = str(tmp_path / name)
        runners.append(GatewayRunner(Gateway(cfg, plugins=plugin_set)).start())
    a, b = runners
    try:
        envelope = Envelope(client_address=LISTED_IP, rcpt_to=["bob@example.net"])
        message = make_message("hello", "nothing listed in here at all")
        before = service.lookups_received()
        assert "REPUTATION_IP" in {f.code for f in a.scan(message, envelope).verdict.findings}
        assert service.lookups_received() == before + 1
        # B's own cache is empty; Redis has A's answer, so B asks no backend.
        assert "REPUTATION_IP" in {f.code for f in b.scan(message, envelope).verdict.findings}
        assert service.lookups_received() == before + 1
        # ... and keeps it in its own cache (the first level) from then on.
        assert len(b.gateway.plugins.plugins["reputation"].obj.cache) >= 1
    finally:
        for runner in runners:
            runner.stop()


def test_antispam_train_on_the_command_line_teaches_every_node_through_redis(
    redis: Redis, node: Callable[[str], GatewayRunner], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from mailwarden.cli import cli

    config = ANTISPAM + redis_section(redis)
    spam, ham = tmp_path / "spam", tmp_path / "ham"
    spam.mkdir()
    ham.mkdir()
    (spam / "1.eml").write_bytes(make_message("win big", SPAM_TEXT))
    (ham / "1.eml").write_bytes(make_message("lunch", "see you at noon in the canteen friday"))
    message = make_message("planning", HAM_TEXT)
    (ham / "2.eml").write_bytes(message)
    cli_home = tmp_path / "cli-node"
    cli_home.mkdir()
    (cli_home / "mailwarden.toml").write_text(config)
    env = {"MAILWARDEN_HOME": str(cli_home), "MAILWARDEN_CONFIG": ""}
    runner = CliRunner()
    result = runner.invoke(
        cli, ["antispam", "train", "--spam", str(spam), "--ham", str(ham)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "spam: learned 1 of 1" in result.output and "ham: learned 2 of 2" in result.output
    # Another node, which learned nothing itself, classifies with the command's lessons.
    b = node(config)
    assert antispam(b).bayes.counts() == (0, 0)
    assert bayes_band(codes(b, message)) in ("BAYES_00", "BAYES_05")
    # The shared index too: the node knows the message was learned, and untrain on the
    # command line takes the lesson back from the cluster.
    assert learn(b, message, "ham") == "already learned as ham"
    result = runner.invoke(cli, ["antispam", "untrain", str(ham / "2.eml")], env=env)
    assert "unlearned 1 of 1" in result.output, result.output
    assert learn(b, message, "ham") == "learned as ham"
    # Redis gone: the command still teaches this node (and says the cluster missed it).
    redis.kill()
    more = tmp_path / "more"
    more.mkdir()
    (more / "1.eml").write_bytes(make_message("jackpot", SPAM_TEXT + " tonight"))
    result = runner.invoke(cli, ["antispam", "train", "--spam", str(more)], env=env)
    assert result.exit_code == 0, result.output
    assert "spam: learned 1 of 1" in result.output and "total: 2 spam, 1 ham" in result.output

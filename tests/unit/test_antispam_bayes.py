"""Bayes learning safely: autolearn with both-sides checks, a token cap with expiry, and the
quarantine teaching it ("release as ham", "delete as spam"); every lesson journalled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import mailwarden_antispam as antispam_module
from mailwarden.cli import cli
from mailwarden.testing import _gateway, scan
from mailwarden_antispam import AntispamPlugin
from mailwarden_antispam import bayes as bayes_module
from mailwarden_antispam.bayes import Bayes
from mailwarden_antispam.quarantine import SpamQuarantine
from mailwarden_sdk import Envelope, ParsedMessage, ScanContext, parse
from tests.conftest import make_message

RULES = """
header  T_HEADER_SPAMMY  Subject =~ /headerword/
score   T_HEADER_SPAMMY  {header}
body    T_BODY_SPAMMY    /bodyword/
score   T_BODY_SPAMMY    {body}
"""


def _config(tmp_path: Path, header: float, body: float) -> str:
    rules = tmp_path / "t.cf"
    rules.write_text(RULES.format(header=header, body=body))
    # Only these two rules score: the totals below are exactly theirs.
    return f"[antispam]\nbuiltin_rules = false\nrule_files = ['{rules}']\nauthentication = false\n"


def _journal(home: Path) -> list[tuple[str, str, str]]:
    store = Bayes(home / "antispam" / "bayes")
    try:
        return [(r.who, r.action, r.label) for r in store.journal()]
    finally:
        store.close()


def test_autolearn_is_on_and_learns_spam_only_when_header_and_body_both_say_so(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    spammy = make_message(subject="headerword offer", body="bodyword inside\n")
    # 20 points, all from one header rule: a forged or odd header alone teaches nothing.
    scan(spammy, builtins=True, config=_config(tmp_path, 20.0, 0.5), home=home, live=True)
    assert _journal(home) == []
    # 20 points from the header and 3 from the body: both sides agree, learned as spam.
    scan(spammy, builtins=True, config=_config(tmp_path, 17.0, 3.0), home=home, live=True)
    assert _journal(home) == [("autolearn", "learn", "spam")]


def test_an_admins_look_at_a_message_teaches_bayes_nothing(tmp_path: Path) -> None:
    # `mailwarden rules test` and `mailwarden scan` of a sample are dry runs: autolearn would
    # otherwise learn the admin's test messages (often the same one many times) as mail.
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "mailwarden.toml"
    config.write_text(f'[gateway]\nhome = "{home}"\n' + _config(tmp_path, 17.0, 3.0))
    spammy = tmp_path / "spammy.eml"
    spammy.write_bytes(make_message(subject="headerword offer", body="bodyword inside\n"))
    for command in (["rules", "test", "--to", "bob@example.net"], ["scan"]):
        result = CliRunner().invoke(cli, [*command, "--config", str(config), str(spammy)])
        assert result.exit_code in (0, 1), result.output  # `scan` exits 1 on a detection
    scan(spammy.read_bytes(), builtins=True, config=_config(tmp_path, 17.0, 3.0), home=home)
    assert _journal(home) == []
    # The same message as mail (an ingress or the spamd service) is learned.
    scan(
        spammy.read_bytes(),
        builtins=True,
        config=_config(tmp_path, 17.0, 3.0),
        home=home,
        live=True,
    )
    assert _journal(home) == [("autolearn", "learn", "spam")]


def test_autolearn_learns_clean_mail_as_ham_but_not_mail_in_between(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = _config(tmp_path, 4.0, 4.0)
    # 8 points: neither sure spam (12) nor sure ham (0.1).
    scan(
        make_message(subject="headerword", body="bodyword\n"),
        builtins=True,
        config=config,
        home=home,
        live=True,
    )
    assert _journal(home) == []
    scan(
        make_message(subject="lunch", body="see you at noon\n"),
        builtins=True,
        config=config,
        home=home,
        live=True,
    )
    assert _journal(home) == [("autolearn", "learn", "ham")]


def test_mail_the_antispam_scan_skipped_teaches_bayes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # An always-allow rule (a digest link writes one) runs every detector but antispam for that
    # sender: their mail was never judged, so it must not be learned as ham. A spammer allowed
    # by one user would otherwise teach Bayes that their spam is ham for everyone.
    config = _config(tmp_path, 4.0, 4.0) + (
        '[[rules]]\nname = "always-allow"\nsenders = ["friend@example.org"]\n'
        'detectors = ["*", "-antispam"]\n'
        '[[rules]]\nname = "default"\n'
    )
    scan(
        make_message(sender="friend@example.org", subject="lunch", body="see you at noon\n"),
        envelope=Envelope(mail_from="friend@example.org", rcpt_to=["bob@example.net"]),
        builtins=True,
        config=config,
        home=home,
        live=True,
    )
    assert _journal(home) == []
    # The same message from anyone else is scanned, and sure ham is learned as before.
    scan(
        make_message(subject="lunch", body="see you at noon\n"),
        envelope=Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"]),
        builtins=True,
        config=config,
        home=home,
        live=True,
    )
    assert _journal(home) == [("autolearn", "learn", "ham")]


def _teach(store: Bayes, n: int) -> None:
    for i in range(n):
        spam = make_message(subject=f"s{i}", body=f"headerword bodyword casino pills x{i}\n")
        ham = make_message(subject=f"h{i}", body=f"agenda minutes budget review y{i}\n")
        store.learn(spam, "spam", "test")
        store.learn(ham, "ham", "test")


def test_autolearn_leaves_mail_bayes_firmly_places_on_the_other_side(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Bayes(home / "antispam" / "bayes")
    _teach(store, 12)
    store.close()
    before = len(_journal(home))
    # Scored as sure ham by the rules (no rule hits, 0 points) but Bayes says spam: the two
    # disagree, so neither teaches the other.
    message = make_message(subject="casino", body="casino pills casino pills\n")
    decision = scan(
        message, builtins=True, config=_config(tmp_path, 17.0, 3.0), home=home, live=True
    )
    assert decision.verdict.spam_score == 0  # Bayes bands are unscored in this config
    assert len(_journal(home)) == before
    # The same kind of message Bayes does not know about is learned as ham.
    scan(
        make_message(subject="lunch", body="noon\n"),
        builtins=True,
        config=_config(tmp_path, 17.0, 3.0),
        home=home,
        live=True,
    )
    assert len(_journal(home)) == before + 1


def test_token_cap_expires_the_tokens_learned_longest_ago(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Bayes(tmp_path / "bayes", max_tokens=100)
    day = 86400
    old_words = " ".join(f"old{i:03d}word" for i in range(70))
    new_words = " ".join(f"new{i:03d}word" for i in range(40))
    monkeypatch.setattr(bayes_module.time, "time", lambda: 100 * day)
    store.learn(make_message(subject="a", body=old_words + "\n"), "spam", "test")
    monkeypatch.setattr(bayes_module.time, "time", lambda: 200 * day)
    store.learn(make_message(subject="b", body=new_words + "\n"), "ham", "test")
    try:
        # Over the cap: the oldest go until 3/4 of it (75) remain.
        assert store.token_count() == 75
        with store.env.begin(db=store._tokens) as txn:
            kept = {bytes(k).decode() for k, _v in txn.cursor()}
        assert {f"new{i:03d}word" for i in range(40)} <= kept
        assert len([k for k in kept if k.startswith("old")]) < 70
        actions = [(r.who, r.action) for r in store.journal()]
        assert ("expiry", "expire") in actions[-2:]  # journalled with the lesson that caused it
        assert store.counts() == (1, 1)  # message counts stay
    finally:
        store.close()


def test_quarantine_delete_as_spam_teaches_bayes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    q = SpamQuarantine(home)
    raw = make_message(subject="held", body="casino pills\n")
    entry = q.put(raw, "a@example.org", ["b@example.net"], "held", 12.0, "spam")
    q.close()
    assert entry is not None
    env = {"MAILWARDEN_HOME": str(home)}
    result = CliRunner().invoke(
        cli, ["antispam", "quarantine", "delete", entry, "--learn-spam"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "learned as spam" in result.output
    who = _journal(home)
    assert len(who) == 1 and who[0][1:] == ("learn", "spam")
    q = SpamQuarantine(home)
    try:
        assert q.search() == []
    finally:
        q.close()


def _plugin_gateway(config: str, home: Path) -> tuple[Any, AntispamPlugin]:
    plugin = AntispamPlugin()
    return _gateway({"antispam": plugin}, False, config, home), plugin


def test_autolearn_lessons_of_concurrent_scans_are_all_committed_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = _config(tmp_path, 4.0, 4.0)
    gateway, plugin = _plugin_gateway(config, home)
    # 60 distinct clean messages, each scanned twice, all at once: 60 lessons, none counted
    # twice however the scans' verdict hooks interleave with the writer's batches.
    messages = [
        make_message(subject=f"lunch {i}", body=f"see you at noon, table {i}\n") for i in range(60)
    ]

    async def run() -> tuple[int, int]:
        async with gateway:
            await asyncio.gather(*(gateway.scan(m, live=True) for m in messages + messages))
            bayes = plugin.bayes
            assert bayes is not None
            # Committed within the batch window, without a flush or a close.
            deadline = time.monotonic() + 10
            while bayes.counts() != (0, 60) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return bayes.counts()

    assert asyncio.run(run()) == (0, 60)
    assert _journal(home) == [("autolearn", "learn", "ham")] * 60
    store = Bayes(home / "antispam" / "bayes")
    try:
        assert store.counts() == (0, 60)
        assert {store.learned_as(m) for m in messages} == {"ham"}
    finally:
        store.close()


def test_queued_lessons_are_committed_at_close_and_before_an_explicit_lesson(
    tmp_path: Path,
) -> None:
    store = Bayes(tmp_path / "bayes")
    raws = [make_message(subject=f"m{i}", body=f"agenda item {i}\n") for i in range(300)]
    for raw in raws:
        store.learn_later(raw, "ham", "autolearn", bayes_module.tokens(parse(raw)), None)
    # A person's lesson on a queued message comes after the queued one: it moves it.
    assert store.learn(raws[0], "spam", "web:admin") is True
    assert store.counts() == (1, 299)
    for raw in raws[:5]:
        store.learn_later(raw, "spam", "autolearn", bayes_module.tokens(parse(raw)), None)
    store.close()
    store = Bayes(tmp_path / "bayes")
    try:
        assert store.counts() == (5, 295)
        actions = [(r.who, r.label) for r in store.journal()]
        assert actions.count(("autolearn", "ham")) == 300
        assert actions.count(("web:admin", "spam")) == 1
        assert actions.count(("autolearn", "spam")) == 4  # raws[0] was spam already
    finally:
        store.close()


def test_an_autolearned_message_is_tokenised_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    store = Bayes(home / "antispam" / "bayes")
    _teach(store, 12)  # enough of each class that the scan computes a probability
    store.close()
    calls: list[int] = []
    tokens = bayes_module.tokens

    def counted(message: ParsedMessage, *given: Any) -> set[str]:
        calls.append(1)
        return tokens(message, *given)

    monkeypatch.setattr(bayes_module, "tokens", counted)
    # Where the scan's own call goes (the old plugin tokenised inside Bayes alone).
    monkeypatch.setattr(antispam_module, "tokens", counted, raising=False)
    raw = make_message(subject="lunch", body="noon at the usual place\n")
    scan(raw, builtins=True, config=_config(tmp_path, 17.0, 3.0), home=home, live=True)
    # Once for the probability, reused by the lesson (the old code tokenised it again).
    assert len(calls) == 1
    store = Bayes(home / "antispam" / "bayes")
    try:
        assert store.learned_as(raw) == "ham"
        assert store.counts() == (12, 13)
    finally:
        store.close()


_CAMPAIGN = (
    "Dear friend, you have been selected to receive five thousand dollars from our annual "
    "customer appreciation fund. To claim your prize send your full name, home address and "
    "bank account number to the claims office today. This offer expires at midnight and "
    "cannot be extended, so reply now to secure your payment before the deadline passes.\n"
)


def test_spam_a_person_reported_is_found_again_by_its_fuzzy_sketch_on_this_node(
    tmp_path: Path,
) -> None:
    # One gateway, no cluster: the scan skips the sketch while nothing was reported, so the
    # first report must make the very next scan of the same process compare sketches.
    config = "[antispam]\nauthentication = false\n"  # the built-in rules score FUZZY_SPAM
    gateway, plugin = _plugin_gateway(config, tmp_path / "home")
    variant = _CAMPAIGN.replace("five thousand", "seven thousand").replace("today", "tonight")

    async def run() -> tuple[set[str], dict[str, str], set[str]]:
        async with gateway:
            before = await gateway.scan(make_message(subject="you won", body=variant))
            await plugin.mailwarden_learn(
                make_message(subject="win big", body=_CAMPAIGN), "spam", "web:admin"
            )
            after = await gateway.scan(make_message(subject="you won", body=variant))
            other = await gateway.scan(make_message(subject="lunch", body="noon at the place\n"))
            found = {f.code: f.details for f in after.verdict.findings}
            return (
                {f.code for f in before.verdict.findings},
                found.get("FUZZY_SPAM", {}),
                {f.code for f in other.verdict.findings},
            )

    before, fuzzy, other = asyncio.run(run())
    assert "FUZZY_SPAM" not in before
    assert fuzzy.get("source") == "local" and float(fuzzy["similarity"]) >= 0.5, fuzzy
    assert "FUZZY_SPAM" not in other


def test_a_full_autolearn_queue_sends_the_verdict_hook_to_a_worker(tmp_path: Path) -> None:
    """While the Bayes writer cannot commit (another writer holds the store), autolearn's
    queue fills; the verdict hook, which would then wait for room, is no longer run on the
    event loop's thread, and no queued lesson is lost once the store is free."""
    store = Bayes(tmp_path / "bayes")
    raw = make_message()
    queued = 0
    held = store.env.begin(write=True)
    try:
        while store.has_room():
            store.learn_later(raw + b"%d" % queued, "ham", "autolearn", {"word"}, None)
            queued += 1
            assert queued <= bayes_module._QUEUE_MAX + bayes_module.BATCH_LESSONS
        ctx = _live_context(raw, store)
        assert not antispam_module._verdict_runs_inline(ctx)
    finally:
        held.abort()
    store.flush()
    assert store.counts() == (0, queued)
    assert store.has_room() and antispam_module._verdict_runs_inline(_live_context(raw, store))
    store.close()


def _live_context(raw: bytes, store: Bayes) -> Any:
    ctx = ScanContext(Envelope(), parse(raw), live=True)
    ctx.stash[antispam_module._SCANNED] = True
    ctx.stash[antispam_module._LEARNER] = store
    return ctx

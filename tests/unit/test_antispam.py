"""The antispam plugin as a user meets it: GTUBE, phishing, rules, quarantine, Bayes CLI."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from mailwarden import Gateway
from mailwarden.cli import cli
from mailwarden.config import parse_config
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, expect_finding, no_finding, scan
from mailwarden_antispam import BUILTIN_RULES, AntispamPlugin
from mailwarden_antispam.quarantine import SpamQuarantine
from mailwarden_antispam.rules import RuleTargets, load_rules
from mailwarden_sdk import Envelope, SpamStatus
from tests.conftest import free_port, make_message, need
from tests.services import ensure_packages
from tests.services.dns_zone import ZoneServer, running_zone


@pytest.fixture(scope="module")
def empty_dns() -> Iterator[ZoneServer]:
    """A DNS server that knows no names: authentication runs, answers NXDOMAIN, fast."""
    with running_zone({}) as server:
        yield server


def _dns(dns: ZoneServer) -> str:
    return f"dns_servers = ['127.0.0.1']\ndns_port = {dns.port}\ndns_timeout = 0.5\n"


def _config(dns: ZoneServer | None = None, extra: str = "") -> str:
    return "[antispam]\n" + (_dns(dns) if dns is not None else "") + extra


def _html_message(html: str, subject: str = "Your account") -> bytes:
    return (
        "From: Service <service@example.org>\r\nTo: bob@example.net\r\n"
        f"Subject: {subject}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "Message-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n"
    ).encode()


def test_gtube_is_spam_and_mentioning_it_is_not(corpus: Path, empty_dns: ZoneServer) -> None:
    config = _config(empty_dns)
    decision = scan(corpus / "spam" / "gtube" / "sa-gtube.eml", builtins=True, config=config)
    expect_finding(decision, "GTUBE")
    assert decision.verdict.spam is SpamStatus.SPAM
    clean = scan(corpus / "spam" / "gtube" / "sa-not_gtube.eml", builtins=True, config=config)
    no_finding(clean, "GTUBE")
    assert clean.verdict.spam is not SpamStatus.SPAM


def test_link_text_naming_another_domain_is_phishing(empty_dns: ZoneServer) -> None:
    phish = _html_message(
        '<p>Please log in: <a href="http://login.evil-host.example/pp">https://www.paypal.com/</a></p>'
    )
    decision = scan(phish, builtins=True, config=_config(empty_dns))
    finding = expect_finding(decision, "PHISH_LINK_MISMATCH")
    assert finding.details == {"shown": "www.paypal.com", "target": "login.evil-host.example"}
    honest = _html_message('<p>See <a href="https://www.paypal.com/help">www.paypal.com</a></p>')
    no_finding(scan(honest, builtins=True, config=_config(empty_dns)), "PHISH_LINK_MISMATCH")


def test_ip_literal_and_lookalike_links(empty_dns: ZoneServer) -> None:
    html = (
        '<a href="http://192.0.2.7/login">Log in</a> '
        # p\u0430ypal.com: a Cyrillic "a" (U+0430) in place of the Latin one
        '<a href="http://xn--pypal-4ve.com/">p\u0430ypal</a>'
    )
    decision = scan(_html_message(html), builtins=True, config=_config(empty_dns))
    expect_finding(decision, "PHISH_IP_LINK")
    finding = expect_finding(decision, "PHISH_LOOKALIKE_DOMAIN")
    assert finding.details["looks_like"] == "paypal.com"


def test_headers_carry_status_and_authentication_results(empty_dns: ZoneServer) -> None:
    decision = scan(make_message(), builtins=True, config=_config(empty_dns))
    headers = dict(decision.action.add_headers)
    assert headers["X-Spam-Status"].startswith("No, score=")
    # example.org has no DMARC record on this DNS server: dmarc=none, nothing invented.
    assert headers["Authentication-Results"] == "mailwarden; dmarc=none"


RULES = r"""
group_cap 3.0
header   SUBJ_WIN     Subject =~ /you have won/i
score    SUBJ_WIN     2.0
body     BODY_PRIZE   /claim your (?:prize|reward)/i
score    BODY_PRIZE   2.0
rawbody  RAW_FONT     /<font size="?1/i
uri      URI_CLAIM    /claim\.example\//
score    URI_CLAIM    0.5
full     FULL_XMAILER /^X-Mailer: BulkBlaster/m
header   __HAS_LIST   exists:List-Id
meta     PRIZE_META   (SUBJ_WIN && BODY_PRIZE && !__HAS_LIST)
score    PRIZE_META   1.5
describe PRIZE_META   Prize subject and prize body
"""


def test_rule_file_subset_with_meta_and_group_cap(tmp_path: Path, empty_dns: ZoneServer) -> None:
    rules = tmp_path / "50_prize.cf"
    rules.write_text(RULES)
    raw = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: You have WON\r\n"
        b"X-Mailer: BulkBlaster 2\r\nContent-Type: text/html\r\n\r\n"
        b'<font size="1">x</font> Claim your\r\nprize at http://claim.example/now\r\n'
    )
    config = _config(empty_dns, f"rule_files = ['{rules}']\n")
    decision = scan(raw, builtins=True, config=config)
    scores = {f.code: f.score for f in decision.verdict.findings if f.detector == "antispam"}
    for code, score in (("SUBJ_WIN", 2.0), ("BODY_PRIZE", 2.0), ("PRIZE_META", 1.5)):
        assert scores[code] == score
    assert scores["RAW_FONT"] == 1.0 and scores["FULL_XMAILER"] == 1.0  # SpamAssassin's default
    assert scores["URI_CLAIM"] == 0.5
    # 8.0 from the group's rules, capped at 3.0.
    caps = [f for f in decision.verdict.findings if f.code == "GROUP_CAP"]
    assert [(c.details["group"], c.score) for c in caps] == [("50_prize", -5.0)]


def test_rules_only_run_their_regex_when_the_literal_occurs(tmp_path: Path) -> None:
    rules = tmp_path / "x.cf"
    rules.write_text("body LIT_RULE /needle\\d+haystack/\nbody NOLIT /^\\d+$/\n")
    ruleset = load_rules([rules])
    lit = ruleset.rules["LIT_RULE"]
    assert lit.literal == "haystack"
    targets = RuleTargets(headers={}, body="x needle42haystack\n123", rawbody="", uris=[], full="")
    assert {r.name for r in ruleset.match(targets)} == {"LIT_RULE", "NOLIT"}
    targets = RuleTargets(headers={}, body="needle42 hay", rawbody="", uris=[], full="")
    assert ruleset.match(targets) == []


def test_a_meta_sees_the_metas_it_names_whatever_the_file_order(tmp_path: Path) -> None:
    # SpamAssassin's BODY_SINGLE_URI is "__BODY_SINGLE_URI && !__VIA_ML && ...": a meta
    # negating metas defined later in the files. Evaluated in file order it hit before its
    # negated parts were known, and a mailing-list newsletter scored as spam.
    rules = tmp_path / "x.cf"
    rules.write_text(
        "meta OUTER (__WORD && !__LIST)\n"
        "score OUTER 3.0\n"
        "meta __LIST (__LIST_HEADER || __LIST_BODY)\n"
        "meta __LIST_BODY __UNSUB\n"
        "body __WORD /bargain/\n"
        "body __UNSUB /unsubscribe/\n"
        "header __LIST_HEADER exists:List-Id\n"
    )
    ruleset = load_rules([rules])

    def hits(body: str) -> set[str]:
        targets = RuleTargets(headers={}, body=body, rawbody="", uris=[], full="")
        return {r.name for r in ruleset.match(targets)}

    assert hits("a bargain") == {"OUTER"}
    assert hits("a bargain, unsubscribe here") == set()


# Stand-ins for SpamAssassin's stock rules that test what our heuristics test.
STOCK_TWINS = r"""
header __HAS_MESSAGE_ID  exists:Message-Id
meta   MISSING_MID       !__HAS_MESSAGE_ID
score  MISSING_MID       0.7
uri    NORMAL_HTTP_TO_IP m{^https?://\d+\.\d+\.\d+\.\d+\b}i
score  NORMAL_HTTP_TO_IP 0.2
meta   NO_MID_IP_LINK    (MISSING_MESSAGE_ID && PHISH_IP_LINK)
score  NO_MID_IP_LINK    0.3
"""


def test_a_stock_twin_of_a_heuristic_scores_instead_of_it(
    tmp_path: Path, empty_dns: ZoneServer
) -> None:
    rules = tmp_path / "20_stock.cf"
    rules.write_text(STOCK_TWINS)
    raw = (
        b"From: Service <service@example.org>\r\nTo: bob@example.net\r\nSubject: Your account\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b'<a href="http://192.0.2.7/login">Log in</a>\r\n'
    )

    def scores(extra: str = "") -> dict[str, float]:
        decision = scan(raw, builtins=True, config=_config(empty_dns, extra))
        return {f.code: f.score for f in decision.verdict.findings if f.detector == "antispam"}

    shipped = load_rules([BUILTIN_RULES]).rules  # scores as fitted (rules/90_scores.cf)
    alone = scores()
    assert alone["MISSING_MESSAGE_ID"] == shipped["MISSING_MESSAGE_ID"].score
    assert alone["PHISH_IP_LINK"] == shipped["PHISH_IP_LINK"].score
    assert "MISSING_MID" not in alone and "NORMAL_HTTP_TO_IP" not in alone
    twins = scores(f"rule_files = ['{rules}']\n")
    assert twins["MISSING_MID"] == 0.7 and twins["NORMAL_HTTP_TO_IP"] == 0.2
    assert "MISSING_MESSAGE_ID" not in twins and "PHISH_IP_LINK" not in twins
    # Metas still see the replaced codes as hit: only their scores are gone.
    assert twins["NO_MID_IP_LINK"] == 0.3
    # A twin the admin scores 0 scores nothing, so the heuristic counts again.
    muted = scores(f"rule_files = ['{rules}']\nscores = {{ MISSING_MID = 0.0 }}\n")
    assert muted["MISSING_MESSAGE_ID"] == shipped["MISSING_MESSAGE_ID"].score
    assert "MISSING_MID" not in muted


def test_bad_replaced_by_lines_are_reported_with_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "bad.cf"
    rules.write_text(
        "replaced_by LONELY\n"
        "replaced_by A B,C\n"
        "replaced_by X Y\n"
        "replaced_by Y X\n"
        "replaced_by Z Z\n"
        "replaced_by Y W\n"
    )
    with caplog.at_level(logging.DEBUG, logger="mailwarden_antispam.rules"):
        ruleset = load_rules([rules])
    assert ruleset.skipped["invalid"] == 4
    for lineno in (1, 2, 4, 5):
        assert f"bad.cf:{lineno}:" in caplog.text
    assert ruleset.replaced_by == {"X": {"Y"}, "Y": {"W"}}
    # Chains are followed: W replaces X through Y, even when Y did not hit.
    assert ruleset.replaced({"X", "Y", "W"}) == {"X", "Y"}
    assert ruleset.replaced({"X", "W"}) == {"X"}
    assert ruleset.replaced({"X", "Y"}) == {"X"}


# The first load of the stock set compiles its hyperscan databases (minutes on 2 cores;
# cached after): a first run on a fresh machine must not time out. The set is the one an admin
# loads (stock beside the shipped rules), the same the engine comparison in
# test_antispam_fastmatch.py loads, so one compilation serves both.
@pytest.mark.timeout(900)
def test_stock_spamassassin_rules_load() -> None:
    ensure_packages("spamassassin")
    stock = Path("/usr/share/spamassassin")
    need(stock.is_dir(), f"the spamassassin package left no rules in {stock}")
    ruleset = load_rules([stock, BUILTIN_RULES])
    # Perl-only rules (eval:) are counted and left out; nearly every other rule loads.
    assert len([code for code in ruleset.rules if not code.startswith("MW_")]) > 2000
    assert ruleset.skipped.get("invalid", 0) < 20


# ---------------------------------------------------------------- quarantine


class _Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def test_quarantine_cap_removes_oldest_first(tmp_path: Path) -> None:
    q = SpamQuarantine(tmp_path / "q", max_bytes=3000)
    ids = [q.put(bytes([65 + i]) * 1000, "s@x", ["r@y"], f"m{i}", 9.0, "spam") for i in range(5)]
    kept = [e.id for e in q.search()]
    assert kept == ids[2:]
    assert q.total_bytes() == 3000
    files = tmp_path / "q" / "quarantine" / "spam"
    assert sorted(p.name for p in files.iterdir()) == sorted(f"{i}.eml" for i in ids[2:])
    assert q.put(b"x" * 3001, "s@x", ["r@y"], "too big", 9.0, "spam") is None
    # The core's store enforcer removes the oldest file itself: the index follows.
    (files / f"{ids[2]}.eml").unlink()
    assert [e.id for e in q.search()] == ids[3:]
    assert q.total_bytes() == 2000
    q.close()


def test_quarantine_release_delivers_the_original_bytes(tmp_path: Path) -> None:
    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        raw = make_message(subject="Cheap pills", body="Buy now\r\n.\r\nline after a dot\r\n")
        q = SpamQuarantine(tmp_path / "q")
        held = q.put(raw, "spammer@example.org", ["bob@example.net"], "Cheap pills", 12.0, "spam")
        assert held is not None
        assert [e.subject for e in q.search(sender="SPAMMER", min_score=10)] == ["Cheap pills"]
        q.release(held, "127.0.0.1", port)
        assert sink.received == [("spammer@example.org", ["bob@example.net"], raw)]
        assert q.search() == []
        q.close()
    finally:
        controller.stop()


def test_spam_is_held_by_the_gateway(tmp_path: Path, empty_dns: ZoneServer) -> None:
    config = _config(empty_dns, "quarantine = ['spam']\n")
    sample = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\r\n"
        b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
    )
    env = Envelope(mail_from="a@example.org", rcpt_to=["b@example.net"])
    plugins = build_plugin_manager(entry_points=True)
    cfg = parse_config(config, plugins.config_schemas())
    cfg.gateway.home = str(tmp_path)
    runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
    try:
        runner.process(sample, env)
    finally:
        runner.stop()
    q = SpamQuarantine(tmp_path)
    [entry] = q.search()
    assert q.original(entry.id) == sample
    assert (entry.mail_from, entry.rcpt_to, entry.status) == (
        "a@example.org",
        ["b@example.net"],
        "spam",
    )
    q.close()


_GTUBE = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\n\r\n"
    b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
)


def _kept(
    home: Path, extra: str, rules: str, rcpt: tuple[str, ...] = ("b@example.net",), times: int = 1
) -> tuple[list[list[str]], list[list[str]], list[Path]]:
    """GTUBE through a gateway that acts, ``times`` times: the recipients of each entry in the
    web's held-messages view and in its spam quarantine view, and every copy on disk."""
    plugins = build_plugin_manager(entry_points=True)
    cfg = parse_config(_config(extra=extra) + rules, plugins.config_schemas())
    cfg.gateway.home = str(home)
    runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
    try:
        for _ in range(times):
            runner.process(_GTUBE, Envelope(mail_from="a@example.org", rcpt_to=list(rcpt)))
        gateway = runner.gateway
        held = [h.envelope.rcpt_to for h in gateway.quarantine.held()]
        views = gateway.plugin_quarantines()
        spam = [e.recipients for e in views["spam"][1].search()] if "spam" in views else []
    finally:
        runner.stop()
    body = _GTUBE.split(b"\r\n\r\n", 1)[1]
    copies = [p for p in home.rglob("*") if p.is_file() and body in p.read_bytes()]
    return held, spam, copies


def _rule(spam: str, name: str = "default", recipients: str = "*") -> str:
    return (
        f'[[rules]]\nname = "{name}"\nrecipients = ["{recipients}"]\n'
        f'[rules.actions]\nspam = "{spam}"\n'
    )


def test_a_spam_message_the_rule_quarantines_is_kept_once(
    tmp_path: Path, empty_dns: ZoneServer
) -> None:
    """``spam = "quarantine"`` plus ``[antispam] quarantine = ['spam']``: the admin finds the
    message in one quarantine, not in both (it was stored twice and released twice): the spam
    quarantine, with its learning and the end users' digest."""
    extra = f"{_dns(empty_dns)}quarantine = ['spam']\n"
    bob = ["b@example.net"]
    held, spam, copies = _kept(tmp_path / "both", extra, _rule("quarantine"))
    assert (held, spam) == ([], [bob])
    assert len(copies) == 1, copies
    # Without the spam quarantine the rule's quarantine holds it, as ever.
    held, spam, copies = _kept(tmp_path / "rule", _dns(empty_dns), _rule("quarantine"))
    assert (held, spam, len(copies)) == ([bob], [], 1)
    # The spam quarantine still keeps what the rule delivers or rejects.
    held, spam, copies = _kept(tmp_path / "reject", extra, _rule("reject"))
    assert (held, spam, len(copies)) == ([], [bob], 1)
    # A tempfail is not kept per attempt: the sender still has it and sends it again.
    held, spam, copies = _kept(tmp_path / "retried", extra, _rule("tempfail"), times=2)
    assert (held, spam, copies) == ([], [], [])
    # Recipients under a rule that tempfails, beside others that take the message, are held
    # by the gateway (the tempfail's accepted form), once; the others' copy is in the spam
    # quarantine and their mailbox.
    rules = _rule("tempfail", "strict", "b@example.net") + _rule("deliver")
    held, spam, copies = _kept(tmp_path / "split", extra, rules, ("b@example.net", "c@x.test"))
    assert (held, spam) == ([bob], [["c@x.test"]])
    assert len(copies) == 3, copies


def test_a_dry_run_keeps_nothing_in_any_quarantine(tmp_path: Path, empty_dns: ZoneServer) -> None:
    """``mailwarden rules test`` and ``Gateway.scan`` say what would happen; they kept the
    spam in the spam quarantine all the same (a copy per test, listed in the end users'
    digests as if mail had come)."""
    home = tmp_path / "home"
    home.mkdir()
    config = home / "mailwarden.toml"
    config.write_text(_config(empty_dns, "quarantine = ['spam']\n") + _rule("quarantine"))
    message = tmp_path / "gtube.eml"
    message.write_bytes(_GTUBE)
    args = ["--config", str(config), "--from", "a@example.org", "--to", "b@example.net"]
    result = CliRunner().invoke(cli, ["rules", "test", *args, str(message)])
    assert result.exit_code == 0, result.output
    assert "quarantine" in result.output
    env = Envelope(mail_from="a@example.org", rcpt_to=["b@example.net"])
    decision = scan(_GTUBE, builtins=True, config=config.read_text(), home=home, envelope=env)
    assert decision.verdict.spam is SpamStatus.SPAM
    assert decision.action.held_in is None
    assert SpamQuarantine(home).search() == []
    body = _GTUBE.split(b"\r\n\r\n", 1)[1]
    assert [p for p in home.rglob("*") if p.is_file() and body in p.read_bytes()] == []


# ---------------------------------------------------------------- Bayes


def _mails(directory: Path, kind: str, n: int) -> Path:
    directory.mkdir(parents=True)
    words = {
        "spam": "cheap pills casino winner viagra lottery bonus",
        "ham": "meeting agenda project review minutes schedule budget",
    }[kind]
    for i in range(n):
        body = f"{words} item{i}\r\n"
        (directory / f"{i}.eml").write_bytes(make_message(subject=f"{kind} {i}", body=body))
    return directory


def test_train_untrain_and_classify(tmp_path: Path, empty_dns: ZoneServer) -> None:
    spam = _mails(tmp_path / "spam", "spam", 12)
    ham = _mails(tmp_path / "ham", "ham", 12)
    home = tmp_path / "home"
    runner = CliRunner()
    env = {"MAILWARDEN_HOME": str(home)}
    result = runner.invoke(
        cli, ["antispam", "train", "--spam", str(spam), "--ham", str(ham)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "total: 12 spam, 12 ham" in result.output
    again = runner.invoke(cli, ["antispam", "train", "--spam", str(spam)], env=env)
    assert "learned 0 of 12" in again.output  # never counted twice

    plugin = AntispamPlugin()
    config = _config(empty_dns)
    new_spam = make_message(subject="win", body="cheap casino bonus pills lottery\r\n")
    decision = scan(new_spam, plugins={"antispam": plugin}, config=config, home=home)
    assert {"BAYES_99", "BAYES_999"} & {f.code for f in decision.verdict.findings}
    new_ham = make_message(subject="notes", body="project meeting minutes and budget review\r\n")
    decision = scan(new_ham, plugins={"antispam": plugin}, config=config, home=home, live=True)
    expect_finding(decision, "BAYES_00")

    result = runner.invoke(cli, ["antispam", "untrain", str(spam / "0.eml")], env=env)
    # Autolearn (on by default) learned the clean new ham: 13 ham.
    assert "unlearned 1 of 1" in result.output and "total: 11 spam, 13 ham" in result.output
    journal = runner.invoke(cli, ["antispam", "journal"], env=env).output.splitlines()
    assert len(journal) == 26
    assert " autolearn learn ham " in journal[-2]
    assert " unlearn spam " in journal[-1]


def test_commands_use_the_folders_of_the_configured_gateway(tmp_path: Path) -> None:
    # The gateway's home is set in its config, away from the config file and $MAILWARDEN_HOME.
    elsewhere = tmp_path / "elsewhere"
    config = tmp_path / "etc" / "mailwarden.toml"
    config.parent.mkdir()
    config.write_text(f'[gateway]\nhome = "{elsewhere}"\n')
    kept = SpamQuarantine(elsewhere).put(
        make_message(subject="held"), "s@example.org", ["r@example.net"], "held", 12.0, "spam"
    )
    assert kept is not None
    runner = CliRunner()
    env = {"MAILWARDEN_HOME": str(tmp_path / "not-here")}
    listing = runner.invoke(
        cli, ["antispam", "quarantine", "list", "--config", str(config)], env=env
    )
    assert listing.exit_code == 0, listing.output
    assert kept in listing.output
    trained = runner.invoke(
        cli, ["antispam", "journal", "--config", str(config)], env=env, catch_exceptions=False
    )
    assert trained.exit_code == 0
    assert not (tmp_path / "not-here").exists()


def test_mail_antispam_did_not_read_gets_no_spam_status_header() -> None:
    """With antispam turned off the plugin's verdict hook still runs (its hooks are
    loaded); an `X-Spam-Status: No` would then tell the recipient's filters the message was
    judged clean when no rule read it."""
    off = '[detectors]\ndisabled = ["antispam"]\n[events]\nenabled = false\n'
    decision = scan(make_message(), builtins=True, config=off)
    names = {name for name, _value in decision.action.add_headers}
    assert "X-Spam-Status" not in names and "X-Spam-Score" not in names
    on = scan(make_message(), builtins=True, config="[antispam]\nauthentication = false\n")
    assert dict(on.action.add_headers)["X-Spam-Status"].startswith("No, score=")

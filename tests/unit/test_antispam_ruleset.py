"""The project's own rule set and the scores ``mailwarden antispam fit`` learns for it."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner

from mailwarden.cli import cli
from mailwarden.testing import scan
from mailwarden_antispam import BUILTIN_RULES
from mailwarden_antispam.rules import load_rules
from mailwarden_sdk import SpamStatus

# Local checks only: no stock rules, no Bayes, no DNS.
CONFIG = "[antispam]\nrule_files = []\nbayes = false\nauthentication = false\n"

SPAM = (
    b"From: Best Deals <deals4you2002@hotmail.com>\r\nTo: undisclosed-recipients:;\r\n"
    b"Subject: Cut your monthly payments by 50%!!! 28371\r\nDate: Mon, 01 Jul 2002 10:00\r\n"
    b"Message-ID: <00a1b2c3d4e5$00112233$44556677@>\r\nMIME-Version: 1.0\r\n"
    b'X-Priority: 1\r\nContent-Type: text/html; charset="iso-8859-1"\r\n\r\n'
    b'<html><body bgcolor="#ffcc00"><center><font size="6" color="red"><b>Dear Friend,'
    b"</b></font><p>Are you drowning in credit card debt? Lower your monthly payments and"
    b" save up to 60% with our FREE CONSULTATION. No obligation! Act now, this special"
    b" offer is for a limited time only! Make money from home with $5,000, $10,000 and"
    b' $25,000 a month!</p><p><a href="http://64.12.33.120/offer.cgi?id=ab1234">CLICK'
    b' HERE</a> to apply.</p><p><font size="1">This is not spam. You are receiving this'
    b" because you opted in. To be removed from our mailing list reply with REMOVE in the"
    b" subject.</font></p></center></body></html>\r\n"
)

HAM = (
    b"From: Alice Example <alice@example.org>\r\nTo: dev list <dev@lists.example.org>\r\n"
    b"Subject: Re: [dev] build fails on 3.11\r\nDate: Mon, 01 Jul 2002 10:00:00 +0100\r\n"
    b"Message-ID: <20020701100000.GA1234@example.org>\r\n"
    b"In-Reply-To: <20020630.1234@example.net>\r\nReferences: <20020630.1234@example.net>\r\n"
    b"List-Id: Developers <dev.lists.example.org>\r\nUser-Agent: Mutt/1.4i\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    b"On Sun, Jun 30, 2002 at 09:12:00AM +0100, Bob wrote:\r\n"
    b"> the build fails with an import error\r\n> since yesterday's commit\r\n\r\n"
    b"It is the new module; this patch fixes it for me:\r\n\r\n"
    b"--- a/setup.py\r\n+++ b/setup.py\r\n@@ -1,3 +1,3 @@\r\n-import foo\r\n+import bar\r\n"
    b"\r\nCheers, Alice\r\n"
)


def test_owned_rules_load_by_topic_with_every_kind_and_a_fitted_score() -> None:
    rules = load_rules([BUILTIN_RULES])
    assert rules.skipped == {}
    own = {n: r for n, r in rules.rules.items() if n.startswith("MW_")}
    topics = {r.group for r in own.values()}
    assert {"50_headers", "52_body", "54_uri", "55_html", "56_mime"} <= topics
    kinds = {r.kind for r in own.values()}
    assert {"header", "body", "rawbody", "uri", "full", "meta"} <= kinds
    assert len(own) >= 100
    for name, rule in own.items():
        assert rule.description, f"{name} has no describe line"
        # Every rule's score comes from the fitted file (0 when the corpus gave it none).
        assert rule.score is not None, f"{name} has no score"
        if "nice" in rule.tflags:
            assert rule.score <= 0, name
        else:
            assert rule.score >= 0, name
    scores = (BUILTIN_RULES / "90_scores.cf").read_text()
    assert "mailwarden antispam fit --labels" in scores.splitlines()[2]


def test_owned_rules_flag_bulk_spam_and_leave_a_list_reply_clean() -> None:
    spam = scan(SPAM, builtins=True, config=CONFIG)
    assert spam.verdict.spam in (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM), spam.verdict
    codes = {f.code for f in spam.verdict.findings}
    assert {"MW_REMOVE_SUBJECT", "MW_URI_NUMERIC_HOST", "MW_DEAR_FRIEND"} <= codes
    ham = scan(HAM, builtins=True, config=CONFIG)
    assert ham.verdict.spam is SpamStatus.CLEAN, ham.verdict
    assert ham.verdict.spam_score < 0  # threading and quoting speak for it


def _subset(corpus: Path, tmp_path: Path, spam: int, ham: int) -> Path:
    public = corpus / "spam-public"
    with open(public / "LABELS.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = [r for r in rows if r["label"] == "spam"][:spam]
    chosen += [r for r in rows if r["label"] == "ham"][:ham]
    labels = tmp_path / "LABELS.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "group"])
        writer.writeheader()
        for r in chosen:
            writer.writerow({**r, "path": str(public / r["path"])})
    return labels


def test_fit_reports_every_fold_and_writes_scores_that_load(corpus: Path, tmp_path: Path) -> None:
    labels = _subset(corpus, tmp_path, 90, 150)
    out = tmp_path / "scores.cf"
    result = CliRunner().invoke(
        cli,
        [
            "antispam",
            "fit",
            "--labels",
            str(labels),
            "--folds",
            "3",
            "--no-bayes",
            "--write",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "240 messages: 90 spam, 150 ham; 3 folds" in result.output
    folds = [line for line in result.output.splitlines() if line.startswith("fold ")]
    assert len(folds) == 3
    for line in folds:
        assert "precision" in line and "recall" in line and "fpr" in line
    assert "hard-ham fpr" in folds[0]
    written = load_rules([BUILTIN_RULES, out])
    fitted = {
        line.split()[1]: float(line.split()[2])
        for line in out.read_text().splitlines()
        if line.startswith("score ")
    }
    assert len([v for v in fitted.values() if v > 0]) >= 10
    for name, value in fitted.items():
        rule = written.rules[name]
        assert rule.score == value
        assert (value <= 0) if "nice" in rule.tflags else (value >= 0), name


def test_tflags_of_rules_and_metas_are_kept(tmp_path: Path) -> None:
    cf = tmp_path / "t.cf"
    cf.write_text(
        "tflags  T_META nice\nheader __A exists:X-A\nmeta T_META (__A)\n"
        "body T_BODY /x/\ntflags T_BODY nice multiple\n"
    )
    rules = load_rules([cf])
    assert rules.rules["T_META"].tflags == {"nice"}
    assert rules.rules["T_BODY"].tflags == {"nice", "multiple"}

"""Scores that are not finite numbers: refused where a plugin hands them over, and old records
that hold one (stored as ``null``) still readable."""

from __future__ import annotations

import re
from pathlib import Path

import lmdb
import pytest

from mailwarden.events import MessageEventLog
from mailwarden.testing import scan
from mailwarden_sdk import (
    ActionKind,
    Category,
    Finding,
    MessageEvent,
    ScanContext,
    SpamStatus,
    hookimpl,
)
from mailwarden_sdk.findings import spam_rule
from tests.conftest import make_message
from tests.web.conftest import Web


class SpamHit:
    """An honest antispam detector: 20 points, well over the spam threshold."""

    @hookimpl
    def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        return [spam_rule("spamhit", "SPAM_HIT", 20.0)]


def _scorer(score: float) -> type:
    class Scorer:
        """A detector whose arithmetic went wrong (a log of 0, a division by 0)."""

        @hookimpl
        def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
            return [
                Finding(
                    code="BAD_SCORE",
                    detector="scorer",
                    category=Category.ANTISPAM,
                    status="hit",
                    score=score,
                )
            ]

    return Scorer


@pytest.mark.parametrize("score", [float("-inf"), float("inf"), float("nan")])
def test_non_finite_score_is_an_error_naming_the_plugin(score: float) -> None:
    """One -inf made a message with 20 spam points clean and delivered."""
    # With the built-ins: the antispam plugin's thresholds turn the summed score into a status.
    decision = scan(
        make_message(), plugins={"spamhit": SpamHit, "scorer": _scorer(score)}, builtins=True
    )
    verdict = decision.verdict
    assert verdict.spam_score >= 20.0
    assert verdict.spam is SpamStatus.SPAM
    assert decision.action.kind is not ActionKind.DELIVER
    assert "scorer" in verdict.errors
    [error] = [f for f in verdict.findings if f.detector == "scorer"]
    assert error.status == "error"
    assert "finite" in error.details["error"]


def test_sdk_refuses_non_finite_scores() -> None:
    with pytest.raises(ValueError, match=r"SPAM_X of detector 'mine'.*finite"):
        spam_rule("mine", "SPAM_X", float("-inf"))
    assert spam_rule("mine", "SPAM_X", -3.5).score == -3.5


def _null_scores(events: Path) -> int:
    """Rewrite the stored events as the old code stored a -inf score: ``null``."""
    env = lmdb.open(str(events), max_dbs=16)
    records = env.open_db(b"records")
    changed = 0
    with env.begin(write=True) as txn:
        for key, value in list(txn.cursor(db=records)):
            new = re.sub(rb'"(spam_)?score":-?[0-9.e+-]+', rb'"\1score":null', value)
            if new != value:
                txn.put(key, new, db=records)
                changed += 1
    env.close()
    return changed


def test_old_record_with_null_score_is_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = MessageEventLog(home / "events")
    decision = scan(make_message(subject="scored"), plugins={"spamhit": SpamHit})
    log.append(
        MessageEvent(
            id="x1",
            time=1.0e9,
            ingress="smtp",
            mail_from="a@example.org",
            rcpt_to=["b@example.net"],
            client_address=None,
            helo=None,
            queue_id=None,
            message_id=None,
            subject="scored",
            size=10,
            attachments=[],
            rule="default",
            verdict=decision.verdict,
            action=ActionKind.REJECT,
            reply="550",
        )
    )
    log.close()
    assert _null_scores(home / "events") == 1
    [event] = MessageEventLog(home / "events").search()
    assert event.subject == "scored"
    assert event.verdict.spam_score == 0.0
    [finding] = event.verdict.findings
    assert finding.score == 0.0
    assert "not a finite number" in finding.details["score"]


def test_pages_and_stats_answer_with_an_old_null_score(tmp_path: Path) -> None:
    """`/`, `/events` and the stats API answered 500 until the record aged out (3 days)."""
    web = Web(tmp_path / "home")
    try:
        web.spam("spam with a score")
        web.gateway.events.close()
        assert _null_scores(web.home / "events") >= 1
        client, _ = web.login("administrator")
        for path in ("/", "/events", "/api/stats", "/api/events"):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text[-2000:])
        events = client.get("/api/events").json()
        assert "spam with a score" in str(events)
    finally:
        web.close()

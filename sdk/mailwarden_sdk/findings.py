"""Shorthands for the findings detectors emit most, so codes and statuses stay consistent."""

from __future__ import annotations

from collections.abc import Iterable

from .types import AntivirusStatus, Category, Finding, SpamStatus

__all__ = ["infected", "malicious", "not_scanned", "spam_rule", "total_score"]


def infected(
    detector: str,
    signature: str,
    *,
    part: int | None = None,
    code: str = "AV_INFECTED",
    **details: str,
) -> Finding:
    """An antivirus detection: the message's antivirus status becomes ``infected``.

    ``signature`` is the detection name shown to admins and in SMTP replies.
    """
    return Finding(
        code=code,
        detector=detector,
        category=Category.ANTIVIRUS,
        status=AntivirusStatus.INFECTED.value,
        details={"signature": signature, **details},
        part=part,
    )


def not_scanned(detector: str, limit: str, *, part: int | None = None, **details: str) -> Finding:
    """An object the detector skipped because of a limit (named in ``limit``)."""
    return Finding(
        code="AV_NOT_SCANNED",
        detector=detector,
        category=Category.ANTIVIRUS,
        status=AntivirusStatus.NOT_SCANNED.value,
        details={"limit": limit, **details},
        part=part,
    )


def spam_rule(
    detector: str,
    code: str,
    score: float,
    *,
    part: int | None = None,
    status: SpamStatus | None = None,
    **details: str,
) -> Finding:
    """An antispam rule hit adding ``score`` to the spam score.

    Give ``status`` only for decisive rules (``SpamStatus.BLOCKED`` for a block list); plain
    hits leave the status to the thresholds over the summed score.
    """
    return Finding(
        code=code,
        detector=detector,
        category=Category.ANTISPAM,
        status=status.value if status else "hit",
        score=score,
        details=dict(details),
        part=part,
    )


def malicious(
    detector: str, code: str, *, score: float = 0.0, part: int | None = None, **details: str
) -> Finding:
    """A reputation verdict of ``malicious`` (adds ``score`` to the spam score too)."""
    return Finding(
        code=code,
        detector=detector,
        category=Category.REPUTATION,
        status="malicious",
        score=score,
        details=dict(details),
        part=part,
    )


def total_score(findings: Iterable[Finding]) -> float:
    """The spam score these findings add up to (antispam and reputation categories)."""
    return sum(f.score for f in findings if f.category in (Category.ANTISPAM, Category.REPUTATION))

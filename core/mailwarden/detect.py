"""The detect stage: what a detector's answer becomes, and the findings that stand for a
detector (or hook) that failed or ran out of time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailwarden_sdk import Category, Finding

__all__ = ["TIMEOUT", "checked_findings", "error_finding"]

#: The code of a finding that stands for a hook out of time.
TIMEOUT = "HOOK_TIMEOUT"


def error_finding(detector: str, code: str, error: str) -> Finding:
    """An error finding of ``detector``: the rule's error action decides about the message."""
    return Finding(
        code=code,
        detector=detector,
        category=Category.OTHER,
        status="error",
        details={"error": error[:300]},
    )


def checked_findings(detector: str, result: Any) -> list[Finding]:
    """What ``detector`` returned as findings; anything that is not one is an error finding."""
    if result is None:
        return []
    if isinstance(result, Finding):
        return [result]
    if not isinstance(result, Iterable) or isinstance(result, (str, bytes)):
        return [error_finding(detector, "DETECTOR_ERROR", f"returned {type(result).__name__}")]
    findings: list[Finding] = []
    for item in result:
        if isinstance(item, Finding):
            findings.append(item)
        else:
            findings.append(
                error_finding(
                    detector, "DETECTOR_ERROR", f"returned {type(item).__name__}, not Finding"
                )
            )
    return findings

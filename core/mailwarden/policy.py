"""Rules: which rule covers a recipient, and what a rule does with a verdict.

Folding findings into a verdict is plain data work and lives in :func:`fold_findings`; the
choice of action is :func:`decide_action`. Neither does I/O.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from mailwarden_sdk import (
    Action,
    ActionKind,
    AntivirusStatus,
    Category,
    Finding,
    SpamStatus,
    Verdict,
)

from .config import RuleConfig

__all__ = ["address_matches", "decide_action", "fold_findings", "rule_for"]

# When several statuses apply, the most final action wins: a rejected message is never also
# delivered, and a message that cannot be judged now is retried rather than quarantined.
_ACTION_RANK = {
    ActionKind.DELIVER: 0,
    ActionKind.DISCARD: 1,
    ActionKind.QUARANTINE: 2,
    ActionKind.TEMPFAIL: 3,
    ActionKind.REJECT: 4,
}

_SPAM_RANK = {
    SpamStatus.CLEAN: 0,
    SpamStatus.ERROR: 1,
    SpamStatus.BULK: 2,
    SpamStatus.PROBABLE_SPAM: 3,
    SpamStatus.SPAM: 4,
    SpamStatus.BLOCKED: 5,
    SpamStatus.ALLOWED: 6,
}


def address_matches(address: str, pattern: str) -> bool:
    """Whether ``address`` matches a rule pattern.

    ``*`` matches everything (the null sender too); ``@example.org`` a whole domain; anything
    else is a case-insensitive shell pattern (``*@*.example.org``, ``alice@example.org``).
    """
    address = address.lower()
    pattern = pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith("@"):
        return address.endswith(pattern)
    return fnmatch.fnmatchcase(address, pattern)


def rule_for(rules: Sequence[RuleConfig], sender: str, recipient: str) -> RuleConfig | None:
    """The first rule whose sender and recipient patterns both match, else ``None``."""
    for rule in rules:
        if any(address_matches(sender, p) for p in rule.senders) and any(
            address_matches(recipient, p) for p in rule.recipients
        ):
            return rule
    return None


def rule_runs(rule: RuleConfig, detector: str) -> bool:
    """Whether ``rule`` enables ``detector`` (``*`` enables all, ``-name`` removes one)."""
    if f"-{detector}" in rule.detectors:
        return False
    return "*" in rule.detectors or detector in rule.detectors


def fold_findings(findings: Iterable[Finding]) -> Verdict:
    """Fold detector findings into per-category statuses.

    Antivirus: the most severe status wins, signature names collected. Antispam and reputation
    findings add their scores to the spam score; an explicit spam status (blocked, allowed,
    spam...) from a finding is kept, the most decisive winning. Thresholds over the score are
    the antispam plugin's business (its ``mailwarden_verdict`` hook).
    """
    verdict = Verdict()
    for finding in findings:
        verdict.findings.append(finding)
        if finding.status == "error":
            verdict.errors.append(finding.detector)
        if finding.category is Category.ANTIVIRUS:
            try:
                status = AntivirusStatus(finding.status)
            except ValueError:
                continue
            if status.severity > verdict.antivirus.severity:
                verdict.antivirus = status
            name = finding.details.get("signature")
            if status is AntivirusStatus.INFECTED and name and name not in verdict.virus_names:
                verdict.virus_names.append(name)
        elif finding.category in (Category.ANTISPAM, Category.REPUTATION):
            verdict.spam_score += finding.score
            try:
                spam = SpamStatus(finding.status)
            except ValueError:
                spam = None
            if spam is not None and _SPAM_RANK[spam] > _SPAM_RANK[verdict.spam]:
                verdict.spam = spam
            if finding.category is Category.REPUTATION and finding.status in (
                "malicious",
                "suspicious",
            ):
                verdict.reputation = _worse(verdict.reputation, finding.status)
        elif finding.category is Category.SANDBOX and finding.status in (
            "malicious",
            "suspicious",
            "clean",
        ):
            verdict.sandbox = _worse(verdict.sandbox, finding.status)
    verdict.errors = sorted(set(verdict.errors))
    return verdict


def _worse(current: str | None, new: str) -> str:
    order = {None: 0, "clean": 1, "suspicious": 2, "malicious": 3}
    return new if order.get(new, 0) > order.get(current, 0) else current or new


def decide_action(rule: RuleConfig, verdict: Verdict) -> Action:
    """Turn a verdict into the action ``rule`` prescribes, with the SMTP reply to give."""
    actions = rule.actions
    candidates: list[tuple[ActionKind, str, str]] = []  # (kind, reason, reply text)
    av = verdict.antivirus
    if av not in (AntivirusStatus.CLEAN, AntivirusStatus.ERROR):
        names = f" ({', '.join(verdict.virus_names)})" if verdict.virus_names else ""
        candidates.append((ActionKind(getattr(actions, av.value)), av.value, f"{av.value}{names}"))
    spam = verdict.spam
    if spam in (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BULK, SpamStatus.BLOCKED):
        candidates.append((ActionKind(getattr(actions, spam.value)), spam.value, spam.value))
    if "malicious" in (verdict.reputation, verdict.sandbox):
        candidates.append((ActionKind(actions.malicious), "malicious", "malicious content"))
    if verdict.errors:
        detail = f"scan error in {', '.join(verdict.errors)}"
        candidates.append((ActionKind(actions.error), "error", detail))
    if not candidates:
        candidates.append((ActionKind(actions.clean), "clean", "clean"))
    kind, reason, text = max(candidates, key=lambda c: _ACTION_RANK[c[0]])

    headers = _status_headers(verdict) if rule.add_headers else []
    if kind is ActionKind.REJECT:
        reply = (550, f"5.7.1 {rule.reject_text}: {text}")
    elif kind is ActionKind.TEMPFAIL:
        reply = (451, f"4.7.1 Message not accepted now ({text}); try again later")
    else:
        reply = (250, "2.0.0 Ok")
    keep_headers = kind in (ActionKind.DELIVER, ActionKind.QUARANTINE)
    return Action(
        kind=kind,
        reason=reason,
        smtp_code=reply[0],
        smtp_text=reply[1],
        add_headers=headers if keep_headers else [],
    )


def _status_headers(verdict: Verdict) -> list[tuple[str, str]]:
    av = verdict.antivirus.value
    if verdict.virus_names:
        av += f" ({', '.join(verdict.virus_names)})"
    spam_flag = (
        "yes"
        if verdict.spam in (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BLOCKED)
        else "no"
    )
    headers = [
        ("X-Mailwarden-Virus", av),
        (
            "X-Mailwarden-Spam",
            f"{spam_flag}, status={verdict.spam.value}, score={verdict.spam_score:.2f}",
        ),
    ]
    if verdict.errors:
        headers.append(("X-Mailwarden-Errors", ", ".join(verdict.errors)))
    return headers

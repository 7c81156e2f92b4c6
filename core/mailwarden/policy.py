"""Rules: which rule covers a recipient, and what a rule does with a verdict.

Rule patterns are compiled once (:func:`compile_rules`, at config load and when the gateway
starts) so that matching at RCPT time is a few string and regex tests; directory groups come
from the local cache, never from a network round trip. Folding findings into a verdict is plain
data work and lives in :func:`fold_findings`; the choice of action is :func:`decide_action`.
None of these does network I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailwarden_sdk import (
    Action,
    ActionKind,
    AntivirusStatus,
    Category,
    Finding,
    SpamStatus,
    Verdict,
)

from .config import RuleConfig, locate_key
from .patterns import Pattern, compile_pattern, compile_rule_patterns, domain_of

__all__ = [
    "GroupSource",
    "Pattern",
    "RuleMatch",
    "RuleSet",
    "address_matches",
    "compile_pattern",
    "compile_rules",
    "decide_action",
    "direction_of",
    "fold_findings",
    "in_domains",
    "rule_for",
]

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


class GroupSource(Protocol):
    """Where ``group:`` patterns look: the directory cache (see :mod:`mailwarden.directory`)."""

    def groups_of(self, address: str) -> frozenset[str]:
        """Keys (:func:`~mailwarden.groupnames.group_key`) of every group ``address``
        belongs to, nested membership included; empty when the address is unknown."""
        ...


def address_matches(address: str, pattern: str, directory: GroupSource | None = None) -> bool:
    """Whether ``address`` matches one rule pattern (see :func:`compile_pattern`).

    ``group:`` patterns need ``directory``; without one they match nothing.
    """
    lowered = address.lower()
    compiled = compile_pattern(pattern)
    return compiled.matches(lowered, lambda: _groups(directory, lowered))


def _groups(directory: GroupSource | None, address: str) -> frozenset[str]:
    return directory.groups_of(address) if directory is not None and address else frozenset()


def in_domains(domain: str, local: Sequence[str]) -> bool:
    """Whether ``domain`` is one of ``local`` (lower-case; ``.example.org`` with subdomains)."""
    for entry in local:
        if entry.startswith("."):
            if domain == entry[1:] or domain.endswith(entry):
                return True
        elif domain == entry:
            return True
    return False


def direction_of(sender: str, recipient: str, local_domains: Sequence[str]) -> str:
    """``inbound``, ``outbound`` or ``internal`` as told by ``local_domains``.

    Mail to a local recipient is internal when the sender is local too, else inbound (the null
    sender is not local); mail to any other recipient is outbound.
    """
    return _direction(sender.lower(), recipient.lower(), [d.lower() for d in local_domains])


def _direction(sender: str, recipient: str, local: Sequence[str]) -> str:
    # direction_of for addresses and domains in lower case already (a rule set's).
    if not in_domains(domain_of(recipient), local):
        return "outbound"
    return "internal" if in_domains(domain_of(sender), local) else "inbound"


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The rule that applies and why: the patterns, network and direction that matched."""

    rule: RuleConfig
    sender_pattern: str
    recipient_pattern: str
    client_network: str | None
    direction: str

    def explain(self) -> str:
        """One line saying why the rule matched, as ``mailwarden rules test`` prints it."""
        parts = [
            f"sender matched '{self.sender_pattern}'",
            f"recipient matched '{self.recipient_pattern}'",
        ]
        if self.client_network is not None:
            parts.append(f"client in {self.client_network}")
        parts.append(f"direction {self.direction}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: RuleConfig
    senders: tuple[Pattern, ...]
    recipients: tuple[Pattern, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(slots=True)
class RuleSet:
    """Rules with their patterns compiled; :meth:`match` is what the hot path calls."""

    rules: tuple[_CompiledRule, ...]
    local_domains: tuple[str, ...] = ()
    #: Whether a rule names a ``group:`` (only then is the directory asked).
    groups: bool = True

    def match(
        self,
        sender: str,
        recipient: str,
        *,
        client: str | None = None,
        directory: GroupSource | None = None,
    ) -> RuleMatch | None:
        """The first rule matching sender, recipient, client and direction, with the reasons."""
        sender = sender.lower()
        recipient = recipient.lower()
        direction = _direction(sender, recipient, self.local_domains)
        # Parsed when a rule names networks (most rule sets name none): a parse per message.
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        parsed = False
        if self.groups:
            # Directory answers are looked up at most once per address and call.
            memo: dict[str, frozenset[str]] = {}

            def groups_for(address: str) -> Callable[[], frozenset[str]]:
                def lookup() -> frozenset[str]:
                    if address not in memo:
                        memo[address] = _groups(directory, address)
                    return memo[address]

                return lookup

            sender_groups = groups_for(sender)
            recipient_groups = groups_for(recipient)
        else:
            # No group: pattern to ask for them (the lookups were two closures a call).
            sender_groups = recipient_groups = _no_groups
        for compiled in self.rules:
            rule = compiled.rule
            if rule.direction != "any" and rule.direction != direction:
                continue
            network = None
            if compiled.networks:
                if not parsed:
                    client_ip, parsed = _client_ip(client), True
                if client_ip is None:
                    continue
                network = next((n for n in compiled.networks if client_ip in n), None)
                if network is None:
                    continue
            sender_hit = next(
                (p for p in compiled.senders if p.matches(sender, sender_groups)), None
            )
            if sender_hit is None:
                continue
            recipient_hit = next(
                (p for p in compiled.recipients if p.matches(recipient, recipient_groups)), None
            )
            if recipient_hit is None:
                continue
            return RuleMatch(
                rule,
                sender_hit.text,
                recipient_hit.text,
                str(network) if network is not None else None,
                direction,
            )
        return None


def _no_groups() -> frozenset[str]:
    return frozenset()


def _client_ip(client: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not client:
        return None
    try:
        ip = ipaddress.ip_address(client.strip("[]"))
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket still matches IPv4 networks.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def compile_rules(
    rules: Sequence[RuleConfig],
    local_domains: Sequence[str] = (),
    *,
    text: str | None = None,
    source: str | None = None,
) -> RuleSet:
    """Compile every rule's patterns and networks; a bad one is a :class:`ConfigError` naming
    the key (``rules[2].recipients[0]``) and, when ``text`` (the TOML) is given, the line."""
    locate = (lambda steps: locate_key(text, steps)) if text else None
    patterns = compile_rule_patterns(rules, local_domains, locate=locate, source=source)
    compiled = [
        _CompiledRule(rule, found.senders, found.recipients, found.networks)
        for rule, found in zip(rules, patterns, strict=True)
    ]
    domains = tuple(d.lower().lstrip("@") for d in local_domains)
    groups = any(p.kind == "group" for c in compiled for p in (*c.senders, *c.recipients))
    return RuleSet(tuple(compiled), domains, groups)


def rule_for(
    rules: Sequence[RuleConfig],
    sender: str,
    recipient: str,
    *,
    client: str | None = None,
    directory: GroupSource | None = None,
    local_domains: Sequence[str] = (),
) -> RuleConfig | None:
    """The first rule that matches, else ``None``; compiles ``rules`` on every call, so the
    gateway keeps a :class:`RuleSet` instead."""
    match = compile_rules(rules, local_domains).match(
        sender, recipient, client=client, directory=directory
    )
    return match.rule if match else None


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
        elif finding.category is Category.CONTENT and finding.status == "blocked":
            verdict.content = "blocked"
        elif finding.category is Category.SANDBOX and finding.status in _SANDBOX_ORDER:
            verdict.sandbox = _worse(verdict.sandbox, finding.status)
    verdict.errors = sorted(set(verdict.errors))
    return verdict


# Sandbox statuses, least decisive first: a known malicious object makes waiting pointless,
# and a message that cannot be held (deferred) is not held for another object either.
_SANDBOX_ORDER = {
    "clean": 1,
    "skipped": 2,
    "hold": 3,
    "deferred": 4,
    "suspicious": 5,
    "malicious": 6,
}


def _worse(current: str | None, new: str) -> str:
    rank = _SANDBOX_ORDER.get
    return new if rank(new, 0) > rank(current or "", 0) else current or new


# Sets and a table instead of tuples of members and ActionKind(name): a member's lookup on
# its class and an enum call cost more than the rest of deciding a clean message.
_AV_QUIET = frozenset((AntivirusStatus.CLEAN, AntivirusStatus.ERROR))
_SPAM_ACTED_ON = frozenset(
    (SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BULK, SpamStatus.BLOCKED)
)
_SPAM_FLAGGED = frozenset((SpamStatus.SPAM, SpamStatus.PROBABLE_SPAM, SpamStatus.BLOCKED))
_KINDS = {kind.value: kind for kind in ActionKind}
_DELIVER, _QUARANTINE = ActionKind.DELIVER, ActionKind.QUARANTINE
_REJECT, _TEMPFAIL, _DISCARD = ActionKind.REJECT, ActionKind.TEMPFAIL, ActionKind.DISCARD


def _kind(name: str) -> ActionKind:
    return _KINDS.get(name) or ActionKind(name)


def decide_action(rule: RuleConfig, verdict: Verdict) -> Action:
    """Turn a verdict into the action ``rule`` prescribes, with the SMTP reply to give."""
    actions = rule.actions
    candidates: list[tuple[ActionKind, str, str]] = []  # (kind, reason, reply text)
    remove_parts: list[int] = []
    av = verdict.antivirus
    av_choice = ""
    if av not in _AV_QUIET:
        names = f" ({', '.join(verdict.virus_names)})" if verdict.virus_names else ""
        av_choice = getattr(actions, av.value)
        av_kind, remove_parts = _av_kind(av_choice, av, verdict)
        candidates.append((av_kind, av.value, f"{av.value}{names}"))
    spam = verdict.spam
    if spam in _SPAM_ACTED_ON:
        candidates.append((_kind(getattr(actions, spam.value)), spam.value, spam.value))
    if "malicious" in (verdict.reputation, verdict.sandbox):
        candidates.append((_kind(actions.malicious), "malicious", "malicious content"))
    if verdict.content == "blocked":
        what = sorted(
            {
                f.details.get("name") or f.details.get("object") or f.code
                for f in verdict.findings
                if f.category is Category.CONTENT
            }
        )
        detail = f"blocked content ({', '.join(what)})"
        candidates.append((_kind(rule.content.action), "content", detail))
    ambiguous = [f for f in verdict.findings if f.code == "MIME_AMBIGUOUS"]
    if ambiguous:
        detail = f"ambiguous MIME structure ({ambiguous[0].details.get('flags', '')})"
        candidates.append((_kind(actions.malformed), "malformed", detail))
    if verdict.sandbox == "deferred":
        # The sandbox could not take the message and its fallback is "retry later".
        candidates.append((ActionKind.TEMPFAIL, "sandbox", "sandbox quarantine full"))
    if verdict.errors:
        detail = f"scan error in {', '.join(verdict.errors)}"
        candidates.append((_kind(actions.error), "error", detail))
    if not candidates:
        kind, reason, text = _kind(actions.clean), "clean", "clean"
    else:
        kind, reason, text = max(candidates, key=lambda c: _ACTION_RANK[c[0]])
    if verdict.sandbox == "hold" and kind is _DELIVER:
        # Waiting for the analysis: accepted now, handed to mailwarden_hold when acted on.
        kind, reason = _QUARANTINE, "hold"

    headers = [*_status_headers(verdict), *verdict.headers] if rule.add_headers else []
    if kind is _REJECT:
        reply = (550, f"5.7.1 {rule.reject_text}: {text}")
    elif kind is _TEMPFAIL:
        reply = (451, f"4.7.1 Message not accepted now ({text}); try again later")
    else:
        reply = (250, "2.0.0 Ok")
    keep_headers = kind is _DELIVER or kind is _QUARANTINE
    by_av = reason == av.value and bool(av_choice)
    rewritten = by_av and kind is _DELIVER and av_choice in ("remove", "tag")
    return Action(
        kind=kind,
        reason=reason,
        smtp_code=reply[0],
        smtp_text=reply[1],
        add_headers=headers if keep_headers else [],
        subject_tag=actions.subject_tag.format(status=av.value)
        if rewritten and av_choice == "tag"
        else None,
        remove_parts=remove_parts if rewritten and av_choice == "remove" else [],
        # Before an antivirus status changes or drops the message, and before whatever a
        # malicious verdict (sandbox, reputation) brings other than plain delivery.
        backup=actions.backup
        and (
            (by_av and (rewritten or kind is _DISCARD or kind is _REJECT))
            or (reason == "malicious" and kind is not _DELIVER)
        ),
    )


def _av_kind(
    choice: str, status: AntivirusStatus, verdict: Verdict
) -> tuple[ActionKind, list[int]]:
    """The action kind an antivirus status chose and, for ``remove``, the parts to take out.

    ``remove`` is possible only when every finding of that status names a part; one found in
    the message as a whole cannot be cut out, so the message is quarantined instead.
    """
    if choice == "tag":
        return ActionKind.DELIVER, []
    if choice != "remove":
        return ActionKind(choice), []
    parts = [
        f.part
        for f in verdict.findings
        if f.category is Category.ANTIVIRUS and f.status == status.value
    ]
    if not parts or any(p is None for p in parts):
        return ActionKind.QUARANTINE, []
    return ActionKind.DELIVER, sorted({p for p in parts if p is not None})


def _status_headers(verdict: Verdict) -> list[tuple[str, str]]:
    av = verdict.antivirus.value
    if verdict.virus_names:
        av += f" ({', '.join(verdict.virus_names)})"
    spam_flag = "yes" if verdict.spam in _SPAM_FLAGGED else "no"
    headers = [
        ("X-Mailwarden-Virus", av),
        (
            "X-Mailwarden-Spam",
            f"{spam_flag}, status={verdict.spam.value}, score={verdict.spam_score:.2f}",
        ),
    ]
    if verdict.content:
        codes = sorted({f.code for f in verdict.findings if f.category is Category.CONTENT})
        headers.append(("X-Mailwarden-Content", f"{verdict.content} ({', '.join(codes)})"))
    if verdict.sandbox:
        why = sorted(
            {
                f.details["reason"]
                for f in verdict.findings
                if f.category is Category.SANDBOX and "reason" in f.details
            }
        )
        headers.append(
            ("X-Mailwarden-Sandbox", verdict.sandbox + (f" ({', '.join(why)})" if why else ""))
        )
    if verdict.errors:
        headers.append(("X-Mailwarden-Errors", ", ".join(verdict.errors)))
    return headers

"""The rules as the rules page edits them: TOML ``[[rules]]`` text checked like a config
file, and the dry run that shows which recent messages a candidate rule list would treat
differently from the rules in force."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import tomlkit

from mailwarden_sdk import MessageEvent

from ..config import RuleConfig, parse_config
from ..errors import ConfigError
from ..policy import GroupSource, RuleSet, compile_rules, decide_action

__all__ = ["DryRunRow", "dry_run", "parse_rules", "rules_text"]


def rules_text(rules: Iterable[Mapping[str, Any]]) -> str:
    """``rules`` as the ``[[rules]]`` tables of a config file."""
    document = tomlkit.document()
    table = tomlkit.aot()
    for rule in rules:
        table.append(tomlkit.item(dict(rule)))
    document["rules"] = table
    return tomlkit.dumps(document)


def parse_rules(
    text: str, schemas: Mapping[str, type[msgspec.Struct]], local_domains: Sequence[str]
) -> tuple[list[dict[str, Any]], list[RuleConfig]]:
    """The rules ``text`` holds, as written and as checked; a :class:`ConfigError` naming the
    key and the line of ``text`` when they would not load, or when ``text`` holds anything
    but ``[[rules]]``."""
    config = parse_config(text, schemas, source="rules")
    data = tomllib.loads(text)
    others = sorted(set(data) - {"rules"})
    if others:
        raise ConfigError(f"only [[rules]] tables here, not {others}", path="rules", key=others[0])
    written = data.get("rules")
    if not isinstance(written, list) or not written:
        raise ConfigError("at least one [[rules]] table is needed", path="rules", key="rules")
    compile_rules(config.rules, local_domains, text=text, source="rules")
    return written, list(config.rules)


class DryRunRow(msgspec.Struct, kw_only=True):
    """One recent message whose action the candidate rules would change."""

    id: str
    time: float
    sender: str
    recipients: list[str]
    subject: str | None
    verdict: str
    recorded: str
    now: list[str]
    candidate: list[str]


def _outcomes(
    rules: Sequence[RuleConfig],
    ruleset: RuleSet,
    event: MessageEvent,
    directory: GroupSource | None,
) -> list[str]:
    """``rule: action`` for each recipient of ``event`` under ``rules``, with its verdict."""
    found = []
    for recipient in event.rcpt_to:
        match = ruleset.match(
            event.mail_from, recipient, client=event.client_address, directory=directory
        )
        rule = match.rule if match else rules[-1]
        found.append(f"{rule.name}: {decide_action(rule, event.verdict).kind.value}")
    return found


def dry_run(
    events: Iterable[MessageEvent],
    current: Sequence[RuleConfig],
    candidate: Sequence[RuleConfig],
    local_domains: Sequence[str] = (),
    directory: GroupSource | None = None,
) -> list[DryRunRow]:
    """The events whose action would differ under ``candidate`` from under ``current``, each
    judged on its recorded verdict (detectors are not run again: a rule's ``detectors`` change
    shows in ``mailwarden replay``, which scans the stored mail)."""
    compiled = compile_rules(current, local_domains), compile_rules(candidate, local_domains)
    rows = []
    for event in events:
        if not event.rcpt_to:
            continue
        before = _outcomes(current, compiled[0], event, directory)
        after = _outcomes(candidate, compiled[1], event, directory)
        if [o.rpartition(": ")[2] for o in before] == [o.rpartition(": ")[2] for o in after]:
            continue
        verdict = event.verdict
        rows.append(
            DryRunRow(
                id=event.id,
                time=event.time,
                sender=event.mail_from,
                recipients=list(event.rcpt_to),
                subject=event.subject,
                verdict=f"antivirus {verdict.antivirus.value}, spam {verdict.spam.value}",
                recorded=f"{event.rule}: {event.action}",
                now=before,
                candidate=after,
            )
        )
    return rows

"""Rule patterns: the sender and recipient grammar of ``[[rules]]`` and its compilation.

Below both the config (which compiles every rule's patterns at load, so a bad one is reported
with its key and line before the first message) and the policy (which matches the compiled
patterns per recipient): neither imports the other for them.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError
from .groupnames import group_key

__all__ = [
    "Pattern",
    "RulePatterns",
    "compile_pattern",
    "compile_rule_patterns",
    "domain_of",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled sender or recipient pattern; ``text`` is what the config says."""

    text: str
    kind: str
    value: str = ""
    regex: re.Pattern[str] | None = None

    def matches(self, address: str, groups: Callable[[], frozenset[str]]) -> bool:
        """Whether ``address`` (lower case) matches; ``groups`` is asked only for groups."""
        kind = self.kind
        if kind == "any":
            return True
        if kind == "null":
            return address == ""
        if kind == "address":
            return address == self.value
        if kind == "domain":
            return domain_of(address) == self.value
        if kind == "subdomain":
            domain = domain_of(address)
            return domain == self.value or domain.endswith("." + self.value)
        if kind == "group":
            return self.value in groups()
        assert self.regex is not None
        return self.regex.fullmatch(address) is not None


def domain_of(address: str) -> str:
    """The part after the last ``@``, or ``""`` for an address without one (the null sender)."""
    return address.rpartition("@")[2] if "@" in address else ""


def compile_pattern(text: str) -> Pattern:
    """Compile one pattern; raises ``ValueError`` saying what is wrong with it.

    ``*`` everything (the null sender too), ``<>`` the null sender, ``@example.org`` that
    domain, ``@.example.org`` it and its subdomains, ``re:...`` a regular expression that must
    match the whole address (case-insensitive), ``group:NAME`` a directory group by CN or DN,
    a pattern with ``*``, ``?`` or ``[`` a shell wildcard, anything else one address.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered == "*":
        return Pattern(text, "any")
    if lowered == "<>":
        return Pattern(text, "null")
    if lowered.startswith("re:"):
        try:
            regex = re.compile(stripped[3:], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {stripped[3:]!r}: {exc}") from None
        return Pattern(text, "regex", regex=regex)
    if lowered.startswith("group:"):
        name = stripped[6:].strip()
        if not name:
            raise ValueError("group: needs a group name or DN")
        return Pattern(text, "group", group_key(name))
    if lowered.startswith("@."):
        if not lowered[2:] or any(c in lowered for c in "*?["):
            raise ValueError(f"invalid domain pattern {text!r}")
        return Pattern(text, "subdomain", lowered[2:])
    if lowered.startswith("@") and not any(c in lowered for c in "*?["):
        if not lowered[1:]:
            raise ValueError("@ needs a domain")
        return Pattern(text, "domain", lowered[1:])
    if any(c in lowered for c in "*?["):
        return Pattern(text, "wildcard", regex=re.compile(fnmatch.translate(lowered)))
    if not lowered:
        raise ValueError("empty pattern (use <> for the null sender)")
    return Pattern(text, "address", lowered)


class RuleLike(Protocol):
    """What pattern compilation reads of a rule (:class:`~mailwarden.config.RuleConfig`)."""

    @property
    def senders(self) -> Sequence[str]: ...
    @property
    def recipients(self) -> Sequence[str]: ...
    @property
    def clients(self) -> Sequence[str]: ...
    @property
    def direction(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RulePatterns:
    """One rule's compiled sender and recipient patterns and client networks."""

    senders: tuple[Pattern, ...]
    recipients: tuple[Pattern, ...]
    networks: tuple[Network, ...]


def compile_rule_patterns(
    rules: Sequence[RuleLike],
    local_domains: Sequence[str] = (),
    *,
    locate: Callable[[list[str | int]], int | None] | None = None,
    source: str | None = None,
) -> list[RulePatterns]:
    """Compile every rule's patterns and networks, in order; a bad one is a
    :class:`ConfigError` naming the key (``rules[2].recipients[0]``) and, when ``locate``
    finds where a key is written, the line."""

    def fail(index: int, name: str, item: int | None, message: str) -> ConfigError:
        key = f"rules[{index}].{name}" + (f"[{item}]" if item is not None else "")
        line = locate(["rules", index, name]) if locate is not None else None
        return ConfigError(message, path=source, key=key, line=line)

    compiled: list[RulePatterns] = []
    for index, rule in enumerate(rules):
        lists: dict[str, tuple[Pattern, ...]] = {}
        for name in ("senders", "recipients"):
            patterns = []
            for item, pattern in enumerate(getattr(rule, name)):
                try:
                    patterns.append(compile_pattern(pattern))
                except ValueError as exc:
                    raise fail(index, name, item, str(exc)) from None
            lists[name] = tuple(patterns)
        networks: list[Network] = []
        for item, value in enumerate(rule.clients):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError as exc:
                raise fail(index, "clients", item, f"not an address or network: {exc}") from None
        if rule.direction != "any" and not local_domains:
            raise fail(
                index,
                "direction",
                None,
                f"direction {rule.direction!r} needs [gateway] local_domains",
            )
        compiled.append(RulePatterns(lists["senders"], lists["recipients"], tuple(networks)))
    return compiled

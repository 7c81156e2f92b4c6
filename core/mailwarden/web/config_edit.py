"""Config editing from the web and the API: a section (or one of its keys) or the rules
written into the config file with its comments and other sections kept, validated whole
before it is written, then reloaded (the other workers through the supervisor)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import tomlkit
from starlette.responses import JSONResponse, Response

from mailwarden_sdk.files import atomic_write

from ..config import RuleConfig, parse_config
from ..errors import ConfigError
from ..workers import request_reload
from .state import WebState


class ConfigRefused(Exception):
    """A config change that was not written: why, and the HTTP status that says so."""

    def __init__(self, message: str, status: int, key: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key = key


def config_table(state: WebState, section: str) -> dict[str, Any]:
    """What the config file itself holds for ``section`` (not the defaults filled in)."""
    source = state.gateway.config.source
    if not source:
        return {}
    document = tomlkit.parse(Path(source).read_text(encoding="utf-8"))
    table = document.get(section)
    value = table.unwrap() if table is not None else {}
    return value if isinstance(value, dict) else {}


def write_config(state: WebState, key: str | tuple[str, str], value: Any) -> list[str]:
    """Set ``key`` (a section, or a section's key) of the config file to ``value``: validated
    whole, written atomically with the file's comments and other sections kept, then reloaded
    (rules swap at once). Returns the sections that need a restart; raises
    :class:`ConfigRefused` with the key named when the result would not load."""
    gateway = state.gateway
    source = gateway.config.source
    if not source:
        raise ConfigRefused("the gateway runs without a config file", 409)
    path = Path(source)
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    if key == "rules":
        table = tomlkit.aot()
        for rule in value:
            table.append(tomlkit.item(rule))
        document["rules"] = table
    elif isinstance(key, tuple):
        section, name = key
        if section not in document:
            document[section] = tomlkit.table()
        holder: Any = document[section]
        if value is None or value == {}:
            holder.pop(name, None)
        else:
            holder[name] = tomlkit.item(value)
    else:
        document[key] = tomlkit.item({k: v for k, v in value.items() if v is not None})
    text = tomlkit.dumps(document)
    try:
        parse_config(text, gateway.plugins.config_schemas(), source=source)
    except ConfigError as exc:
        raise ConfigRefused(str(exc), 422, exc.key) from exc
    atomic_write(path, text, mode=path.stat().st_mode & 0o777)
    changed = gateway.reload_config()
    # Under a supervisor, the other workers reload too.
    request_reload()
    state.refresh()
    return changed


def rewrite_config(state: WebState, key: str | tuple[str, str], value: Any) -> Response | list[str]:
    """:func:`write_config` for the API: the refusal as a JSON answer."""
    try:
        return write_config(state, key, value)
    except ConfigRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)


def file_rules(state: WebState) -> list[dict[str, Any]]:
    """The rules as the config file writes them (without the defaults filled in), or the
    running rules when the file has none (the built-in ones then apply)."""
    source = state.gateway.config.source
    if source:
        document = tomlkit.parse(Path(source).read_text(encoding="utf-8"))
        rules = document.get("rules")
        if rules is not None:
            value = rules.unwrap()
            if isinstance(value, list) and value:
                return value
    return [msgspec.to_builtins(rule) for rule in state.gateway.config.rules]


# Characters that make a sender a pattern rather than one address (wildcards, "re:",
# "group:", "@domain"): an allow rule names exactly the address the message came from.
_PATTERN = re.compile(r"[*?<>\s]|^(re|group):|^@")
ALLOW_SPAM_ACTIONS = ("spam", "probable_spam", "bulk")


def allow_rule_name(sender: str, recipient: str) -> str:
    """The name of the rule that always allows ``sender`` for ``recipient``."""
    return f"always allow {sender.lower()} to {recipient.lower()}"


def allow_sender(state: WebState, sender: str, recipient: str) -> bool:
    """Put a rule first that delivers mail from ``sender`` to ``recipient`` without the spam
    check (the antispam detector off, spam statuses delivered); every other check and action
    stays that of the rule that covers them now. ``False`` when the rule is there already;
    raises :class:`ConfigRefused` for a sender that is no single address (a bounce's ``<>``,
    wildcards)."""
    if not sender or "@" not in sender or _PATTERN.search(sender):
        raise ConfigRefused(f"mail from {sender or '<>'!r} cannot be always allowed", 422)
    name = allow_rule_name(sender, recipient)
    rules = file_rules(state)
    if any(rule.get("name") == name for rule in rules):
        return False
    rule = msgspec.to_builtins(state.gateway.rule_for(sender, recipient))
    detectors = [d for d in rule["detectors"] if d != "-antispam"]
    rule.update(
        name=name,
        senders=[sender.lower()],
        recipients=[recipient.lower()],
        clients=[],
        direction="any",
        detectors=[*detectors, "-antispam"],
    )
    rule["actions"].update(dict.fromkeys(ALLOW_SPAM_ACTIONS, "deliver"))
    default = msgspec.to_builtins(msgspec.convert({"name": name}, RuleConfig))
    write_config(state, "rules", [_differing(rule, default), *rules])
    return True


def _differing(value: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``value`` (tables compared key by key) that are not their defaults: the
    rule as a person would write it."""
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(default.get(key), dict):
            inner = _differing(item, default[key])
            if inner:
                kept[key] = inner
        elif item != default.get(key) or key == "name":
            kept[key] = item
    return kept

"""Config editing from the web and the API: a section (or one of its keys) or the rules
written into the config file with its comments and other sections kept, validated whole
before it is written, then reloaded (the other workers through the supervisor)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import tomlkit
from starlette.responses import JSONResponse, Response

from ..config import parse_config
from ..errors import ConfigError
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    changed = gateway.reload_config()
    if os.environ.get("MAILWARDEN_WORKER") == "1":
        # The other workers reload when the supervisor passes SIGHUP on to them.
        os.kill(os.getppid(), signal.SIGHUP)
    state.refresh()
    return changed


def rewrite_config(state: WebState, key: str | tuple[str, str], value: Any) -> Response | list[str]:
    """:func:`write_config` for the API: the refusal as a JSON answer."""
    try:
        return write_config(state, key, value)
    except ConfigRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

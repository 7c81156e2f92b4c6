"""The configuration pushed from the console node to the others, and its version per node.

The console node sends its whole config file; the receiving node keeps its own values of the
keys that name or place a node (:data:`LOCAL_KEYS`), validates the result as a start would,
writes it atomically and reloads (the rules at once, other sections at the next start, as
SIGHUP does). A node's version is the SHA-256 of its file without those keys: nodes showing
the same version run the same configuration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomlkit

from mailwarden_sdk.files import atomic_write

from ..config import parse_config
from ..errors import ConfigError
from ..workers import request_reload

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = ["LOCAL_KEYS", "apply_pushed", "config_version", "merged"]

#: (section, key) that stay each node's own when a configuration is pushed.
LOCAL_KEYS = (
    ("gateway", "hostname"),
    ("gateway", "home"),
    ("cluster", "name"),
    # Each node's own certificate for mutual TLS (the CA is the cluster's).
    ("cluster", "tls_cert"),
    ("cluster", "tls_key"),
    ("smtp", "listen"),
    ("web", "listen"),
    ("metrics", "listen"),
)


def _without_local(document: Any) -> Any:
    for section, key in LOCAL_KEYS:
        table = document.get(section)
        if table is not None and key in table:
            del table[key]
    return document


def config_version(text: str) -> str:
    """The version of a config file's text (12 hex digits; local keys left out)."""
    canonical = tomlkit.dumps(_without_local(tomlkit.parse(text)))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def merged(pushed: str, own: str) -> str:
    """``pushed`` with this node's values of :data:`LOCAL_KEYS` from ``own``."""
    document, mine = tomlkit.parse(pushed), tomlkit.parse(own)
    for section, key in LOCAL_KEYS:
        value = mine.get(section, {}).get(key)
        table = document.get(section)
        if value is None:
            if table is not None and key in table:
                del table[key]
            continue
        if table is None:
            document[section] = tomlkit.table()
            table = document[section]
        table[key] = value
    return tomlkit.dumps(document)


def apply_pushed(gateway: Gateway, pushed: str) -> tuple[str, list[str]]:
    """Write ``pushed`` (merged with this node's local keys) as the config file and reload;
    the new version and the sections that apply at the next start. Raises
    :class:`ConfigError` (naming the key and line) and changes nothing when it is invalid."""
    source = gateway.config.source
    if not source:
        raise ConfigError("this node runs on its embedded defaults: no config file to replace")
    path = Path(source)
    text = merged(pushed, path.read_text(encoding="utf-8"))
    parse_config(text, gateway.plugins.config_schemas(), source=source)
    atomic_write(path, text, mode=path.stat().st_mode & 0o777)
    changed = gateway.reload_config()
    # Under a supervisor, the other workers reload too.
    request_reload()
    return config_version(text), changed

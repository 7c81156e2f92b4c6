"""mailwarden: an email security gateway built as a plugin framework around a native core.

Library use::

    from mailwarden import Gateway
    async with Gateway() as gateway:
        decision = await gateway.scan(raw_bytes)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .config import Config, load_config
    from .errors import ConfigError, DeliveryError, MailwardenError, PluginError
    from .pipeline import Decision, Gateway, Outcome

__all__ = [
    "Config",
    "ConfigError",
    "Decision",
    "DeliveryError",
    "Gateway",
    "MailwardenError",
    "Outcome",
    "PluginError",
    "__version__",
    "load_config",
]

# Where each name of the face lives. They load on first use: importing any module of the
# package runs this file, and the `mailwarden` command (launch.py) must get to check the native
# core before anything loads it.
_FACE = {
    "Config": ".config",
    "load_config": ".config",
    "ConfigError": ".errors",
    "DeliveryError": ".errors",
    "MailwardenError": ".errors",
    "PluginError": ".errors",
    "Decision": ".pipeline",
    "Gateway": ".pipeline",
    "Outcome": ".pipeline",
}


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

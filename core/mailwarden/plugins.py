"""Building the plugin manager of one gateway: hook specs, entry points, explicit plugins.

Nothing here runs at import time; every gateway (and every test) builds its own manager, so
two gateways in one process never share plugin state.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy

from mailwarden_sdk import PROJECT_NAME, IncompatibleSdk, check_compatible, hookspecs

from .errors import PluginError

__all__ = ["LoadedPlugin", "PluginSet", "build_plugin_manager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedPlugin:
    """One registered plugin: its name, where it came from and which hooks it implements."""

    name: str
    obj: Any
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass
class PluginSet:
    """A plugin manager with what the core needs to know about each plugin."""

    pm: pluggy.PluginManager
    plugins: dict[str, LoadedPlugin] = field(default_factory=dict)

    def config_schemas(self) -> dict[str, type[msgspec.Struct]]:
        """Each plugin's declared config section and Struct; a section claimed twice is an error."""
        schemas: dict[str, type[msgspec.Struct]] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.mailwarden_config_schema.get_hookimpls():
            result: Any = impl.function()
            if result is None:
                continue
            section, schema = result
            if section in owners:
                raise PluginError(
                    f"config section [{section}] is claimed by both {owners[section]!r} "
                    f"and {impl.plugin_name!r}"
                )
            owners[section] = impl.plugin_name
            schemas[section] = schema
        return schemas


def _instantiate(name: str, obj: Any) -> Any:
    # Entry points may name a class (one instance per gateway, so state is never shared
    # between gateways) or a module / ready object (registered as is).
    if inspect.isclass(obj):
        try:
            return obj()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} could not be created: {exc!r}") from exc
    return obj


def build_plugin_manager(
    *,
    entry_points: bool = True,
    extra: Mapping[str, Any] | None = None,
    blocked: Iterable[str] = (),
) -> PluginSet:
    """A fresh manager with the built-in and installed plugins plus ``extra`` ones.

    ``extra`` maps names to plugin objects or classes (tests, embedding applications). Plugins
    named in ``blocked`` are not registered at all. Unknown ``mailwarden_*`` hook names on a
    plugin are an error (``check_pending``), so a typo never silently disables a detector.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    result = PluginSet(pm)
    blocked = set(blocked)
    for name in blocked:
        pm.set_blocked(name)

    def add(name: str, obj: Any, dist: str | None, version: str | None) -> None:
        if name in blocked:
            return
        if name in result.plugins:
            raise PluginError(f"two plugins are named {name!r}")
        try:
            check_compatible(name, getattr(obj, "requires_sdk", None))
        except IncompatibleSdk as exc:
            raise PluginError(str(exc)) from exc
        plugin = _instantiate(name, obj)
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        result.plugins[name] = LoadedPlugin(name, plugin, dist, version, hooks)

    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=PROJECT_NAME), key=lambda e: e.name):
            if ep.name in blocked:
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}"
                ) from exc
            if any(obj is given for given in (extra or {}).values()):
                # The caller passed this very plugin explicitly (the test harness does, for
                # a plugin that is also installed): register it once, under the caller's name.
                continue
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            add(ep.name, obj, dist, version)
    for name, obj in (extra or {}).items():
        add(name, obj, None, getattr(obj, "__version__", None))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc

    if os.environ.get("MAILWARDEN_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: log.debug("%s", text.rstrip()))
        pm.enable_tracing()
    return result

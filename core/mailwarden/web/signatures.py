"""Which signature databases and rule sets the detectors load, and their versions.

Read through the public surface plugins already offer, never their internals: a plugin whose
command group (``mailwarden_cli_commands``) has an ``info`` command with a ``--json`` flag is
asked ``mailwarden <group> info --json --config <file>`` in a child process, the same answer an
administrator gets in a shell (for the built-in antivirus: ``mailwarden sigs info --json``).
Answers are kept for a minute, so a busy dashboard does not start a process per page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..pipeline import Gateway

__all__ = ["SignatureInfo", "info_commands"]

_TTL = 60.0
_TIMEOUT = 60.0


def info_commands(gateway: Gateway) -> list[tuple[str, str, bool]]:
    """``(plugin, command group, takes --config)`` for every plugin group with ``info --json``."""
    found: list[tuple[str, str, bool]] = []
    for impl in gateway.plugins.pm.hook.mailwarden_cli_commands.get_hookimpls():
        try:
            produced: Any = impl.function()
        except Exception:  # a broken plugin command must not break the page
            continue
        for command in produced or ():
            if not isinstance(command, click.Group) or not command.name:
                continue
            info = command.commands.get("info")
            if info is None:
                continue
            options = {opt for p in info.params for opt in getattr(p, "opts", ())}
            if "--json" in options:
                found.append((impl.plugin_name, command.name, "--config" in options))
    return found


def _ask(gateway: Gateway, plugin: str, group: str, with_config: bool) -> dict[str, Any]:
    args = [sys.executable, "-m", "mailwarden", group, "info", "--json"]
    source = gateway.config.source
    if with_config and source:
        args += ["--config", source]
    entry: dict[str, Any] = {"plugin": plugin, "command": f"mailwarden {group} info --json"}
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            env={**os.environ, "MAILWARDEN_HOME": str(gateway.config.home)},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**entry, "error": f"could not run: {exc}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**entry, "error": f"exit status {done.returncode}: {last[:300]}"}
    try:
        info = json.loads(done.stdout)
    except ValueError:
        return {**entry, "error": "the command did not answer JSON"}
    if not isinstance(info, dict):
        return {**entry, "error": "the command did not answer a JSON object"}
    return {
        **entry,
        # The names the built-in antivirus uses; another plugin's are shown as they come.
        "version": info.get("installed_version") or info.get("version") or "built-in",
        "signatures": info.get("signatures"),
        "report": info.get("report", ""),
        "sources": info.get("sources", []),
        "info": info,
    }


class SignatureInfo:
    """The answers of every plugin's ``info --json``, cached for a minute."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict[str, Any]]] | None = None

    def get(self) -> list[dict[str, Any]]:
        """One entry per plugin that reports its signatures (``error`` when it failed)."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < _TTL:
                return self._cached[1]
            result = [
                _ask(self.gateway, plugin, group, with_config)
                for plugin, group, with_config in info_commands(self.gateway)
            ]
            self._cached = (time.monotonic(), result)
            return result

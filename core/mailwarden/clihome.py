"""Which config file a command reads: shared by every command group.

The main group (:mod:`mailwarden.cli`) registers the groups of other modules (rules,
directory, web, bench); they find their config here rather than through the main group, so
that no command module imports the one that registers it.
"""

from __future__ import annotations

import os
import sys

import click

from .config import default_home

__all__ = ["EXIT_ERROR", "config_path", "home_config_path", "no_home"]

EXIT_ERROR = 2


def config_path(explicit: str | None) -> str | None:
    """``--config``, else ``$MAILWARDEN_CONFIG``, else ``<home>/mailwarden.toml`` if present."""
    if explicit:
        return explicit
    if os.environ.get("MAILWARDEN_CONFIG"):
        return os.environ["MAILWARDEN_CONFIG"]
    candidate = default_home() / "mailwarden.toml"
    return str(candidate) if candidate.exists() else None


def no_home() -> str | None:
    """Why there is no home to work in, or ``None`` when there is one.

    A home is named by ``$MAILWARDEN_HOME``, by a config file (``--config``,
    ``$MAILWARDEN_CONFIG``), or found as ``./var``; a command run elsewhere must not make a
    fresh ``./var`` in whatever folder it was started in.
    """
    if os.environ.get("MAILWARDEN_HOME") or os.environ.get("MAILWARDEN_CONFIG"):
        return None
    if default_home().is_dir():
        return None
    return (
        f"no mailwarden home: $MAILWARDEN_HOME is not set, no --config was given and "
        f"{default_home()} does not exist; run the command in the folder that holds var/, "
        f"set MAILWARDEN_HOME, give --config, or make a home with `mailwarden init`"
    )


def home_config_path(explicit: str | None) -> str | None:
    """:func:`config_path` for a command that works on the home's stores: refuses (exit 2,
    saying where it looked) rather than creating a home where none was meant to be."""
    if explicit is None:
        reason = no_home()
        if reason is not None:
            click.echo(f"mailwarden: {reason}", err=True)
            sys.exit(EXIT_ERROR)
    return config_path(explicit)

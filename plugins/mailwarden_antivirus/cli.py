"""``mailwarden sigs``: what signature set is loaded, and updating it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailwarden_sdk import command_host, config_option, plugin_data_dir

from .signatures import load_signatures

if TYPE_CHECKING:
    from . import AntivirusConfig
from .updates import UpdateError, current_dir, history, update

__all__ = ["sigs"]


def _setup(config_path: str | None) -> tuple[AntivirusConfig, Path]:
    from . import DETECTOR, AntivirusConfig

    host = command_host(config_path)
    config = host.config_for(DETECTOR) or AntivirusConfig()
    return config, plugin_data_dir(host, DETECTOR)


def _paths(config: AntivirusConfig) -> list[Path]:
    from . import signature_paths

    return signature_paths(config)


@click.group()
def sigs() -> None:
    """Antivirus signatures: the loaded set and its updates."""


@sigs.command("info")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sigs_info(config_path: str | None, as_json: bool) -> None:
    """Show the signature set a gateway would load now, and the last updates."""
    from . import BUILTIN_ONLY, builtin_only

    config, data_dir = _setup(config_path)
    installed = current_dir(data_dir / "updates")
    paths = _paths(config) + ([installed] if installed else [])
    loaded = load_signatures(paths, cache_dir=data_dir)
    attempts = history(data_dir / "updates")
    info = {
        "installed_version": installed.name if installed else None,
        "signatures": loaded.count,
        "skipped": dict(loaded.skipped),
        "sources": loaded.sources,
        "database": loaded.db_path,
        # the line the web dashboard shows for this detector: the warning leads it
        "report": (f"WARNING: {BUILTIN_ONLY}. " if builtin_only(loaded) else "") + loaded.report(),
        "builtin_only": builtin_only(loaded),
        "updates": attempts[-5:],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"installed update  {info['installed_version'] or 'none'}")
    click.echo(f"loaded            {loaded.report()}")
    if builtin_only(loaded):
        click.echo(f"WARNING           {BUILTIN_ONLY}")
    click.echo(f"database          {loaded.db_path or '(not compiled)'}")
    for attempt in attempts[-5:]:
        when = dt.datetime.fromtimestamp(float(str(attempt["time"]))).isoformat(timespec="seconds")
        if not attempt.get("ok"):
            what = f"refused: {attempt.get('error')}"
        elif attempt.get("changed"):
            what = f"version {attempt.get('version')} installed"
        else:
            what = f"version {attempt.get('version')} already current"
        click.echo(f"update {when}  {attempt.get('source')}: {what}")


@sigs.command("update")
@config_option
@click.option(
    "--from", "source", help="A mirror directory or URL instead of [antivirus.updates] source."
)
def sigs_update(config_path: str | None, source: str | None) -> None:
    """Fetch, verify, compile and install the mirror's set; running workers switch to it
    within [antivirus.updates] check_interval. Meant for cron or a systemd timer."""
    config, data_dir = _setup(config_path)

    def compile_check(directory: Path) -> int:
        new = load_signatures([directory])
        if not new.count:
            raise UpdateError(f"the new set holds no usable signature ({new.report()})")
        # Compiled now with the configured files, as the workers will load it: they then map
        # the cached database instead of each compiling it.
        return load_signatures([*_paths(config), directory], cache_dir=data_dir).count

    try:
        result = update(config.updates, data_dir / "updates", compile_check, source)
    except UpdateError as exc:
        raise click.ClickException(f"update refused, current set kept: {exc}") from exc
    if result.changed:
        click.echo(f"installed version {result.version}: {result.signatures} signatures in use")
    else:
        click.echo(f"version {result.version} is already installed")

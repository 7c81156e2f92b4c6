"""The ``mailwarden`` command line."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import msgspec

from . import __version__
from .config import Config, default_home
from .errors import MailwardenError
from .events import EventQuery, MessageEventLog
from .pipeline import Decision, Gateway
from .plugins import build_plugin_manager
from .privileges import dumps_off, private_umask

EXIT_CLEAN, EXIT_DETECTED, EXIT_ERROR = 0, 1, 2


def _config_path(explicit: str | None) -> str | None:
    """``--config``, else ``$MAILWARDEN_CONFIG``, else ``<home>/mailwarden.toml`` if present."""
    if explicit:
        return explicit
    if os.environ.get("MAILWARDEN_CONFIG"):
        return os.environ["MAILWARDEN_CONFIG"]
    candidate = default_home() / "mailwarden.toml"
    return str(candidate) if candidate.exists() else None


def _fail(message: str) -> None:
    click.echo(f"mailwarden: {message}", err=True)
    sys.exit(EXIT_ERROR)


class _Cli(click.Group):
    """The command group, with the commands plugins add through ``mailwarden_cli_commands``."""

    _loaded: dict[str, click.Command] | None = None

    def _plugin_commands(self) -> dict[str, click.Command]:
        # Loaded only when a name is not a built-in command, so a broken plugin never stops
        # `mailwarden config check` or `mailwarden plugins` from diagnosing it.
        if self._loaded is None:
            self._loaded = {}
            try:
                plugins = build_plugin_manager()
            except MailwardenError:
                return self._loaded
            for impl in plugins.pm.hook.mailwarden_cli_commands.get_hookimpls():
                produced: Any = impl.function()
                for command in produced or ():
                    if isinstance(command, click.Command) and command.name:
                        self._loaded.setdefault(command.name, command)
        return self._loaded

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands().get(cmd_name)


class _HostLoader:
    """Gives plugin commands the gateway's Host (``mailwarden_sdk.command_host``)."""

    def load(self, config_path: str | None) -> Any:
        from .config import load_config
        from .pipeline import _Host

        plugins = build_plugin_manager()
        try:
            config = load_config(_config_path(config_path), plugins.config_schemas())
        except MailwardenError as exc:
            raise click.ClickException(str(exc)) from exc
        return _Host(config)


@click.group(cls=_Cli)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """mailwarden: email security gateway."""
    ctx.obj = _HostLoader()
    # Stores hold mail, addresses and credentials: whatever any command creates is the
    # service account's alone (folders 0700, files 0600). Restored when the command ends, for
    # callers that run commands in their own process (CliRunner).
    previous = private_umask()
    ctx.call_on_close(lambda: os.umask(previous))
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@cli.command()
def version() -> None:
    """Print the version of mailwarden and of its native core."""
    import mailwarden_native

    click.echo(f"mailwarden {__version__}")
    click.echo(f"native core {getattr(mailwarden_native, '__version__', __version__)}")
    click.echo(f"python {sys.version.split()[0]}")


@cli.command()
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Directory to initialise (default: $MAILWARDEN_HOME or ./var).",
)
def init(home: str | None) -> None:
    """Write a default config file into the home directory (never overwrites)."""
    from .serve import write_default_config

    path = Path(home or default_home()) / "mailwarden.toml"
    click.echo(f"{'wrote' if write_default_config(path) else 'kept existing'} {path}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
def serve(config_path: str | None) -> None:
    """Run the gateway: SMTP listener, pipeline, delivery, until SIGTERM/SIGINT.

    Without a config file, one with the defaults is written to $MAILWARDEN_HOME (./var).
    """
    from .serve import serve_forever, write_default_config

    # Before the config (with its bind password) is read: no memory dump unless configured.
    dumps_off(for_good=False)
    path = _config_path(config_path)
    if path is None:
        target = default_home() / "mailwarden.toml"
        write_default_config(target)
        path = str(target)
    # Absolute: workers re-read it, and with memory dumps on they run in the dumps folder.
    path = str(Path(path).absolute())
    try:
        gateway = Gateway.from_file(path)
        serve_forever(gateway, announce=lambda line: click.echo(line))
    except MailwardenError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc}")


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (JSON lines).")
@click.option("--sender", default="", help="Envelope sender to scan as.")
@click.option("--rcpt", "recipients", multiple=True, help="Envelope recipient (repeatable).")
def scan(
    paths: tuple[str, ...],
    config_path: str | None,
    as_json: bool,
    sender: str,
    recipients: tuple[str, ...],
) -> None:
    """Scan message files (or directories of them) without delivering anything.

    Exit status: 0 all clean, 1 something detected, 2 an error (unreadable file, scan error).
    """
    from mailwarden_sdk import Envelope

    async def main() -> int:
        worst = EXIT_CLEAN
        async with Gateway.from_file(_config_path(config_path)) as gateway:
            rows: list[tuple[str, Decision | None, str | None]] = []
            for path in _files(paths):
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    rows.append((str(path), None, exc.strerror or str(exc)))
                    continue
                envelope = Envelope(mail_from=sender, rcpt_to=list(recipients))
                rows.append((str(path), await gateway.scan(raw, envelope), None))
            for _name, decision, _error in rows:
                if decision is None:
                    worst = EXIT_ERROR
                elif decision.verdict.errors and worst != EXIT_ERROR:
                    worst = EXIT_ERROR
                elif decision.verdict.detected and worst == EXIT_CLEAN:
                    worst = EXIT_DETECTED
            _print_scan(rows, as_json)
        return worst

    try:
        sys.exit(asyncio.run(main()))
    except MailwardenError as exc:
        _fail(str(exc))


def _print_scan(rows: list[tuple[str, Decision | None, str | None]], as_json: bool) -> None:
    if as_json:
        for name, decision, error in rows:
            record: dict[str, Any] = {"file": name}
            if decision is None:
                record["error"] = error
            else:
                record.update(
                    rule=decision.rule.name,
                    action=decision.action.kind.value,
                    reason=decision.action.reason,
                    verdict=msgspec.to_builtins(decision.verdict),
                    parts=len(decision.message.parts),
                    timings_ms=decision.timings_ms,
                )
            click.echo(json.dumps(record, sort_keys=True))
        return
    width = max([len(name) for name, _, _ in rows] + [4])
    click.echo(f"{'FILE':<{width}}  {'ANTIVIRUS':<11}  {'SPAM':<13}  {'ACTION':<10}  FINDINGS")
    for name, decision, error in rows:
        if decision is None:
            click.echo(f"{name:<{width}}  {'-':<11}  {'-':<13}  {'error':<10}  {error}")
            continue
        verdict = decision.verdict
        codes = ", ".join(
            f.code + (f"({f.details['signature']})" if "signature" in f.details else "")
            for f in verdict.findings
        )
        click.echo(
            f"{name:<{width}}  {verdict.antivirus.value:<11}  {verdict.spam.value:<13}  "
            f"{decision.action.kind.value:<10}  {codes or '-'}"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their version and the hooks they implement."""
    try:
        plugin_set = build_plugin_manager()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    items = list(plugin_set.plugins.values())
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "distribution": p.distribution,
                        "version": p.version,
                        "hooks": list(p.hooks),
                    }
                    for p in items
                ],
                indent=2,
            )
        )
        return
    for p in items:
        click.echo(f"{p.name:<12} {p.distribution or '-'} {p.version or '-'}")
        click.echo(f"{'':<12} hooks: {', '.join(p.hooks)}")


@cli.group()
def config() -> None:
    """Configuration tools."""


@config.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown) for the core and the loaded plugins."""
    from .config_reference import render_reference

    try:
        schemas = build_plugin_manager().config_schemas()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    click.echo(render_reference(schemas), nl=False)


@config.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def config_check(file: str | None) -> None:
    """Validate a config file (default: the active one); errors name the key and the line."""
    from .config import load_config

    path = _config_path(file)
    if path is None:
        click.echo("no config file; the embedded defaults are valid")
        return
    try:
        plugin_set = build_plugin_manager()
        loaded = load_config(path, plugin_set.config_schemas())
    except MailwardenError as exc:
        _fail(str(exc))
        return
    from .ingress.smtp import relay_warnings

    for warning in relay_warnings(loaded):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: ok")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--since", help="ISO time or N[smhd] ago (e.g. 2h).")
@click.option("--until", help="ISO time or N[smhd] ago; events before it.")
@click.option("--sender", help="Address, local part or domain.")
@click.option("--rcpt", "recipient", help="Address, local part or domain.")
@click.option("--subject", help="Words the subject contains.")
@click.option(
    "--action", type=click.Choice(["deliver", "reject", "tempfail", "discard", "quarantine"])
)
@click.option("--status", help="Verdict status, e.g. infected, spam, clean.")
@click.option("--message-id")
@click.option("--client", "client_address", help="Client IP (messages, auth log).")
@click.option(
    "--log",
    "which",
    type=click.Choice(["messages", "app", "auth"]),
    default="messages",
    show_default=True,
    help="The message event log, the application log or the authentication log.",
)
@click.option("--actor", help="Account name (app: who acted; auth: who logged in).")
@click.option(
    "--kind",
    type=click.Choice(["admin", "login", "update", "error", "start", "stop"]),
    help="Application log entries of this kind.",
)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def events(
    config_path: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    which: str,
    actor: str | None,
    kind: str | None,
    **filters: Any,
) -> None:
    """Search the message event log (through its indices), newest first.

    ``--log app`` reads the application log (admin actions, logins, updates, errors, starts
    and stops); ``--log auth`` the authentication log (login attempts); both newest first,
    with the same ``--since``/``--until``.
    """
    from .config import load_config

    try:
        cfg = load_config(_config_path(config_path), build_plugin_manager().config_schemas())
    except MailwardenError as exc:
        _fail(str(exc))
        return
    if which != "messages":
        misplaced = [name for name, value in filters.items() if value and name != "limit"]
        if which == "auth":
            misplaced = [name for name in misplaced if name != "client_address"]
        if kind and which == "auth":
            misplaced.append("kind")
        if misplaced:
            options = ", ".join(
                "--" + n.replace("_address", "").replace("_", "-") for n in misplaced
            )
            raise click.UsageError(f"{options}: not a filter of the {which} log")
        _print_log(
            cfg,
            which,
            since=_parse_since(since) if since else None,
            until=_parse_since(until) if until else None,
            actor=actor,
            kind=kind,
            client=filters.get("client_address"),
            limit=filters["limit"],
            as_json=as_json,
        )
        return
    if actor or kind:
        raise click.UsageError("--actor and --kind filter the app and auth logs (--log)")
    log = MessageEventLog(cfg.path_in_home(cfg.events.path), retention_days=None, max_bytes=None)
    query = EventQuery(
        since=_parse_since(since) if since else None,
        until=_parse_since(until) if until else None,
        **filters,
    )
    for event in log.search(query):
        if as_json:
            click.echo(msgspec.json.encode(event).decode())
            continue
        when = dt.datetime.fromtimestamp(event.time).isoformat(timespec="seconds")
        verdict = event.verdict
        av = verdict.antivirus.value + (
            f"({','.join(verdict.virus_names)})" if verdict.virus_names else ""
        )
        click.echo(
            f"{when}  {event.action.value:<10} av={av} spam={verdict.spam.value} "
            f"from=<{event.mail_from}> to=<{','.join(event.rcpt_to)}> subject={event.subject!r}"
        )


def _print_log(
    cfg: Config,
    which: str,
    *,
    since: float | None,
    until: float | None,
    actor: str | None,
    kind: str | None,
    client: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The application or authentication log, newest first (read only: no limit applied)."""
    from .stores.applog import ApplicationLog
    from .stores.authlog import AuthLog

    lines: list[tuple[float, str, bytes]] = []
    if which == "app":
        path = cfg.path_in_home(cfg.stores.app_log_path)
        if path.is_dir():
            app = ApplicationLog(path, retention_days=None, max_bytes=None)
            for event in app.search(since=since, until=until, kind=kind, actor=actor, limit=limit):
                where = f" client={event.client_address}" if event.client_address else ""
                text = f"{event.kind:<6} {event.action}  actor={event.actor or '-'}{where}"
                lines.append((event.time, text + (f"  {event.detail}" if event.detail else ""),
                              msgspec.json.encode(event)))  # fmt: skip
            app.close()
    else:
        path = cfg.path_in_home(cfg.stores.auth_log_path)
        if path.is_dir():
            auth = AuthLog(path, retention_days=None)
            # The auth log's search has no upper bound: later attempts are skipped here.
            found = auth.search(since=since, user=actor, client_address=client, limit=None)
            for attempt in [a for a in found if until is None or a.time < until][:limit]:
                text = (
                    f"{'ok' if attempt.success else 'FAILED':<6} user={attempt.user} "
                    f"client={attempt.client_address or '-'} method={attempt.method}"
                )
                lines.append((attempt.time, text, msgspec.json.encode(attempt)))
            auth.close()
    for when, text, raw in lines:
        if as_json:
            click.echo(raw.decode())
        else:
            click.echo(f"{dt.datetime.fromtimestamp(when).isoformat(timespec='seconds')}  {text}")


@cli.command("data-inventory")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def data_inventory(config_path: str | None, as_json: bool) -> None:
    """List every store of user data: place, contents, retention, cap, readers, current size."""
    from .config import load_config
    from .inventory import inventory

    try:
        plugin_set = build_plugin_manager()
        cfg = load_config(_config_path(config_path), plugin_set.config_schemas())
    except MailwardenError as exc:
        _fail(str(exc))
        return
    states = inventory(cfg, plugin_set)
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(states), indent=2))
        return
    for state in states:
        store = state.store
        limits = []
        if store.retention_days is not None:
            limits.append(f"{store.retention_days:g} days")
        if store.max_bytes is not None:
            limits.append(f"{store.max_bytes / 2**20:,.0f} MiB")
        if store.max_entries is not None:
            limits.append(f"{store.max_entries:,} entries")
        click.echo(f"{store.name} ({state.owner})")
        click.echo(f"  path      {store.path}")
        click.echo(f"  holds     {store.holds}")
        click.echo(
            f"  limits    {' or '.join(limits) or 'none'}; when full: {store.when_full.value}"
        )
        click.echo(f"  readers   {store.read_permission}")
        now = (
            f"{state.bytes:,} bytes in {state.files:,} files, {state.records:,} entries"
            if state.exists
            else "not created yet"
        )
        if state.oldest is not None:
            oldest = dt.datetime.fromtimestamp(state.oldest, dt.UTC)
            now += f", oldest {oldest.isoformat(timespec='seconds')}"
        click.echo(f"  now       {now}")


def _parse_since(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return dt.datetime.now().timestamp() - int(value[:-1]) * units[value[-1]]
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO time nor N[smhd]") from None


@cli.group()
def dkim() -> None:
    """DKIM signing keys for outbound mail."""


@dkim.command("keygen")
@click.argument("domain")
@click.argument("selector")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="Key type; publish an RSA key too when signing with Ed25519 (RFC 8463).",
)
@click.option("--bits", default=2048, show_default=True, help="RSA key size.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Key file (default: <home>/dkim/DOMAIN.SELECTOR.key).",
)
def dkim_keygen(domain: str, selector: str, algorithm: str, bits: int, out: str | None) -> None:
    """Make a signing key (file 0600) and print the DNS TXT record to publish.

    The private key is never printed; add the printed [[dkim.keys]] entry to the config.
    """
    from .dkim import keygen

    path = Path(out) if out else default_home() / "dkim" / f"{domain}.{selector}.key"
    if path.exists():
        _fail(f"{path} exists; keys are never overwritten (remove it or choose another selector)")
    try:
        record = keygen(
            domain, selector, path, "ed25519" if algorithm == "ed25519" else "rsa", bits
        )
    except MailwardenError as exc:
        _fail(str(exc))
    click.echo(f"; key written to {path} (mode 0600); publish this record:")
    click.echo(record)
    click.echo("; and add to mailwarden.toml:")
    click.echo("[[dkim.keys]]")
    click.echo(f'domain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"')


# Rules and directory commands live in their own module; registered here so `mailwarden --help`
# lists them with the built-ins.
from .bench.cli import bench as _bench_command  # noqa: E402
from .rules_cli import directory as _directory_group  # noqa: E402
from .rules_cli import rules as _rules_group  # noqa: E402
from .web.cli import web as _web_group  # noqa: E402

cli.add_command(_rules_group)
cli.add_command(_directory_group)
cli.add_command(_bench_command)
cli.add_command(_web_group)


def main() -> None:
    """Entry point of the ``mailwarden`` script."""
    cli()

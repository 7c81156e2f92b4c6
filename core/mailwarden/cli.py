"""The ``mailwarden`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import msgspec

from mailwarden_sdk import ActionKind, AntivirusStatus, Category, SpamStatus
from mailwarden_sdk.timeparse import TIME_FORMS, TimeParam

from .clihome import config_path as _config_path
from .clihome import home_config_path as _home_config_path
from .clihome import no_home as _no_home
from .config import Config, default_home, load_config
from .errors import MailwardenError
from .events import EventQuery, MessageEventLog
from .pipeline import Decision, Gateway
from .plugins import build_plugin_manager
from .privileges import dumps_off, private_umask
from .rules_cli import IpAddress
from .version import __version__

EXIT_CLEAN, EXIT_DETECTED, EXIT_ERROR = 0, 1, 2


#: ``--since`` / ``--until`` of every command: one grammar (mailwarden_sdk.timeparse).
TIME = TimeParam()

#: Every verdict status the event log indexes: antivirus, spam, and the reputation, sandbox
#: and content ones.
STATUSES = sorted(
    {s.value for s in [*AntivirusStatus, *SpamStatus]}
    | {"suspicious", "malicious", "hold", "skipped", "deferred"}
)


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


class _CommandHost:
    """The Host a plugin's command gets: the gateway's config, and ``deliver`` the way the
    gateway delivers (``[delivery] mode``) without a running gateway: into the Maildir, or
    into the spool as a decided message the running gateway's relay queue sends on its next
    scan. ``resubmit`` needs the running pipeline and is refused."""

    def __init__(self, config: Config) -> None:
        from .pipeline import Host
        from .sharedstate import command_state

        self._host = Host(config)
        self.config = config
        # The cluster's Redis (mailwarden_sdk.shared_state), so a command teaches every node.
        self.shared_state = command_state(config)
        context = click.get_current_context(silent=True)
        if self.shared_state is not None and context is not None:
            context.call_on_close(self.shared_state.close)

    def config_for(self, section: str) -> Any:
        return self._host.config_for(section)

    def resubmit(self, raw: bytes, envelope: Any, findings: Any = ()) -> Any:
        return self._host.resubmit(raw, envelope, findings)

    async def deliver(self, raw: bytes, envelope: Any) -> str:
        from .delivery.queue import crlf
        from .maildir import Maildir
        from .spool import Spool, SpoolState

        cfg = self.config
        if not envelope.rcpt_to:
            raise MailwardenError("no recipients to deliver to")
        if cfg.delivery.mode == "relay":
            spool = Spool(cfg.path_in_home(cfg.spool.path))
            entry = await asyncio.to_thread(spool.write, raw, envelope, SpoolState(decided=True))
            entry.release()  # unlocked: the running gateway's queue takes it over
            return f"queued as {entry.id} for {cfg.delivery.next_hop} (the gateway's relay queue)"
        maildir = Maildir(cfg.path_in_home(cfg.delivery.maildir))
        name = await asyncio.to_thread(maildir.deliver, crlf(raw))
        return f"delivered as {name} into {maildir.root}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class _HostLoader:
    """Gives plugin commands the gateway's Host (``mailwarden_sdk.command_host``)."""

    def load(self, config_path: str | None) -> Any:
        plugins = build_plugin_manager()
        try:
            config = load_config(_home_config_path(config_path), plugins.config_schemas())
        except MailwardenError as exc:
            raise click.ClickException(str(exc)) from exc
        return _CommandHost(config)


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
    click.echo(f"native core {mailwarden_native.core_version()}")
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
    from .clitext import busy_listeners
    from .serve import serve_forever, write_default_config

    # Before the config (with its bind password) is read: no memory dump unless configured.
    dumps_off(for_good=False)
    path = _config_path(config_path)
    if path is None:
        # A home is made only where one was named: $MAILWARDEN_HOME (`make serve` names
        # ./var of the checkout), or an existing ./var.
        reason = _no_home()
        if reason is not None:
            _fail(reason)
        target = default_home() / "mailwarden.toml"
        if write_default_config(target):
            click.echo(f"wrote {target} (the defaults)")
        path = str(target)
    # Absolute: workers re-read it, and with memory dumps on they run in the dumps folder.
    path = str(Path(path).absolute())
    gateway: Gateway | None = None
    try:
        gateway = Gateway.from_file(path)
        serve_forever(gateway, announce=lambda line: click.echo(line))
    except MailwardenError as exc:
        _fail(str(exc))
    except OSError as exc:
        busy = busy_listeners(gateway.config) if gateway is not None else []
        _fail(f"cannot listen on {', '.join(busy) or 'a configured address'}: {exc}")


def _files(paths: tuple[str, ...]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


def _not_a_message(raw: bytes) -> str | None:
    """Why ``raw`` is not an email message, or ``None``: a message starts with a header field
    (RFC 5322 2.2) or an mbox ``From `` line; a CSV, an image or a note does not."""
    head = raw.lstrip(b"\r\n")[:1000]
    if not head:
        return "empty file"
    if head.startswith(b"From ") or _HEADER_FIELD.match(head):
        return None
    return "not a message (no header fields): scanned as a plain file"


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message (JSON lines).")
@click.option("--sender", default="", help="Envelope sender to scan as.")
@click.option("--rcpt", "recipients", multiple=True, help="Envelope recipient (repeatable).")
@click.option("--client-ip", type=IpAddress(), help="SMTP client address to scan as (SPF).")
@click.option("--helo", default="", help="HELO/EHLO name the client gave (SPF).")
def scan(
    paths: tuple[str, ...],
    config_path: str | None,
    as_json: bool,
    sender: str,
    recipients: tuple[str, ...],
    client_ip: str | None,
    helo: str,
) -> None:
    """Scan message files (or directories of them) without delivering anything.

    One line per file as it is scanned (a progress line on a terminal); a file that is no
    message (no header fields) is scanned as a plain file and reported as such. Without a home
    (no --config, $MAILWARDEN_HOME or ./var) the scan uses a temporary one, removed afterwards.

    Exit status: 0 all clean, 1 something detected, 2 an error (unreadable file, scan error).
    """
    import tempfile

    from mailwarden_sdk import Envelope

    files = list(_files(paths))
    width = max([len(str(p)) for p in files] + [4])
    progress = not as_json and sys.stderr.isatty()

    async def main(gateway: Gateway) -> int:
        worst = EXIT_CLEAN
        async with gateway:
            if not as_json:
                click.echo(
                    f"{'FILE':<{width}}  {'ANTIVIRUS':<11}  {'SPAM':<13}  {'ACTION':<10}  FINDINGS"
                )
            for number, path in enumerate(files, 1):
                if progress:
                    click.echo(f"\r\033[K[{number}/{len(files)}] {path}", nl=False, err=True)
                decision: Decision | None = None
                error = not_message = None
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    error, worst = exc.strerror or str(exc), EXIT_ERROR
                else:
                    # Scanned all the same: a bare file can carry a virus (eicar.com); only
                    # the report says it is no message.
                    not_message = _not_a_message(raw)
                    envelope = Envelope(
                        mail_from=sender,
                        rcpt_to=list(recipients),
                        client_address=client_ip,
                        helo=helo or None,
                    )
                    decision = await gateway.scan(raw, envelope)
                    verdict = decision.verdict
                    if not_message:
                        # A spam score of a CSV or an image means nothing (no headers to
                        # read): what a plain file can carry is a virus or blocked content.
                        verdict = msgspec.structs.replace(verdict, spam=SpamStatus.CLEAN)
                    if decision.verdict.errors:
                        worst = EXIT_ERROR
                    elif verdict.detected and worst == EXIT_CLEAN:
                        worst = EXIT_DETECTED
                if progress:
                    click.echo("\r\033[K", nl=False, err=True)
                _print_scan_row(str(path), decision, error, not_message, as_json, width)
        return worst

    try:
        path = _config_path(config_path)
        with tempfile.TemporaryDirectory(prefix="mailwarden-scan-") as scratch:
            if path is None and _no_home() is not None:
                plugin_set = build_plugin_manager()
                cfg = load_config(None, plugin_set.config_schemas())
                home = msgspec.structs.replace(cfg.gateway, home=scratch)
                gateway = Gateway(msgspec.structs.replace(cfg, gateway=home), plugins=plugin_set)
            else:
                gateway = Gateway.from_file(path)
            sys.exit(asyncio.run(main(gateway)))
    except MailwardenError as exc:
        _fail(str(exc))


def _print_scan_row(
    name: str,
    decision: Decision | None,
    error: str | None,
    not_message: str | None,
    as_json: bool,
    width: int,
) -> None:
    """One line of ``scan``: the verdict (and whether the file is a message), or the error."""
    if as_json:
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
            if not_message:
                record["not_message"] = not_message
        click.echo(json.dumps(record, sort_keys=True))
        return
    if decision is None:
        click.echo(f"{name:<{width}}  {'-':<11}  {'-':<13}  {'error':<10}  {error}")
        return
    verdict = decision.verdict
    codes = [
        f.code + (f"({f.details['signature']})" if "signature" in f.details else "")
        for f in verdict.findings
    ]
    # A file that is no message has no message action, no spam verdict and no findings about
    # message headers or format.
    action = "(file)" if not_message else decision.action.kind.value
    spam = "-" if not_message else verdict.spam.value
    if not_message:
        codes = [
            code
            for code, finding in zip(codes, verdict.findings, strict=True)
            if finding.category is not Category.ANTISPAM and not code.startswith("MISSING_")
        ] + [not_message]
    click.echo(
        f"{name:<{width}}  {verdict.antivirus.value:<11}  {spam:<13}  "
        f"{action:<10}  {', '.join(codes) or '-'}"
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
@click.option("--since", type=TIME, help=f"Events at or after it: {TIME_FORMS}.")
@click.option("--until", type=TIME, help="Events before it (same forms as --since).")
@click.option("--sender", help="Address, local part or domain.")
@click.option("--rcpt", "recipient", help="Address, local part or domain.")
@click.option("--subject", help="Words the subject contains.")
@click.option("--action", type=click.Choice([kind.value for kind in ActionKind]))
@click.option("--status", type=click.Choice(STATUSES), help="Verdict status.")
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
    since: float | None,
    until: float | None,
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
        cfg = load_config(_home_config_path(config_path), build_plugin_manager().config_schemas())
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
            since=since,
            until=until,
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
    query = EventQuery(since=since, until=until, **filters)
    with _recoveries_reported(cfg):
        found = log.search(query)
    if log.store.damaged:
        click.echo(f"{log.store.damaged} damaged event record(s) skipped", err=True)
    for event in found:
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
            f"from=<{event.mail_from}> to=<{','.join(event.rcpt_to)}> "
            f"subject: {event.subject or '-'}"
        )


@contextlib.contextmanager
def _recoveries_reported(cfg: Any) -> Iterator[None]:
    """Say on stderr, and in the application log, when a damaged store was moved aside."""
    from .record import write_recovery
    from .stores.applog import ApplicationLog
    from .stores.lmdb_env import Recovery, on_recovered

    def report(recovery: Recovery) -> None:
        click.echo(
            f"{recovery.store} was damaged ({recovery.reason}): moved aside to "
            f"{recovery.moved_to} and created empty",
            err=True,
        )
        write_recovery(ApplicationLog(cfg.path_in_home(cfg.stores.app_log_path)), recovery)

    unsubscribe = on_recovered(report)
    try:
        yield
    finally:
        unsubscribe()


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
        cfg = load_config(_home_config_path(config_path), plugin_set.config_schemas())
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

    if out is None and (reason := _no_home()) is not None:
        _fail(reason)
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


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def retention(config_path: str | None, as_json: bool) -> None:
    """Apply every store's retention and size cap now (the running gateway does it as it goes;
    this is for a timer, and for the stores of a stopped gateway). Prints what was removed."""
    try:
        gateway = Gateway.from_file(_home_config_path(config_path))
        removed = gateway.stores.enforce_all()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(removed, sort_keys=True))
        return
    for name, count in sorted(removed.items()):
        click.echo(f"{name:<20} {count} removed")


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--candidate",
    "candidate_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The config to try.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="The running gateway's config: its home has the event log and the stores.",
)
@click.option("--backups", is_flag=True, help="Replay every message in the backup store.")
@click.option("--quarantine", is_flag=True, help="Replay every message the gateway holds.")
@click.option("--all", "show_all", is_flag=True, help="List unchanged messages too.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def replay(
    paths: tuple[str, ...],
    candidate_path: str,
    config_path: str | None,
    backups: bool,
    quarantine: bool,
    show_all: bool,
    as_json: bool,
) -> None:
    """What the --candidate config would have done to stored mail, beside what was done.

    PATHS are message files, folders, Maildirs or mbox files; --backups and --quarantine add
    the gateway's own stores. Envelopes and the recorded outcomes come from the event log
    (matched by Message-ID). Nothing is delivered, held or recorded: the candidate runs on a
    temporary home. Prints the counts, then each message whose action or verdict differs.

    Exit status: 0 no action changes, 1 some action changes, 2 an error.
    """
    from .replay import replay as run_replay

    if not (paths or backups or quarantine):
        raise click.UsageError("give message PATHS, --backups or --quarantine")
    try:
        recorded = load_config(
            _home_config_path(config_path), build_plugin_manager().config_schemas()
        )
        report = run_replay(
            recorded,
            candidate_path,
            [Path(p) for p in paths],
            backups=backups,
            quarantine=quarantine,
        )
    except (MailwardenError, OSError) as exc:
        _fail(str(exc))
        return
    counts = report.counts()
    if as_json:
        data = report.to_builtins()
        if show_all:
            data["messages"] = msgspec.to_builtins(report.messages)
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"replayed {counts['replayed']}: {counts['action_changed']} action changes, "
            f"{counts['verdict_changed_only']} verdict changes only, "
            f"{counts['unchanged']} unchanged, {counts['not_recorded']} without a record"
        )
        for m in report.messages if show_all else report.changes():
            after = m.candidate
            if m.recorded is None:
                change = f"(no record) -> {after.action}"
            else:
                before = m.recorded
                change = f"{before.action} -> {after.action}" if m.action_changed else after.action
                change += (
                    f"  av {before.antivirus} -> {after.antivirus}"
                    f"  spam {before.spam} ({before.spam_score:g}) -> {after.spam}"
                    f" ({after.spam_score:g})"
                )
            click.echo(f"{m.source}  {m.message_id or '-'}  {change}  rule {after.rule}")
    sys.exit(1 if counts["action_changed"] else 0)


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

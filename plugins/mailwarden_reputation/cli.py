"""``mailwarden reputation ...``: the private service, feeds, consent and pending statistics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mailwarden_sdk import config_option

from .state import (
    PendingStatistics,
    data_dir_for,
    grant_consent,
    read_withdrawal,
    recorded_consent,
    withdraw_consent,
)

__all__ = ["reputation"]


def _service_dir(data: str | None) -> Path:
    return Path(data) if data else data_dir_for() / "service"


@click.group("reputation")
def reputation() -> None:
    """Reputation lookups: consent, pending statistics, and the private reputation service."""


@reputation.command()
@click.option("--data", type=click.Path(file_okay=False), help="Service data directory.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True, type=int)
@click.option("--cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option(
    "--tls-name",
    "tls_names",
    multiple=True,
    help="Host name or IP gateways use to reach the service, for the self-signed certificate "
    "(repeatable; default: --host and localhost).",
)
@click.option(
    "--token",
    envvar="MAILWARDEN_REPUTATION_TOKEN",
    default="",
    help="Require this bearer token on /v1/ requests (gateways: [reputation] http_token).",
)
@click.option(
    "--load",
    "feeds",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Load a CSV/JSON feed before serving (repeatable).",
)
def serve(
    data: str | None,
    host: str,
    port: int,
    cert: str | None,
    key: str | None,
    tls_names: tuple[str, ...],
    token: str,
    feeds: tuple[str, ...],
) -> None:
    """Run the private reputation service over HTTPS.

    Without --cert/--key a self-signed certificate is made once in DATA/tls; point the
    gateways' [reputation] http_ca_file at DATA/tls/cert.pem.
    """
    import uvicorn

    from .service import FeedError, ServiceStore, create_app, ensure_certificate, read_feed

    directory = _service_dir(data)
    store = ServiceStore(directory)
    try:
        for feed in feeds:
            click.echo(f"loaded {store.load(read_feed(Path(feed))):,} entries from {feed}")
    except FeedError as exc:
        store.close()
        raise click.ClickException(str(exc)) from exc
    if bool(cert) != bool(key):
        store.close()
        raise click.UsageError("--cert and --key go together")
    if cert and key:
        cert_path, key_path = Path(cert), Path(key)
    else:
        names = set(tls_names) or {host, "localhost"}
        cert_path, key_path = ensure_certificate(directory / "tls", sorted(names))
    click.echo(
        f"reputation service on https://{host}:{port} ({len(store):,} entries, "
        f"certificate {cert_path})"
    )
    sys.stdout.flush()
    try:
        uvicorn.run(
            create_app(store, token),
            host=host,
            port=port,
            ssl_certfile=str(cert_path),
            ssl_keyfile=str(key_path),
            log_level="warning",
        )
    finally:
        store.close()


@reputation.command()
@click.option("--data", type=click.Path(file_okay=False), help="Service data directory.")
@click.argument("feeds", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
def load(data: str | None, feeds: tuple[str, ...]) -> None:
    """Load CSV/JSON feeds (kind,value,verdict,name) into the service's data."""
    from .service import FeedError, ServiceStore, read_feed

    store = ServiceStore(_service_dir(data))
    try:
        for feed in feeds:
            click.echo(f"loaded {store.load(read_feed(Path(feed))):,} entries from {feed}")
    except FeedError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


@reputation.command()
@config_option
@click.option("--withdraw", is_flag=True, help="Withdraw consent now (running gateways too).")
@click.option("--grant", is_flag=True, help="Remove a withdrawal; the config's consent applies.")
@click.option("--by", "who", help="Who withdraws (recorded with the time).")
def consent(config_path: str | None, withdraw: bool, grant: bool, who: str | None) -> None:
    """Show, withdraw or restore consent to reputation lookups and statistics.

    Withdrawal takes effect at once: running gateways check for it before every lookup, and
    the statistics not yet sent are deleted now.
    """
    if withdraw and grant:
        raise click.UsageError("--withdraw and --grant exclude each other")
    directory = data_dir_for(config_path)
    if withdraw:
        if not who:
            raise click.UsageError("--withdraw needs --by (who withdraws consent)")
        mark = withdraw_consent(directory, who)
        click.echo(
            f"consent withdrawn by {mark.withdrawn_by} at {mark.withdrawn_at}; "
            "pending statistics deleted"
        )
        return
    if grant:
        removed = grant_consent(directory)
        click.echo(
            "withdrawal removed; [reputation] consent in the config applies"
            if removed
            else "consent was not withdrawn; [reputation] consent in the config applies"
        )
        return
    config = recorded_consent(config_path)
    where = config.config or "no config file"
    if config.consent:
        click.echo(f"consent recorded by {config.by} at {config.at} ({where})")
    else:
        click.echo(f"no consent recorded ({where}): nothing is looked up or sent")
    recorded = read_withdrawal(directory)
    if recorded is not None:
        click.echo(
            f"withdrawn by {recorded.withdrawn_by} at {recorded.withdrawn_at}: "
            "nothing is looked up or sent until `mailwarden reputation consent --grant`"
        )


@reputation.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def stats(config_path: str | None, as_json: bool) -> None:
    """Show the statistics waiting to be sent (counts of detections by kind and verdict)."""
    store = PendingStatistics(data_dir_for(config_path) / "statistics")
    try:
        pending = store.pending()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(pending, sort_keys=True))
        return
    if not pending:
        click.echo("no statistics pending")
    for key, count in sorted(pending.items()):
        click.echo(f"{key:<24} {count:>8,}")

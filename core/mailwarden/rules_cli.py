"""``mailwarden rules test`` and ``mailwarden directory lookup|refresh|search``.

``rules test`` is a dry run: it says which rule covers each recipient and why, then runs the
real pipeline (parse, detectors, verdict, action) on the file without delivering or
recording anything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .clihome import home_config_path
from .config import Config, load_config
from .errors import MailwardenError
from .pipeline import Gateway
from .plugins import build_plugin_manager

if TYPE_CHECKING:
    from .directory.service import Directory

__all__ = ["directory", "rules"]

EXIT_OK, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2


def _fail(message: str) -> None:
    click.echo(f"mailwarden: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _resolve(config_path: str | None) -> str | None:
    return home_config_path(config_path)


def _config(config_path: str | None) -> Config:
    return load_config(_resolve(config_path), build_plugin_manager().config_schemas())


class IpAddress(click.ParamType[str]):
    """An IPv4 or IPv6 address, refused with the option's name when it is not one."""

    name = "ip"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(ipaddress.ip_address(str(value).strip("[]")))
        except ValueError:
            self.fail(f"{value!r} is not an IP address", param, ctx)


@click.group()
def rules() -> None:
    """Message-processing rules."""


@rules.command("test")
@click.option("--from", "sender", default="", help="Envelope sender (empty: the null sender).")
@click.option("--to", "recipients", multiple=True, required=True, help="Recipient (repeatable).")
@click.option(
    "--client", "--client-ip", "client", type=IpAddress(), help="Client IP address (SPF)."
)
@click.option("--helo", default="", help="HELO/EHLO name the client gave (SPF).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def rules_test(
    sender: str,
    recipients: tuple[str, ...],
    client: str | None,
    helo: str,
    config_path: str | None,
    file: str,
) -> None:
    """Show which rule applies to each recipient of FILE and what it would do (a dry run)."""
    from mailwarden_sdk import Envelope

    raw = Path(file).read_bytes()

    async def main() -> list[str]:
        lines: list[str] = []
        async with Gateway.from_file(_resolve(config_path)) as gateway:
            lines.append(f"from <{sender}>" + (f" client {client}" if client else ""))
            for recipient in recipients:
                match = gateway.match_rule(sender, recipient, client=client)
                rule = gateway.rule_for(sender, recipient, client=client)
                lines.append(f"to <{recipient}>")
                if match is None:
                    lines.append(f"  rule       {rule.name} (no rule matched; the last applies)")
                else:
                    lines.append(f"  rule       {rule.name} ({match.explain()})")
                lines.append(f"  detectors  {', '.join(sorted(gateway.detectors_for(rule)))}")
                envelope = Envelope(
                    mail_from=sender,
                    rcpt_to=[recipient],
                    client_address=client,
                    helo=helo or None,
                )
                decision = await gateway.scan(raw, envelope)
                verdict = decision.verdict
                findings = [
                    f"{f.code} ({f.detector}, {f.status}"
                    + (f", {f.details['signature']}" if "signature" in f.details else "")
                    + ")"
                    for f in verdict.findings
                ]
                lines.append(f"  findings   {'; '.join(findings) or 'none'}")
                for name, value in verdict.headers:
                    if name.lower() == "authentication-results":
                        lines.append(f"  auth       {value}")
                lines.append(
                    f"  verdict    antivirus {verdict.antivirus.value}, spam {verdict.spam.value}"
                    f" (score {verdict.spam_score:.2f})"
                )
                action = decision.action
                lines.append(
                    f"  action     {action.kind.value} ({action.reason}): "
                    f"{action.smtp_code} {action.smtp_text}"
                )
        return lines

    try:
        for line in asyncio.run(main()):
            click.echo(line)
    except MailwardenError as exc:
        _fail(str(exc))


@click.group()
def directory() -> None:
    """The LDAP / Active Directory integration and its cache."""


def _open(config_path: str | None) -> Directory:
    from .directory.service import open_directory

    cfg = _config(config_path)
    opened = open_directory(cfg, fill_empty=False) if cfg.directory.enabled else None
    if opened is None:
        raise MailwardenError("the directory integration is off ([directory] enabled = false)")
    return opened


@directory.command("lookup")
@click.argument("address")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
def directory_lookup(address: str, config_path: str | None) -> None:
    """Resolve ADDRESS on the server (the cache when it is unreachable): entry and groups.

    Exit status: 0 found, 1 not in the directory, 2 an error.
    """
    try:
        opened = _open(config_path)
        try:
            result = opened.lookup(address)
        finally:
            opened.close()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    if result.error:
        click.echo(f"server unreachable ({result.error}); answer from the cache")
    entry = result.entry
    if entry is None:
        click.echo(f"{address}: not in the directory")
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"dn                 {entry.dn}")
    click.echo(f"cn                 {entry.cn}")
    click.echo(f"kind               {entry.kind}")
    click.echo(f"addresses          {', '.join(entry.addresses)}")
    click.echo(f"sAMAccountName     {entry.sam_account_name or '-'}")
    click.echo(f"userPrincipalName  {entry.user_principal_name or '-'}")
    click.echo(f"objectSid          {entry.object_sid or '-'}")
    groups = ", ".join(g.cn for g in entry.groups)
    click.echo(f"groups             {groups or '-'}")
    click.echo(f"source             {result.source}")


@directory.command("refresh")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
def directory_refresh(config_path: str | None) -> None:
    """Replace the cache with a full snapshot of the directory now."""
    try:
        opened = _open(config_path)
        try:
            result = opened.refresh()
        finally:
            opened.close()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    click.echo(
        f"cached {result.entries} users and contacts and {result.groups} groups "
        f"in {result.seconds:.2f} s"
    )


@directory.command("search")
@click.argument("prefix")
@click.option("--limit", default=10, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def directory_search(prefix: str, limit: int, config_path: str | None, as_json: bool) -> None:
    """Cached users, contacts and groups whose name or address starts with PREFIX."""
    try:
        opened = _open(config_path)
        try:
            hits = opened.search(prefix, limit)
        finally:
            opened.close()
    except MailwardenError as exc:
        _fail(str(exc))
        return
    for hit in hits:
        if as_json:
            click.echo(msgspec.json.encode(hit).decode())
            continue
        click.echo(f"{hit.kind:<8} {hit.name:<24} {hit.address or '-':<28} {hit.dn}")

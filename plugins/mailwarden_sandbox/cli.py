"""``mailwarden sandbox list|release|delete``: the hold quarantine from the command line.

A release or delete leaves the same marker the web interface does; the gateway process that
follows held messages up carries it out (a delete is done here when no gateway runs).
"""

from __future__ import annotations

import time

import click
import msgspec

from mailwarden_sdk import command_host, config_option

from .store import HoldStore, ReleasePending

__all__ = ["sandbox_command"]


@click.group("sandbox")
@config_option
@click.pass_context
def sandbox_command(ctx: click.Context, config_path: str | None) -> None:
    """List, release and delete messages held for sandbox analysis."""
    # The quarantine the gateway with this config uses, wherever [gateway] home points.
    ctx.obj = HoldStore(command_host(config_path).data_dir)


@sandbox_command.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_obj
def _list(store: HoldStore, as_json: bool) -> None:
    """Print every held message: id, state, age, size, sender, recipients, rule, last note."""
    now = time.time()
    metas = [m for m in (store.load(i) for i in store.ids()) if m is not None]
    for meta in sorted(metas, key=lambda m: m.held_at):
        if as_json:
            click.echo(msgspec.json.encode(meta).decode())
            continue
        click.echo(
            f"{meta.id}  {meta.state:8}  {now - meta.held_at:8.0f}s  {meta.size:>9}  "
            f"<{meta.envelope.mail_from}> -> {', '.join(meta.envelope.rcpt_to)}  "
            f"rule={meta.rule}" + (f"  ({meta.note})" if meta.note else "")
        )
    if not as_json:
        count, size = store.usage()
        click.echo(f"{count} held, {size} bytes")


@sandbox_command.command("release")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def _release(store: HoldStore, ids: tuple[str, ...]) -> None:
    """Send held messages on now, without waiting for their verdict."""
    _mark(store, ids, "release")


@sandbox_command.command("delete")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def _delete(store: HoldStore, ids: tuple[str, ...]) -> None:
    """Delete held messages; they are never delivered."""
    _mark(store, ids, "delete")


def _mark(store: HoldStore, ids: tuple[str, ...], what: str) -> None:
    running = store.owned_elsewhere()
    failed = False
    for id in ids:
        try:
            marked = store.mark(id, what)
        except ReleasePending as exc:
            click.echo(f"{id}: {exc}; it is sent once", err=True)
            failed = True
            continue
        if not marked:
            click.echo(f"{id}: no such held message", err=True)
            failed = True
        elif what == "delete" and not running:
            store.remove(id)
            click.echo(f"{id}: deleted")
        else:
            when = "now" if running else "when the gateway starts"
            click.echo(f"{id}: {what} requested; the gateway applies it {when}")
    if failed:
        raise SystemExit(1)

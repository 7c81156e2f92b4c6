"""The backup store as the web interface shows it: entries, one entry's metadata, a copy sent
on to its recipients.

Ids come from the URL and are only ever looked up in the store's index: a body is found by the
hash the index holds, never by a path built from what the client sent, so ``../`` in an id
names no file.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from mailwarden_sdk import Envelope

if TYPE_CHECKING:
    from ..pipeline import Gateway
    from ..stores.backup import BackupEntry

__all__ = ["BackupNotFound", "backup_entry", "backup_list", "backup_raw", "release_backup"]


class BackupNotFound(LookupError):
    """No backup with that id (or no recipients to send it to)."""


def _view(entry: BackupEntry) -> dict[str, Any]:
    view: dict[str, Any] = msgspec.to_builtins(entry)
    return view


def backup_list(gateway: Gateway, limit: int = 500) -> list[dict[str, Any]]:
    """Backed-up messages, newest first: metadata only, never the body."""
    return [_view(entry) for entry in gateway.stores.backup.list(limit=limit)]


def _entry(gateway: Gateway, backup_id: str) -> BackupEntry:
    entry = gateway.stores.backup.entry(backup_id) if backup_id.isalnum() else None
    if entry is None:
        raise BackupNotFound(f"no backup {backup_id!r}")
    return entry


def backup_entry(gateway: Gateway, backup_id: str) -> dict[str, Any]:
    """One entry's metadata: when, why, sender, recipients, subject, size, body hash."""
    return _view(_entry(gateway, backup_id))


def backup_raw(gateway: Gateway, backup_id: str) -> bytes:
    """The backed-up message as it was kept."""
    entry = _entry(gateway, backup_id)
    try:
        return gateway.stores.backup.get(entry.id)
    except (KeyError, FileNotFoundError) as exc:
        raise BackupNotFound(f"the body of backup {backup_id!r} is gone") from exc


async def release_backup(gateway: Gateway, backup_id: str) -> str:
    """Send the backed-up copy to its recorded recipients the way released mail goes (relay
    queue or the local Maildir), without scanning it again; the copy stays in the backup
    store until its limits remove it. Returns where it went."""
    entry = await asyncio.to_thread(_entry, gateway, backup_id)
    if not entry.rcpt_to:
        raise BackupNotFound(f"backup {backup_id!r} records no recipients to send it to")
    data = await asyncio.to_thread(backup_raw, gateway, backup_id)
    envelope = Envelope(mail_from=entry.mail_from, rcpt_to=list(entry.rcpt_to))
    # Decided: an admin sent it on, so it is not scanned (and held or dropped) again.
    return await gateway.deliver_released(data, envelope)

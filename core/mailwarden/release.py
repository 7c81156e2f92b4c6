"""Releases: a message an admin lets go (from the core's quarantine, a plugin's quarantine or
the backup) goes on to its recipients through the outbox, the way delivered mail goes,
without being scanned (and held) again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mailwarden_sdk import Envelope

from .errors import DeliveryError
from .quarantine import ReleaseFailed

if TYPE_CHECKING:
    from .act import Outbox
    from .quarantine import Quarantine

__all__ = ["deliver_released", "release_held"]


async def deliver_released(outbox: Outbox, data: bytes, envelope: Envelope) -> str:
    """Send a released message on to ``envelope.rcpt_to``: the spool and the relay queue, else
    the local Maildir. Durable when this returns. Returns where it went."""
    if not envelope.rcpt_to:
        raise DeliveryError("no recipients to deliver to")
    # Decided: an admin released it, so it is not scanned (and held) again.
    return await outbox.hand_off(data, envelope)


async def release_held(quarantine: Quarantine, outbox: Outbox, held_id: str) -> str:
    """Send the message held as ``held_id`` on; it leaves the quarantine once it is durable
    on its way. Returns where it went.

    Exactly once: the message is claimed first (:meth:`Quarantine.claim`), so a second
    release at the same time, in this process or another worker, gets
    :class:`~mailwarden.quarantine.QuarantineBusy` and sends nothing. When delivery fails
    the message is held again and :class:`ReleaseFailed` says why."""
    claim = await asyncio.to_thread(quarantine.claim, held_id)
    try:
        where = await deliver_released(outbox, claim.data, claim.envelope)
    except Exception as exc:
        await asyncio.to_thread(quarantine.abandon, claim)
        raise ReleaseFailed(f"release of {held_id} failed: {exc}; it stays held") from exc
    except BaseException:
        quarantine.abandon(claim)  # cancelled: held again rather than lost
        raise
    await asyncio.to_thread(quarantine.finish, claim)
    return where

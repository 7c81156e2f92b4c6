"""Releases: a message an admin lets go (from the core's quarantine, a plugin's quarantine or
the backup) goes on to its recipients through the outbox, the way delivered mail goes,
without being scanned (and held) again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailwarden_sdk import Envelope
from mailwarden_sdk.quarantines import release_once

from .errors import DeliveryError
from .quarantine import ReleaseFailed

if TYPE_CHECKING:
    from .act import Outbox
    from .quarantine import Quarantine, ReleaseClaim

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

    async def send(claim: ReleaseClaim) -> str:
        return await deliver_released(outbox, claim.data, claim.envelope)

    return await release_once(quarantine, held_id, send, ReleaseFailed)

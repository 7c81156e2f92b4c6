"""The store abstraction: every bounded store of user data is declared, measured and enforced.

A store has a :class:`~mailwarden_sdk.StoreDescriptor` (name, path, what it holds, retention,
caps by size and count, the overflow policy and the permission needed to read it: the same
declaration plugins make through ``mailwarden_data_stores``) and answers three questions:
how big it is (:meth:`BoundedStore.usage`), and how to remove what is older than a time or the
oldest records. :func:`enforce` applies the declared limits with those; :func:`admit` is asked
before a write to a store that refuses new entries when full.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable

import msgspec

from mailwarden_sdk import StoreDescriptor, WhenFull

from ..errors import MailwardenError

__all__ = ["BoundedStore", "StoreFull", "Usage", "admit", "enforce", "over_caps"]

DAY = 86400.0


class StoreFull(MailwardenError):
    """A store that refuses new entries when full was asked to take one more."""


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    """What a store holds now: bytes, records, and the time of the oldest record (or None)."""

    bytes: int
    count: int
    oldest: float | None = None


class BoundedStore(abc.ABC):
    """A store that can measure itself and remove its oldest records."""

    descriptor: StoreDescriptor
    clock: Callable[[], float] = time.time
    #: Records removed by :func:`enforce` since this object was made (for metrics).
    evictions: int = 0

    @abc.abstractmethod
    def usage(self) -> Usage:
        """Bytes, records and the oldest record's time, now."""

    @abc.abstractmethod
    def remove_older_than(self, horizon: float) -> int:
        """Remove every record written before ``horizon``; how many were removed."""

    @abc.abstractmethod
    def remove_oldest_until(self, max_bytes: int | None, max_entries: int | None) -> int:
        """Remove the oldest records until both caps hold (``None``: no cap); how many."""


def over_caps(descriptor: StoreDescriptor, usage: Usage, *, adding: int = 0) -> bool:
    """Whether ``usage`` plus one record of ``adding`` bytes exceeds a cap of ``descriptor``."""
    extra = 1 if adding else 0
    if descriptor.max_bytes is not None and usage.bytes + adding > descriptor.max_bytes:
        return True
    return descriptor.max_entries is not None and usage.count + extra > descriptor.max_entries


def admit(store: BoundedStore, size: int) -> None:
    """Raise :class:`StoreFull` when ``store`` refuses new entries and one of ``size`` bytes
    would not fit; stores that remove their oldest records always admit."""
    descriptor = store.descriptor
    if descriptor.when_full is not WhenFull.REFUSE_NEW:
        return
    if over_caps(descriptor, store.usage(), adding=max(size, 1)):
        raise StoreFull(
            f"store {descriptor.name!r} is full "
            f"(cap {descriptor.max_bytes} bytes / {descriptor.max_entries} entries)"
        )


def enforce(store: BoundedStore) -> int:
    """Apply the declared retention and caps; returns how many records were removed.

    Age first (records older than ``retention_days`` go whatever the policy), then, for
    ``remove_oldest`` stores, the oldest records until both caps hold. A ``refuse_new`` store
    is never trimmed for size: what it holds is waiting for something (a verdict) and the
    refusal happens at :func:`admit`.
    """
    descriptor = store.descriptor
    removed = 0
    if descriptor.retention_days is not None:
        removed += store.remove_older_than(store.clock() - descriptor.retention_days * DAY)
    if descriptor.when_full is WhenFull.REMOVE_OLDEST and over_caps(descriptor, store.usage()):
        removed += store.remove_oldest_until(descriptor.max_bytes, descriptor.max_entries)
    store.evictions += removed
    return removed

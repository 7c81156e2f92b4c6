"""Declarations of stores of user data, so the core can govern a plugin's stores like its own."""

from __future__ import annotations

import enum

import msgspec

__all__ = ["StoreDescriptor", "WhenFull"]


class WhenFull(enum.StrEnum):
    """What a store does when a cap is reached."""

    REMOVE_OLDEST = "remove_oldest"
    EVICT_LRU = "evict_lru"
    REFUSE_NEW = "refuse_new"
    NOT_CAPPED = "not_capped"


class StoreDescriptor(msgspec.Struct, kw_only=True, frozen=True):
    """A store of user data as listed by ``mailwarden data-inventory``.

    ``holds`` says in plain words what personal data the store keeps; ``read_permission`` is the
    web/API permission needed to read it (for example ``events.messages.view``). A ``None``
    limit means "no limit of that kind". ``entries`` is how many entries the store holds now,
    for stores that count in entries and can tell cheaply (``None``: not counted).
    """

    name: str
    path: str
    holds: str
    retention_days: float | None = None
    max_bytes: int | None = None
    max_entries: int | None = None
    when_full: WhenFull = WhenFull.NOT_CAPPED
    read_permission: str = "settings.view"
    entries: int | None = None

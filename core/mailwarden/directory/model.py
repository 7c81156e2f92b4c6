"""What the directory integration knows about an address, as stored in the cache."""

from __future__ import annotations

from typing import Literal

import msgspec

from ..errors import MailwardenError
from .names import group_key

__all__ = ["DirectoryEntry", "DirectoryError", "DirectoryGroup", "SearchHit"]


class DirectoryError(MailwardenError):
    """The directory server could not be reached, bound to or searched."""


class DirectoryGroup(msgspec.Struct, kw_only=True, frozen=True):
    """A group by its DN and CN."""

    dn: str
    cn: str

    def keys(self) -> tuple[str, str]:
        """The two keys rules may name this group by (DN and CN)."""
        return group_key(self.dn), group_key(self.cn)


class DirectoryEntry(msgspec.Struct, kw_only=True):
    """A user or contact with its addresses and every group it is in, nested ones included.

    ``addresses`` are lower case, the primary (``mail`` or ``SMTP:``) first; ``fetched`` is
    when the server said so (Unix time).
    """

    dn: str
    cn: str
    kind: Literal["user", "contact"] = "user"
    addresses: list[str] = msgspec.field(default_factory=list)
    sam_account_name: str | None = None
    user_principal_name: str | None = None
    object_sid: str | None = None
    groups: list[DirectoryGroup] = msgspec.field(default_factory=list)
    fetched: float = 0.0

    def group_keys(self) -> frozenset[str]:
        """Keys of every group, the form :func:`~.names.group_key` gives rule patterns."""
        return frozenset(key for group in self.groups for key in group.keys())


class SearchHit(msgspec.Struct, kw_only=True, frozen=True):
    """One autocomplete suggestion: a user, contact or group from the cache."""

    kind: Literal["user", "contact", "group"]
    name: str
    dn: str
    address: str | None = None

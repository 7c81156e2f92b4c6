"""Typed per-message state that cooperating plugins share (after pytest's ``Stash``)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """A key into :class:`Stash`; its type parameter types the value.

    Create one per kind of state at module level (``SCORES = StashKey[dict[str, float]]()``);
    the key object itself is the identity, so two plugins can never collide by name.
    """

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<StashKey {self.name or hex(id(self))}>"


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value under ``key``, or ``default``."""
        # Not through __getitem__ and its KeyError: a miss (most asks, several per message
        # on the decision path) cost a raised exception each.
        return cast("T | D", self._data.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value under ``key``, storing ``default`` first if there is none."""
        if key not in self._data:
            self._data[key] = default
        return self[key]

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

"""Moved to :mod:`mailwarden.record`; this name stays only for ``pipeline.py``'s import."""

# TODO(lead, after merging wip-flow): pipeline.py imports CoreStores from mailwarden.record;
# then delete this file and its ignore_imports line in .importlinter.
from __future__ import annotations

from ..record import CoreStores

__all__ = ["CoreStores"]

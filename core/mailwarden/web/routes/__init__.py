"""The route table: every route module's routes, in the order they match.

Each module under ``routes/`` holds one area's handlers and its ``ROUTES`` (see
:class:`.base.Route`); registering a module is one line in :data:`MODULES`.
"""

from __future__ import annotations

from . import (
    api,
    auth,
    backup,
    digest,
    events,
    logs,
    pages,
    plugin_quarantines,
    quarantines,
    rules,
    self_service,
    settings,
    signatures,
    users,
)
from .base import Route

__all__ = ["MODULES", "ROUTES", "Route"]

MODULES = (
    auth,
    pages,
    events,
    logs,
    quarantines,
    plugin_quarantines,
    rules,
    settings,
    users,
    backup,
    signatures,
    digest,
    self_service,
    api,
)

ROUTES: tuple[Route, ...] = tuple(route for module in MODULES for route in module.ROUTES)

"""The route table: every route module's routes, in the order they match.

Each module under ``routes/`` holds one area's handlers and its ``ROUTES`` (see
:class:`mailwarden.web.route.Route`); registering a module is one line, its name in :data:`AREAS`.
"""

from __future__ import annotations

from importlib import import_module

from ..route import Route

__all__ = ["AREAS", "ROUTES", "Route"]

# In match order (a module's own routes keep theirs).
AREAS = (
    "auth",
    "pages",
    "events",
    "logs",
    "quarantines",
    "plugin_quarantines",
    "rules",
    "settings",
    "users",
    "backup",
    "signatures",
    "digest",
    "self_service",
    "cluster",
    "api",
)

ROUTES: tuple[Route, ...] = tuple(
    route for area in AREAS for route in import_module(f"{__name__}.{area}").ROUTES
)

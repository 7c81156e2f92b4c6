"""One entry of the route table: a route's declaration and the callable that answers it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from .permissions import ROUTES as DECLARED
from .permissions import RouteSpec

__all__ = ["Handler", "Route", "declared"]

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A route as the application mounts it: path, methods and permission (``spec``) and the
    handler itself."""

    spec: RouteSpec
    handler: Handler


def declared(*handlers: Handler) -> tuple[Route, ...]:
    """The routes the permission table declares for ``handlers`` (by their names), in the
    table's order (which is the order they match in). A handler the table does not name is an
    error at import: no route is reachable without a declared permission."""
    by_name = {handler.__name__: handler for handler in handlers}
    routes = tuple(
        Route(spec, by_name[spec.handler]) for spec in DECLARED if spec.handler in by_name
    )
    undeclared = sorted(set(by_name) - {route.spec.handler for route in routes})
    if undeclared:
        raise RuntimeError(f"handlers without a declared route: {undeclared}")
    return routes

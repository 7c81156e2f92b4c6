"""The OpenAPI 3.1 document of the REST API, generated from the route table and the msgspec
types each handler declares (:mod:`.api_types`): parameters (path and query), request bodies
and answers, with each operation's permission."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from .api_types import ApiShape, Error, shape_of
from .permissions import PUBLIC
from .respond import SESSION_COOKIE
from .route import Route

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_JSON = "application/json"
_BINARY = {"type": "string", "format": "binary"}
# A handler that declares no types (see api_types.api): any JSON.
_UNDECLARED = ApiShape(Any)


def _query_parameters(schema: dict[str, Any]) -> list[Any]:
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema.get("properties", {}).items():
        field = dict(field)
        description = field.pop("description", None)
        # An absent parameter is the None default: a query string has no null to send.
        kinds = [k for k in field.pop("anyOf", []) if k != {"type": "null"}]
        if kinds:
            field.update(kinds[0] if len(kinds) == 1 else {"anyOf": kinds})
        if field.get("default", 0) is None:
            del field["default"]
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": field,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The document for the ``/api/`` routes of ``routes``."""
    api_routes = [r for r in routes if r.spec.path.startswith("/api/")]
    types: list[Any] = [Error]
    for route in api_routes:
        shape = shape_of(route.handler) or _UNDECLARED
        types += [t for t in (shape.response, shape.body, shape.query) if t not in (None, bytes)]
    found, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), found, strict=True))
    error = {"description": "refused", "content": {_JSON: {"schema": schema_of[id(Error)]}}}
    paths: dict[str, dict[str, Any]] = {}
    # Query structs become parameters, not schemas of their own.
    queries: set[str] = set()
    for route in api_routes:
        spec, handler = route.spec, route.handler
        shape = shape_of(handler) or _UNDECLARED
        doc = (handler.__doc__ or "").strip()
        parameters: list[Any] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", spec.path)
        ]
        if shape.query is not None:
            query = schema_of[id(shape.query)]
            name = query["$ref"].rsplit("/", 1)[1]
            parameters += _query_parameters(components[name])
            queries.add(name)
        if shape.response is bytes:
            answer = {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        else:
            answer = {_JSON: {"schema": schema_of[id(shape.response)]}}
        operation: dict[str, Any] = {
            "operationId": spec.handler,
            "summary": " ".join(doc.split("\n\n")[0].split())[:120],
            "description": " ".join(doc.split()),
            "parameters": parameters,
            "responses": {
                str(shape.status): {"description": "done", "content": answer},
                "4XX": error,
            },
            "x-permission": spec.permission,
            "x-permissions": list(spec.needs),
            "x-max-body": spec.max_body,
            "security": [] if spec.permission == PUBLIC else [{"bearer": []}, {"cookie": []}],
        }
        if shape is _UNDECLARED:
            # Still listed (the document must not fail for one route); the test names it.
            operation["x-undeclared"] = True
        if shape.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {_JSON: {"schema": schema_of[id(shape.body)]}},
            }
        for method in spec.methods:
            paths.setdefault(spec.path, {})[method.lower()] = operation
    for name in queries:
        del components[name]
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailwarden", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
        },
    }

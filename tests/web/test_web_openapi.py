"""The OpenAPI document (issue 22): every API route has its parameters, request body and
answers, generated from the handlers' msgspec types, and every route's real answers (success
and refusal) validate against the document's schemas."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema

from mailwarden.web.routes import ROUTES as TABLE
from tests.web.conftest import Web
from tests.web.test_web_permissions import _request


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def test_every_api_route_is_described_with_parameters_and_schemas(web: Web) -> None:
    client, _ = web.login("auditor")
    document = client.get("/api/openapi.json").json()
    paths = document["paths"]
    api_routes = [r.spec for r in TABLE if r.spec.path.startswith("/api/")]
    assert {(s.path, m.lower()) for s in api_routes for m in s.methods} == {
        (path, method) for path, operations in paths.items() for method in operations
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            where = f"{method} {path}"
            assert "x-undeclared" not in operation, f"{where}: no @api(...) types on its handler"
            named = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert named == set(re.findall(r"\{(\w+)\}", path)), where
            answers = operation["responses"]
            assert "4XX" in answers, where
            [(status, answer)] = [(s, a) for s, a in answers.items() if s != "4XX"]
            assert status.startswith("2") and answer["content"], where
            if method in ("put",) or operation["operationId"] in ("api_login", "api_token_create"):
                assert operation["requestBody"]["content"]["application/json"]["schema"], where
    events = {p["name"]: p for p in paths["/api/events"]["get"]["parameters"]}
    assert {"sender", "recipient", "subject", "status", "action", "since", "limit"} <= set(events)
    assert events["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    # One shape both ways for the rules.
    rules = paths["/api/rules"]
    read = rules["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert read == rules["put"]["requestBody"]["content"]["application/json"]["schema"]


def test_every_routes_real_answers_match_the_schema(web: Web) -> None:
    web.hold()
    web.spam()
    web.backup()
    client, csrf = web.login("administrator")
    client.post(
        "/api/tokens", json={"name": "ci", "roles": ["Auditor"]}, headers={"x-csrf-token": csrf}
    )
    document = client.get("/api/openapi.json").json()
    checked = 0
    for route in TABLE:
        spec = route.spec
        if not spec.path.startswith("/api/") or spec.handler == "logout":
            continue
        for method in spec.methods:
            answer = _request(web, spec, method, client, csrf)
            where = f"{method} {spec.path}: {answer.status_code} {answer.text[:300]}"
            operation = document["paths"][spec.path][method.lower()]
            status = str(answer.status_code)
            declared = operation["responses"].get(status) or operation["responses"]["4XX"]
            assert status in operation["responses"] or status.startswith("4"), where
            media = answer.headers["content-type"].split(";")[0]
            assert media in declared["content"], where
            if media == "application/json":
                schema = declared["content"][media]["schema"]
                errors = list(_validator(document, schema).iter_errors(answer.json()))
                assert not errors, f"{where}: {errors[0].message} at {list(errors[0].path)}"
            checked += 1
    assert checked == sum(len(s.spec.methods) for s in TABLE if s.spec.path.startswith("/api/"))
    # Lists with something in them were checked, not only empty ones.
    for path in ("/api/events", "/api/quarantine", "/api/quarantines/spam", "/api/backup"):
        assert client.get(path).json(), path


def test_a_settings_section_reads_in_the_shape_a_put_takes_back(tmp_path: Path) -> None:
    web = Web(
        tmp_path / "home",
        extra_config='[directory]\nbind_dn = "cn=svc"\nbind_password = "s3cret-bind"\n',
    )
    try:
        client, csrf = web.login("administrator")
        section = client.get("/api/settings/directory").json()
        assert section["bind_dn"] == "cn=svc" and section["bind_password"] == "********"
        section["timeout"] = 7.0
        put = client.put("/api/settings/directory", json=section, headers={"x-csrf-token": csrf})
        assert put.status_code == 200, put.text
        config = tomllib.loads(web.config_path.read_text())["directory"]
        # The secret stays what it was; the change is written.
        assert config["bind_password"] == "s3cret-bind" and config["timeout"] == 7.0
        again = client.get("/api/settings/directory").json()
        assert again == {**section, "bind_password": "********"}
        mta = client.get("/api/mta/smtp").json()
        assert (
            client.put("/api/mta/smtp", json=mta, headers={"x-csrf-token": csrf}).status_code == 200
        )
        assert client.get("/api/settings/smtp").status_code == 404
        auditor, _ = web.login("auditor")
        assert auditor.get("/api/settings/directory").json()["bind_password"] == "********"
    finally:
        web.close()

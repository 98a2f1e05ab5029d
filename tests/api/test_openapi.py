"""/openapi.json: a valid OpenAPI 3.1 document that describes every route, with
the role each route enforces, and request schemas that accept exactly what the
validators accept (property-tested); /docs serves Swagger UI from the package."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from api.openapi import OPERATIONS, PATH_PARAMETERS
from model.adapter import ADAPTER_LOAD, ADAPTER_UNLOAD
from model.alias import ALIAS_SET
from model.node import NODE_FIELDS, NODE_FILTERS, NODE_UPDATE_FIELDS, SELECT_QUERY
from model.schema import INTEGER_NOTE, Boolean, Choice, Custom, Fields, Integer, Items, Number, Rule, Text
from model.user import LOGIN, NEW_USER, TOKEN_REQUEST, USER_CHANGES
from tests.helpers import error_text, is_public

RANK = {"user": 1, "worker": 2, "admin": 3}


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operations(document: dict[str, Any]):
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_route_is_described(app, document):
    described = {(m, p) for m, p, _ in operations(document)}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "{}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            matches = [p for m, p in described if m == method and re.sub(r"\{[^}]+\}", "{}", p) == path]
            assert matches, f"{method} {rule.rule} is not in /openapi.json"
    for method, path, op in operations(document):
        assert op["summary"].strip() and op["description"].strip(), (method, path)
        assert "200" in op["responses"], (method, path)


def test_every_api_route_has_its_schemas(app, document):
    """An /api route needs more than a docstring: its body rule and its data."""
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            assert rule.endpoint in OPERATIONS, f"{rule.rule}: add it to api/openapi.py OPERATIONS"
    for method, path, op in operations(document):
        if path.startswith("/api/"):
            ok = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok["required"] == ["message", "status", "code", "data", "trace_id"]
            for code, answer in op["responses"].items():
                if code != "200":
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if method in ("POST", "PUT"):
                assert "requestBody" in op, (method, path)


def test_path_parameters_have_the_rules_the_routes_check(document):
    for method, path, op in operations(document):
        names = re.findall(r"\{([^}]+)\}", path)
        params = [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert [p["name"] for p in params] == names, (method, path)
        for p in params:
            assert p["required"] is True and p["schema"]["type"] == "string"


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "node-001", path)


def test_the_role_described_is_the_role_enforced(client, document, auth_headers):
    for method, path, op in operations(document):
        role = op.get("x-nvllm-role")
        if role is None:
            assert not op["security"] or {} in op["security"], (method, path)
            assert is_public(path.split("{")[0].rstrip("/") or "/") or path.startswith("/docs"), path
            continue
        assert op["security"] == [{"bearer": []}]
        assert f"Role: {role} or above." in op["description"]
        assert "401" in op["responses"] and "403" in op["responses"]
        response = client.open(_fill(path), method=method, json={})
        assert response.status_code == 401, (method, path)
        for lower in (r for r, rank in RANK.items() if rank < RANK[role]):
            response = client.open(_fill(path), method=method, json={}, headers=auth_headers(lower))
            assert response.status_code == 403, (method, path, lower)


def test_request_bodies_are_the_validators_rules(document):
    bodies = {
        ("POST", "/api/user/login"): LOGIN,
        ("POST", "/api/user/register"): NEW_USER,
        ("PUT", "/api/user/update/{username}"): USER_CHANGES,
        ("POST", "/api/user/token/{jti_or_username}"): TOKEN_REQUEST,
        ("POST", "/api/node/node/register"): NODE_FIELDS,
        ("PUT", "/api/node/node/update/{node_id}"): NODE_UPDATE_FIELDS,
        ("POST", "/api/alias/set"): ALIAS_SET,
        ("POST", "/api/adapter/load"): ADAPTER_LOAD,
        ("POST", "/api/adapter/unload"): ADAPTER_UNLOAD,
    }
    for method, path, op in operations(document):
        if path.startswith("/api/") and method in ("POST", "PUT"):
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert schema == bodies[(method, path)].documented(), (method, path)


def test_a_bad_field_is_named_as_the_document_names_it(client, auth_headers):
    response = client.post("/api/node/node/register", json={"node_port": 0}, headers=auth_headers("worker"))
    assert error_text(response, 400) == "node_port: must be between 1 and 65535"
    response = client.post("/api/user/token/test-admin", json={"ttl": 1, "x": 1}, headers=auth_headers("admin"))
    assert error_text(response, 400) == "x: unknown field"


def test_a_misspelt_query_parameter_is_refused_not_ignored(client, auth_headers):
    """Found by the fuzzer: ?stauts=online listed every node as if unfiltered."""
    headers = auth_headers("user")
    assert error_text(client.get("/api/node/node/all?stauts=online", headers=headers), 400) == (
        "stauts: unknown query parameter"
    )
    assert error_text(client.get("/api/node/node/select?modle=m", headers=headers), 400) == (
        "modle: unknown query parameter"
    )
    assert error_text(client.get("/api/node/node/all?=1", headers=headers), 400) == "'': unknown query parameter"
    assert error_text(client.get("/api/node/node/all?status=gone", headers=headers), 400) == (
        "status: must be one of online, offline, draining"
    )
    assert client.get("/api/node/node/all?status=online&model=m&type=worker", headers=headers).status_code == 200


# --- the schemas accept exactly what the validators accept ---

# Every JSON value, except integral floats (see test_integers_refuse_floats):
# JSON Schema cannot tell 8000.0 from 8000, the validators can.
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def samples(rule: Rule) -> st.SearchStrategy[Any]:
    """Values near the rule's edges, and anything else JSON can hold."""
    if isinstance(rule, Integer):
        near = st.integers(rule.low - 2, rule.high + 2) | st.sampled_from([rule.low - 1, rule.low, rule.high,
                                                                           rule.high + 1])
    elif isinstance(rule, Number):
        near = st.floats(rule.low - 1, rule.high + 1).filter(lambda f: not f.is_integer()) | st.sampled_from(
            [rule.low, rule.high, rule.high + 1, rule.low - 1, None])
    elif isinstance(rule, Text):
        longest = (rule.max_length or 40) + 2
        near = st.text(max_size=longest) | st.text("aZ09._-:\n %", max_size=longest)
        if rule.pattern is not None:
            near = near | st.from_regex(f"^(?:{rule.pattern})\\Z") | st.from_regex(f"^(?:{rule.pattern})\\n\\Z")
            near = near | st.from_regex(f"^(?:{rule.pattern})\\Z").map(lambda s: s + "x" * 64)
    elif isinstance(rule, Boolean):
        near = st.booleans() | st.sampled_from([0, 1, "true"])
    elif isinstance(rule, Choice):
        near = st.sampled_from(rule.values) | st.sampled_from([v.upper() for v in rule.values])
    elif isinstance(rule, Items):
        near = st.lists(samples(rule.item), max_size=3) | st.lists(st.just("m"), min_size=rule.max_items,
                                                                   max_size=rule.max_items + 1)
    elif isinstance(rule, Fields):
        good = st.fixed_dictionaries({}, optional={k: samples(r) for k, r in rule.fields.items()})
        near = good | good.map(lambda d: {**d, "extra": 1}) | st.fixed_dictionaries(
            {k: samples(r) for k, r in rule.fields.items()})
    elif isinstance(rule, Custom):
        near = st.text("0123456789abcdef.:-%", min_size=1, max_size=20) | st.sampled_from(
            ["10.0.0.1", "::1", "fe80::1%eth0", "gpu-1.lan", "gpu-1.lan.", "1.2.3.999", "-a.lan", "a" * 300])
    else:
        raise AssertionError(f"no samples for {type(rule).__name__}")
    return near | JSON_VALUES


def rules_of(rule: Rule, name: str) -> list[tuple[str, Rule]]:
    found = [(name, rule)]
    if isinstance(rule, Fields):
        for key, sub in rule.fields.items():
            found += rules_of(sub, f"{name}.{key}")
    if isinstance(rule, Items):
        found += rules_of(rule.item, f"{name}[]")
    return found


ALL_RULES = sorted(
    {
        name: r
        for top, body in [("login", LOGIN), ("new_user", NEW_USER), ("user_changes", USER_CHANGES),
                          ("token", TOKEN_REQUEST), ("node", NODE_FIELDS), ("query", NODE_FILTERS),
                          ("select", SELECT_QUERY), ("alias", ALIAS_SET), ("adapter_load", ADAPTER_LOAD),
                          ("adapter_unload", ADAPTER_UNLOAD),
                          *[(f"path.{k}", v) for k, v in PATH_PARAMETERS.items()]]
        for name, r in rules_of(body, top)
    }.items()
)


@pytest.mark.parametrize("name, rule", ALL_RULES, ids=[n for n, _ in ALL_RULES])
def test_schema_and_validator_agree(name: str, rule: Rule):
    schema = jsonschema_rs.validator_for(rule.documented())
    exact = not rule.also and not any(r.also for _, r in rules_of(rule, name))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(samples(rule))
    def agree(value: Any) -> None:
        accepted = rule.accepts(value)
        if accepted:
            assert schema.is_valid(value), f"{name}: the validator accepts {value!r}, the schema does not"
        if exact:
            assert accepted or not schema.is_valid(value), f"{name}: the schema allows {value!r}, the validator not"

    agree()


def test_what_the_schema_cannot_say_is_said_in_words():
    for name, rule in ALL_RULES:
        if rule.also:
            assert rule.documented()["x-nvllm-also"] == rule.also
            assert rule.also in rule.documented()["description"], name


def test_integers_refuse_floats_and_say_so():
    integers = [(n, r) for n, r in ALL_RULES if isinstance(r, Integer)]
    assert integers
    for name, rule in integers:
        assert not rule.accepts(float(rule.low)), name
        assert INTEGER_NOTE in rule.documented()["description"], name


# --- Swagger UI ---


def test_docs_page_loads_swagger_ui_from_nvllm_itself(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and not [s for s in sources if "//" in s], sources  # nothing from another host
    for source in sources:
        asset = client.get("/" + source)
        assert asset.status_code == 200, source
    bundle = client.get("/docs/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle
    init = client.get("/docs/init.js").get_data(as_text=True)
    assert 'url: "openapi.json"' in init and "validatorUrl: null" in init
    assert "Apache License" in client.get("/docs/LICENSE").get_data(as_text=True)


def test_docs_serves_only_its_files(client):
    for name in ("index.template.html", "..%2Fflask_swagger_ui.py", "swagger-ui.js.map"):
        error_text(client.get(f"/docs/{name}"), 404)

"""The one error translator: 404, 405, 500, Redis down, and CORS."""

from __future__ import annotations

import logging
import os
import re

import pytest

from main import create_app
from tests.helpers import ADMIN_PASSWORD, PASSWORD, app_routes, error_text, ok_data

NODE = "/api/node/node"
API_ROUTES = [r for r in app_routes() if r[1].startswith("/api/")]
# A body each route accepts, so that only the storage can fail it.
BODIES = {
    ("POST", "/api/user/login"): {"username": "admin", "password": ADMIN_PASSWORD},
    ("POST", "/api/user/register"): {"username": "ops-1", "password": PASSWORD},
    ("PUT", "/api/user/update/node-001"): {"role": "user"},
    ("POST", "/api/node/node/register"): {"node_id": "node-001"},
}


# --- routing errors ---


@pytest.mark.parametrize("path", ["/api/nope", "/api/node/node/nope", "/nope", "/api/node/node/get_node/"])
def test_unknown_route_is_a_404_envelope(client, path):
    response = client.get(path, headers={"X-Trace-ID": "trace-404"})
    assert error_text(response, 404) == "not found"
    assert response.get_json()["trace_id"] == "trace-404"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", f"{NODE}/register", {"POST"}),
        ("post", f"{NODE}/all", {"GET"}),
        ("delete", f"{NODE}/get_node/node-001", {"GET"}),
        ("get", "/api/user/login", {"POST"}),
    ],
)
def test_wrong_method_is_a_405_envelope_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path, headers={"X-Trace-ID": "trace-405"})
    assert error_text(response, 405) == f"method {method.upper()} not allowed"
    assert allowed <= set(re.split(r",\s*", response.headers["Allow"]))
    assert response.get_json()["trace_id"] == "trace-405"


# --- unexpected errors ---


@pytest.fixture
def exploding(monkeypatch):
    """Make listing nodes fail with an exception whose text must not leak."""
    from service import node as nodes

    def explode(*args, **kwargs):
        raise RuntimeError("redis://:hunter2@10.1.2.3:6379 is on fire")

    monkeypatch.setattr(nodes, "list_nodes", explode)


def test_unexpected_error_is_a_generic_500(client, auth_headers, exploding, caplog):
    response = client.get(f"{NODE}/all", headers={**auth_headers("user"), "X-Trace-ID": "trace-500"})
    assert error_text(response, 500) == "internal server error"
    text = response.get_data(as_text=True)
    assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info and "hunter2" in str(record.exc_info[1])


def test_unexpected_error_outside_a_blueprint_is_a_generic_500(app, client):
    @app.get("/api/boom")
    def boom():
        raise KeyError("secret-key-name")

    response = client.get("/api/boom")
    assert error_text(response, 500) == "internal server error"
    assert "secret-key-name" not in response.get_data(as_text=True)


# --- Redis down ---


@pytest.fixture
def down(client, auth_headers, server):
    """An admin token taken while Redis was up, then Redis goes away."""
    headers = auth_headers("admin")
    server.connected = False
    return headers


@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=lambda v: v)
def test_every_api_route_is_503_when_redis_is_down(client, down, method, path, caplog):
    response = client.open(path, method=method, json=BODIES.get((method, path), {}), headers=down)
    assert "storage" in error_text(response, 503) or response.request.path.endswith("select")
    assert int(response.headers["Retry-After"]) >= 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_redis_down_after_the_user_cache_expired_is_still_503(client, down, clock):
    clock.advance(60)
    response = client.get(f"{NODE}/all", headers=down)
    error_text(response, 503)
    assert response.headers["Retry-After"]


def test_redis_down_with_an_unknown_token_is_503_not_401(client, down, app, clock):
    other = create_app(app.config["NVLLM"], redis_client=app.extensions["nvllm"].redis, clock=clock)
    error_text(other.test_client().get(f"{NODE}/all", headers=down), 503)


def test_health_probes_follow_redis(client, server):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    server.connected = False
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    server.connected = True
    assert client.get("/readyz").status_code == 200


def test_the_api_recovers_when_redis_comes_back(client, auth_headers, server):
    headers = auth_headers("worker")
    server.connected = False
    error_text(client.post(f"{NODE}/register", json={"node_id": "node-001"}, headers=headers), 503)
    server.connected = True
    ok_data(client.post(f"{NODE}/register", json={"node_id": "node-001"}, headers=headers))
    assert [n["node_id"] for n in ok_data(client.get(f"{NODE}/all", headers=headers))] == ["node-001"]


def test_an_app_started_while_redis_was_down_works_once_it_is_back(settings, server, clock):
    import fakeredis

    server.connected = False
    app = create_app(settings, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)
    client = app.test_client()
    login = {"username": "admin", "password": ADMIN_PASSWORD}
    error_text(client.post("/api/user/login", json=login), 503)
    server.connected = True
    # The admin was not bootstrapped; a restart with Redis up does it.
    app = create_app(settings, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)
    ok_data(app.test_client().post("/api/user/login", json=login))


# --- CORS ---


@pytest.fixture
def cors_client(settings, redis, clock):
    app = create_app(settings.replace(cors_origins=("https://dash.example",)), redis_client=redis, clock=clock)
    return app.test_client()


def test_no_cors_headers_by_default(client):
    response = client.get("/healthz", headers={"Origin": "https://dash.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(
        f"{NODE}/all", headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_for_a_listed_origin(cors_client, auth_headers):
    response = cors_client.get("/healthz", headers={"Origin": "https://dash.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "X-Trace-ID" in response.headers["Access-Control-Expose-Headers"]
    preflight = cors_client.options(
        f"{NODE}/all",
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://dash.example"


def test_no_cors_for_an_unlisted_origin(cors_client):
    response = cors_client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_origins_from_the_environment(monkeypatch, redis, clock):
    from config import Settings

    monkeypatch.setenv("NVLLM_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("NVLLM_ADMIN_PASSWORD", ADMIN_PASSWORD)
    settings = Settings.from_env(os.environ, password_hash_n=2**4)
    client = create_app(settings, redis_client=redis, clock=clock).test_client()
    for origin in ("https://a.example", "https://b.example"):
        assert client.get("/healthz", headers={"Origin": origin}).headers["Access-Control-Allow-Origin"] == origin
    assert "Access-Control-Allow-Origin" not in client.get("/healthz", headers={"Origin": "https://c.example"}).headers


@pytest.mark.parametrize("raw", [b"[" * 60000, b'{"a":' * 12000, b"{"])
def test_a_v1_body_nested_too_deep_is_400_not_500(client, auth_headers, raw, caplog):
    response = client.post(
        "/v1/chat/completions", data=raw, content_type="application/json", headers=auth_headers("user")
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_request_error"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

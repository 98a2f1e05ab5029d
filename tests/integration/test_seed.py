"""The original design's requests, over real HTTP, answer as it shows them
(plus the password login now needs)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import SEED_REGISTER, SEED_UPDATE

pytestmark = pytest.mark.integration

TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
ENVELOPE = ["message", "status", "code", "data", "trace_id"]
ERROR_ENVELOPE = ["message", "status", "code", "error", "trace_id"]



def success(answer, trace_id: str | None = None):
    body = answer.json
    assert answer.status == 200, answer.text
    assert list(body) == ENVELOPE
    assert (body["message"], body["status"], body["code"]) == ("success", "success", 200)
    assert body["trace_id"] == answer.headers["X-Trace-ID"]
    if trace_id:
        assert body["trace_id"] == trace_id
    return body["data"]


def failure(answer, code: int) -> str:
    body = answer.json
    assert answer.status == code, answer.text
    assert list(body) == ERROR_ENVELOPE
    assert (body["message"], body["status"], body["code"]) == ("error", "error", code)
    assert body["error"] and "Traceback" not in answer.text
    return body["error"]


def seed_node(data: dict, expected: dict) -> None:
    """`data` is the seed's node shape holding `expected`'s values."""
    for name, value in expected.items():
        if name == "node_info":
            assert {k: data["node_info"][k] for k in value} == value
        else:
            assert data[name] == value, name
    assert TIME.match(data["create_time"]) and TIME.match(data["update_time"])


def test_seed_walkthrough(start_service, redis_url):
    service = start_service(redis_url)
    trace = {"X-Trace-ID": "seed-trace-1"}

    # The seed's bare-username login no longer gets a token.
    bare = service.request("POST", "/api/user/login", body={"username": "admin"})
    assert bare.status in (400, 401)
    failure(bare, bare.status)

    login = service.request(
        "POST", "/api/user/login", body={"username": "admin", "password": "integration-admin-password"},
        headers=trace,
    )
    token = success(login, "seed-trace-1")["token"]
    assert token.count(".") == 2

    registered = success(
        service.request("POST", "/api/node/node/register", token=token, body=SEED_REGISTER, headers=trace),
        "seed-trace-1",
    )
    seed_node(registered, SEED_REGISTER)

    updated = success(
        service.request("PUT", "/api/node/node/update/node-001", token=token, body=SEED_UPDATE, headers=trace)
    )
    seed_node(updated, {"node_id": "node-001", **SEED_UPDATE})
    assert updated["create_time"] == registered["create_time"]

    fetched = success(service.request("GET", "/api/node/node/get_node/node-001", token=token))
    seed_node(fetched, {"node_id": "node-001", **SEED_UPDATE})

    status = success(service.request("GET", "/api/node/node/status/node-001", token=token))
    assert status["node_info"]["running"] == 2
    assert status["node_info"]["waiting"] == 1
    assert status["node_info"]["kv_cache"] == 1024
    assert status["alive"] is True

    listed = success(service.request("GET", "/api/node/node/all", token=token))
    assert [n["node_id"] for n in listed] == ["node-001"]
    seed_node(listed[0], {"node_id": "node-001", **SEED_UPDATE})

    success(service.request("DELETE", "/api/node/node/delete/node-001", token=token))
    failure(service.request("GET", "/api/node/node/get_node/node-001", token=token), 404)


def test_seed_defaults_and_generated_id(start_service, redis_url):
    service = start_service(redis_url)
    token = service.login()
    data = success(service.request("POST", "/api/node/node/register", token=token, body={}))
    assert re.match(r"^[0-9a-f-]{36}$", data["node_id"])
    seed_node(
        data,
        {
            "node_type": "master",
            "node_address": "0.0.0.0",
            "node_port": 8000,
            "node_status": "offline",
            "remark": "doc",
            "timeout": 60,
        },
    )


NODE_ROUTES = [
    ("POST", "/api/node/node/register"),
    ("PUT", "/api/node/node/update/node-001"),
    ("DELETE", "/api/node/node/delete/node-001"),
    ("GET", "/api/node/node/get_node/node-001"),
    ("GET", "/api/node/node/status/node-001"),
    ("GET", "/api/node/node/all"),
]


def test_node_routes_need_a_token(start_service, redis_url):
    service = start_service(redis_url)
    for method, path in NODE_ROUTES:
        answer = service.request(method, path, body={} if method in ("POST", "PUT") else None)
        failure(answer, 401)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer"), path

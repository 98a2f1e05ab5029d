"""The /api/alias routes: admins only, the seed's envelope, clear 400/404/409."""

from __future__ import annotations

import pytest

BASE = "/api/alias"


def test_set_list_delete(client, auth_headers):
    admin = auth_headers("admin")
    answer = client.post(f"{BASE}/set", json={"alias": "org/gpt-4o", "model": "Qwen/Qwen2.5-72B-Instruct"},
                         headers=admin)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "success" and body["code"] == 200
    assert body["data"] == {"alias": "org/gpt-4o", "model": "Qwen/Qwen2.5-72B-Instruct", "listed": True}
    assert client.get(f"{BASE}/all", headers=admin).get_json()["data"] == [body["data"]]
    assert client.delete(f"{BASE}/delete/org/gpt-4o", headers=admin).get_json()["data"] == {"alias": "org/gpt-4o"}
    missing = client.delete(f"{BASE}/delete/org/gpt-4o", headers=admin)
    assert missing.status_code == 404 and missing.get_json()["error"] == "alias 'org/gpt-4o' not found"


@pytest.mark.parametrize("body, field", [
    ({"model": "m"}, "alias"),
    ({"alias": " spaced", "model": "m"}, "alias"),
    ({"alias": "a"}, "model"),
    ({"alias": "a", "model": "a"}, "model"),
    ({"alias": "a", "model": "m", "listed": "yes"}, "listed"),
    ({"alias": "a", "model": "m", "extra": 1}, "extra"),
])
def test_bad_bodies_name_the_field(client, auth_headers, body, field):
    answer = client.post(f"{BASE}/set", json=body, headers=auth_headers("admin"))
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith(f"{field}: ")


def test_a_chain_is_a_conflict(client, auth_headers):
    admin = auth_headers("admin")
    client.post(f"{BASE}/set", json={"alias": "a", "model": "m"}, headers=admin)
    answer = client.post(f"{BASE}/set", json={"alias": "b", "model": "a"}, headers=admin)
    assert answer.status_code == 409 and "is itself an alias" in answer.get_json()["error"]


@pytest.mark.parametrize("role", ["user", "worker"])
def test_only_admins(client, auth_headers, role):
    assert client.get(f"{BASE}/all", headers=auth_headers(role)).status_code == 403
    assert client.get(f"{BASE}/all").status_code == 401


def test_redis_down_is_503(client, auth_headers, server):
    admin = auth_headers("admin")
    server.connected = False
    assert client.post(f"{BASE}/set", json={"alias": "a", "model": "m"}, headers=admin).status_code == 503


def test_select_resolves_an_alias(client, auth_headers):
    admin = auth_headers("admin")
    node = {"node_id": "n1", "node_address": "127.0.0.1", "node_status": "online", "models": ["served"]}
    assert client.post("/api/node/node/register", json=node, headers=admin).status_code == 200
    assert client.get("/api/node/node/select?model=nick", headers=admin).status_code == 503
    client.post(f"{BASE}/set", json={"alias": "nick", "model": "served"}, headers=admin)
    picked = client.get("/api/node/node/select?model=nick", headers=admin)
    assert picked.status_code == 200 and picked.get_json()["data"]["node_id"] == "n1"

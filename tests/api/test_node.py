"""The node API: the seed's requests and answers, validation, and node semantics."""

from __future__ import annotations

import json
import uuid

import pytest

from service.netpolicy import NetworkPolicy
from tests.helpers import SEED_REGISTER, SEED_UPDATE, TIME_PATTERN, error_text, ok_data

BASE = "/api/node/node"

SEED_FIELDS = [
    "node_id", "node_type", "node_address", "node_port", "node_status",
    "node_info", "remark", "timeout", "create_time", "update_time",
]


@pytest.fixture
def worker(auth_headers):
    return auth_headers("worker")


@pytest.fixture
def register(client, worker):
    """register(**fields): POST the seed's node with these changes; its data."""

    def make(**changes):
        body = {**SEED_REGISTER, **changes}
        return ok_data(client.post(f"{BASE}/register", json=body, headers=worker))

    return make


def node_keys(redis) -> list[str]:
    return sorted(k for k in redis.keys("*") if ":node:" in k)


# --- seed parity ---


def test_seed_register_answers_as_the_seed_shows(client, worker):
    response = client.post(
        f"{BASE}/register",
        data=json.dumps(SEED_REGISTER, ensure_ascii=False),
        content_type="application/json",
        headers={**worker, "X-Trace-ID": "xxx"},
    )
    data = ok_data(response)
    assert response.get_json()["trace_id"] == "xxx"
    # The seed's fields in the seed's order, then the one field SPEC adds.
    assert list(data) == SEED_FIELDS[:8] + ["models"] + SEED_FIELDS[8:]
    expected = {**SEED_REGISTER, "create_time": "2024-01-01T00:00:00", "update_time": "2024-01-01T00:00:00"}
    assert {k: data[k] for k in SEED_FIELDS} == expected
    assert data["models"] == []


def test_remark_round_trips_byte_for_byte(client, worker, register):
    register()
    response = client.get(f"{BASE}/get_node/node-001", headers=worker)
    assert ok_data(response)["remark"] == "GPU节点1"
    assert "GPU节点1".encode() in response.data  # not \u escapes


def test_seed_defaults_for_an_empty_register(client, worker):
    data = ok_data(client.post(f"{BASE}/register", json={}, headers=worker))
    assert uuid.UUID(data.pop("node_id"))
    assert data == {
        "node_type": "master",
        "node_address": "0.0.0.0",
        "node_port": 8000,
        "node_status": "offline",
        "node_info": {"running": 0, "waiting": 0, "kv_cache": 0},
        "remark": "doc",
        "timeout": 60,
        "models": [],
        "create_time": "2024-01-01T00:00:00",
        "update_time": "2024-01-01T00:00:00",
    }


def test_empty_body_registers_with_defaults(client, worker):
    response = client.post(f"{BASE}/register", headers=worker)
    assert ok_data(response)["node_type"] == "master"


def test_seed_update_and_reads(client, worker, register, clock):
    register()
    clock.advance(5)
    data = ok_data(client.put(f"{BASE}/update/node-001", json=SEED_UPDATE, headers=worker))
    assert {k: data[k] for k in SEED_UPDATE} == SEED_UPDATE
    assert data["create_time"] == "2024-01-01T00:00:00"
    assert data["update_time"] == "2024-01-01T00:00:05"
    assert ok_data(client.get(f"{BASE}/get_node/node-001", headers=worker)) == data
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["node_info"] == {"running": 2, "waiting": 1, "kv_cache": 1024}
    assert ok_data(client.get(f"{BASE}/all", headers=worker)) == [data]


def test_seed_delete(client, worker, register, redis):
    register()
    data = ok_data(client.delete(f"{BASE}/delete/node-001", headers=worker))
    assert data["node_id"] == "node-001"
    error_text(client.get(f"{BASE}/get_node/node-001", headers=worker), 404)
    assert node_keys(redis) == []


def test_times_are_utc_in_the_seed_format(client, auth_headers, clock):
    clock.now = 1718454896.789  # 2024-06-15T12:34:56.789 UTC
    response = client.post(f"{BASE}/register", json=SEED_REGISTER, headers=auth_headers("worker"))
    data = ok_data(response)
    assert data["create_time"] == data["update_time"] == "2024-06-15T12:34:56"
    assert TIME_PATTERN.match(data["create_time"])


# --- bad input: the right 4xx, the field named, nothing stored ---

LONG_ID = "a" * 129
BAD_REGISTER = [
    # (body changes, code, field named in the error)
    ({"node_port": "8000"}, 400, "node_port"),
    ({"node_port": True}, 400, "node_port"),
    ({"node_port": 8000.0}, 400, "node_port"),
    ({"node_port": None}, 400, "node_port"),
    ({"node_port": 0}, 400, "node_port"),
    ({"node_port": 65536}, 400, "node_port"),
    ({"timeout": 1.5}, 400, "timeout"),
    ({"timeout": 0}, 400, "timeout"),
    ({"timeout": 86401}, 400, "timeout"),
    ({"timeout": "60"}, 400, "timeout"),
    ({"node_info": {"running": -1}}, 400, "node_info.running"),
    ({"node_info": {"waiting": "1"}}, 400, "node_info.waiting"),
    ({"node_info": {"kv_cache": False}}, 400, "node_info.kv_cache"),
    ({"node_info": {"running": 10**20}}, 400, "node_info.running"),
    ({"node_info": {"kv_cache_usage": 2}}, 400, "node_info.kv_cache_usage"),
    ({"node_info": {"kv_cache_usage": -0.1}}, 400, "node_info.kv_cache_usage"),
    ({"node_info": {"kv_cache_usage": "0.5"}}, 400, "node_info.kv_cache_usage"),
    ({"node_info": [1, 2]}, 400, "node_info"),
    ({"node_info": "busy"}, 400, "node_info"),
    ({"node_info": None}, 400, "node_info"),
    ({"node_info": {"gpu": 1}}, 400, "node_info.gpu"),
    ({"unknown": 1}, 400, "unknown"),
    ({"create_time": "2024-01-01T00:00:00"}, 400, "create_time"),
    ({"node_id": ":"}, 400, "node_id"),
    ({"node_id": "a:b"}, 400, "node_id"),
    ({"node_id": "*"}, 400, "node_id"),
    ({"node_id": " x"}, 400, "node_id"),
    ({"node_id": "x "}, 400, "node_id"),
    ({"node_id": "x\n"}, 400, "node_id"),
    ({"node_id": "-x"}, 400, "node_id"),
    ({"node_id": ".x"}, 400, "node_id"),
    ({"node_id": LONG_ID}, 400, "node_id"),
    ({"node_id": "节点1"}, 400, "node_id"),
    ({"node_id": "node?"}, 400, "node_id"),
    ({"node_id": "node[1]"}, 400, "node_id"),
    ({"node_id": ""}, 400, "node_id"),
    ({"node_id": 1}, 400, "node_id"),
    ({"node_type": ""}, 400, "node_type"),
    ({"node_type": "a b"}, 400, "node_type"),
    ({"node_type": 3}, 400, "node_type"),
    ({"node_address": ""}, 400, "node_address"),
    ({"node_address": "not an address"}, 400, "node_address"),
    ({"node_address": "http://10.0.0.1"}, 400, "node_address"),
    ({"node_address": "10.0.0.1:8000"}, 400, "node_address"),
    ({"node_address": "10.0.0.1\n"}, 400, "node_address"),
    ({"node_address": "gpu..example"}, 400, "node_address"),
    ({"node_address": "-gpu.example"}, 400, "node_address"),
    ({"node_address": "gpu-.example"}, 400, "node_address"),
    ({"node_address": "a" * 64 + ".example"}, 400, "node_address"),
    ({"node_address": ("a" * 60 + ".") * 5}, 400, "node_address"),
    ({"node_address": "192.168.1.300"}, 400, "node_address"),
    ({"node_address": "192.168.01.1"}, 400, "node_address"),
    ({"node_address": "gpü.example"}, 400, "node_address"),
    ({"node_address": 3232235876}, 400, "node_address"),
    ({"remark": "x" * 257}, 400, "remark"),
    ({"remark": 1}, 400, "remark"),
    ({"node_status": "ONLINE"}, 400, "node_status"),
    ({"node_status": "busy"}, 400, "node_status"),
    ({"node_status": ""}, 400, "node_status"),
    ({"node_status": 1}, 400, "node_status"),
    ({"models": "llama"}, 400, "models"),
    ({"models": [1]}, 400, "models"),
    ({"models": [""]}, 400, "models"),
    ({"models": ["a\nb"]}, 400, "models"),
    ({"models": ["m" * 257]}, 400, "models"),
    ({"models": [f"m{i}" for i in range(65)]}, 400, "models"),
]


@pytest.mark.parametrize(("changes", "code", "field"), BAD_REGISTER, ids=lambda v: repr(v)[:40])
def test_bad_register_is_rejected_and_stores_nothing(client, worker, redis, changes, code, field):
    response = client.post(f"{BASE}/register", json={**SEED_REGISTER, **changes}, headers=worker)
    assert error_text(response, code).startswith(f"{field}:")
    assert node_keys(redis) == []
    assert redis.zcard("nvllm:nodes") == 0


BAD_BODIES = [
    # (raw body, code, words the error must hold)
    (b'{"node_id": "node-001",', 400, "body"),
    (b"not json", 400, "body"),
    (b"\xff\xfe", 400, "body"),
    (b"[1, 2]", 400, "body"),
    (b'"node-001"', 400, "body"),
    (b"null", 400, "body"),
    (b"42", 400, "body"),
    (b"[" * 60000, 400, "body"),  # nesting deep enough to exhaust the parser's recursion
    (b'{"a":' * 12000, 400, "body"),
    (json.dumps({**SEED_REGISTER, "remark": "x" * (65 * 1024)}).encode(), 413, "too large"),
    (b" " * (64 * 1024) + b"{}", 413, "too large"),
]


@pytest.mark.parametrize(("raw", "code", "words"), BAD_BODIES, ids=lambda v: repr(v)[:30])
def test_bad_body_is_rejected_and_stores_nothing(client, worker, redis, raw, code, words):
    response = client.post(
        f"{BASE}/register", data=raw, content_type="application/json", headers=worker
    )
    assert words in error_text(response, code)
    assert node_keys(redis) == []


def test_body_at_the_limit_is_read(client, worker):
    body = json.dumps({**SEED_REGISTER, "remark": "x"}).encode()
    padded = body + b" " * (64 * 1024 - len(body))
    response = client.post(f"{BASE}/register", data=padded, content_type="application/json", headers=worker)
    assert ok_data(response)["node_id"] == "node-001"


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("192.168.1.100", "192.168.1.100"),
        ("::1", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("gpu-1.example.com", "gpu-1.example.com"),
        ("gpu-1.example.com.", "gpu-1.example.com."),
        ("localhost", "localhost"),
        ("1host", "1host"),
    ],
)
def test_good_addresses_are_accepted(app, register, address, stored):
    # The format is what is tested here; which networks are allowed is
    # tests/api/test_node_security.py's, and no test asks a real DNS server.
    app.extensions["nvllm"].netpolicy = NetworkPolicy(["0.0.0.0/0", "::/0", "::1/128"],
                                                      resolver=lambda name: ["203.0.113.7"])
    assert register(node_address=address)["node_address"] == stored


@pytest.mark.parametrize(
    "changes",
    [
        {"node_port": 1},
        {"node_port": 65535},
        {"timeout": 1},
        {"timeout": 86400},
        {"remark": "节" * 256},
        {"remark": ""},
        {"node_id": "a" * 128},
        {"node_id": "A.b_c-9"},
        {"node_info": {"kv_cache_usage": 0}},
        {"node_info": {"kv_cache_usage": 1}},
        {"node_info": {"kv_cache_usage": 0.25}},
        {"node_info": {"kv_cache_usage": None}},
        {"node_info": {}},
        {"models": ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B"]},
    ],
    ids=lambda v: repr(v)[:40],
)
def test_edge_values_are_accepted(register, changes):
    data = register(**changes)
    for key, value in changes.items():
        if key == "node_info":
            assert {k: v for k, v in data["node_info"].items() if k in value} == {
                k: v for k, v in value.items() if v is not None
            }
        else:
            assert data[key] == value


def test_kv_cache_usage_is_shown_when_reported(register):
    data = register(node_info={"running": 1, "waiting": 0, "kv_cache": 7, "kv_cache_usage": 0.5})
    assert data["node_info"] == {"running": 1, "waiting": 0, "kv_cache": 7, "kv_cache_usage": 0.5}


def test_duplicate_models_are_kept_once_in_order(register):
    assert register(models=["b", "a", "b"])["models"] == ["b", "a"]


BAD_UPDATE = [
    ({"node_id": "node-002"}, "node_id"),
    ({"node_port": "8001"}, "node_port"),
    ({"timeout": 0}, "timeout"),
    ({"node_info": {"running": -1}}, "node_info.running"),
    ({"node_info": {"running": 1, "gpus": 8}}, "node_info.gpus"),
    ({"node_status": "busy"}, "node_status"),
    ({"remark": "x" * 257}, "remark"),
    ({"models": [None]}, "models"),
    ({"create_time": "2020-01-01T00:00:00"}, "create_time"),
    ({"update_time": "2030-01-01T00:00:00"}, "update_time"),
    ({"extra": True}, "extra"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_UPDATE, ids=lambda v: repr(v)[:40])
def test_bad_update_is_rejected_and_changes_nothing(client, worker, register, redis, clock, changes, field):
    register()
    before = redis.hgetall("nvllm:node:node-001"), redis.zscore("nvllm:nodes", "node-001")
    clock.advance(10)
    # A valid field next to the bad one is not applied either.
    response = client.put(f"{BASE}/update/node-001", json={"remark": "changed", **changes}, headers=worker)
    assert error_text(response, 400).startswith(f"{field}:")
    assert (redis.hgetall("nvllm:node:node-001"), redis.zscore("nvllm:nodes", "node-001")) == before


@pytest.mark.parametrize("raw", [b"[]", b"{", b'"x"'])
def test_update_with_a_non_object_body_is_400(client, worker, register, raw):
    register()
    response = client.put(f"{BASE}/update/node-001", data=raw, content_type="application/json", headers=worker)
    assert "body" in error_text(response, 400)


@pytest.mark.parametrize(
    ("method", "route"),
    [("get", "get_node"), ("get", "status"), ("put", "update"), ("delete", "delete")],
)
@pytest.mark.parametrize("bad_id", ["a:b", "*", "-x", "a" * 129, "节点", "x%0A", "%20x"])
def test_bad_id_in_the_path_is_400(client, worker, redis, method, route, bad_id):
    response = getattr(client, method)(f"{BASE}/{route}/{bad_id}", json={}, headers=worker)
    assert error_text(response, 400).startswith("node_id:")
    assert node_keys(redis) == []


# --- node semantics ---


def test_register_is_an_upsert_keeping_create_time(client, worker, register, clock, redis):
    register()
    clock.advance(90)
    data = register(node_port=9000, remark="restarted")
    assert data["create_time"] == "2024-01-01T00:00:00"
    assert data["update_time"] == "2024-01-01T00:01:30"
    assert data["node_port"] == 9000 and data["remark"] == "restarted"
    assert len(ok_data(client.get(f"{BASE}/all", headers=worker))) == 1
    assert node_keys(redis) == ["nvllm:node:node-001"]


def test_register_again_replaces_the_whole_node(register, clock):
    register(node_info={"running": 3, "waiting": 2, "kv_cache": 9, "kv_cache_usage": 0.9}, models=["m"])
    clock.advance(1)
    data = register(node_info={"running": 1})
    assert data["node_info"] == {"running": 1, "waiting": 0, "kv_cache": 0}
    assert data["models"] == []


def test_update_merges_node_info_field_by_field(client, worker, register, clock):
    register(node_info={"running": 3, "waiting": 2, "kv_cache": 100, "kv_cache_usage": 0.4})
    clock.advance(1)
    data = ok_data(client.put(f"{BASE}/update/node-001", json={"node_info": {"waiting": 7}}, headers=worker))
    assert data["node_info"] == {"running": 3, "waiting": 7, "kv_cache": 100, "kv_cache_usage": 0.4}
    assert {k: data[k] for k in ("node_port", "remark", "node_status", "timeout")} == {
        "node_port": 8000, "remark": "GPU节点1", "node_status": "online", "timeout": 60,
    }


def test_update_can_clear_kv_cache_usage(client, worker, register):
    register(node_info={"kv_cache_usage": 0.4})
    data = ok_data(
        client.put(f"{BASE}/update/node-001", json={"node_info": {"kv_cache_usage": None}}, headers=worker)
    )
    assert "kv_cache_usage" not in data["node_info"]


def test_update_changes_only_the_fields_sent(client, worker, register, clock):
    register(models=["m1"])
    clock.advance(1)
    data = ok_data(client.put(f"{BASE}/update/node-001", json={"node_port": 8001}, headers=worker))
    assert data["node_port"] == 8001
    assert {k: data[k] for k in SEED_REGISTER if k != "node_port"} == {
        k: v for k, v in SEED_REGISTER.items() if k != "node_port"
    }
    assert data["models"] == ["m1"]


@pytest.mark.parametrize("body", [{}, None])
def test_an_empty_update_is_a_heartbeat(client, worker, register, clock, body):
    register()
    clock.advance(59)
    kwargs = {"json": body} if body is not None else {}
    data = ok_data(client.put(f"{BASE}/update/node-001", headers=worker, **kwargs))
    assert data["update_time"] == "2024-01-01T00:00:59"
    assert data["create_time"] == "2024-01-01T00:00:00"
    clock.advance(59)  # 118 s after register, 59 s after the heartbeat
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["alive"] is True and status["node_status"] == "online"


def test_heartbeat_with_a_new_timeout_moves_the_expiry(client, worker, register, clock, redis):
    register()
    ok_data(client.put(f"{BASE}/update/node-001", json={"timeout": 600}, headers=worker))
    assert redis.zscore("nvllm:nodes", "node-001") == pytest.approx(clock.now + 600)
    clock.advance(300)
    assert ok_data(client.get(f"{BASE}/status/node-001", headers=worker))["alive"] is True


def test_update_of_an_unknown_node_is_404_and_creates_nothing(client, worker, redis):
    response = client.put(f"{BASE}/update/node-404", json=SEED_UPDATE, headers=worker)
    assert "node-404" in error_text(response, 404)
    assert node_keys(redis) == []
    assert redis.zcard("nvllm:nodes") == 0
    error_text(client.get(f"{BASE}/get_node/node-404", headers=worker), 404)


def test_delete_then_update_stays_gone(client, worker, register, redis):
    register()
    ok_data(client.delete(f"{BASE}/delete/node-001", headers=worker))
    error_text(client.put(f"{BASE}/update/node-001", json={"node_status": "online"}, headers=worker), 404)
    error_text(client.put(f"{BASE}/update/node-001", json={}, headers=worker), 404)
    error_text(client.get(f"{BASE}/get_node/node-001", headers=worker), 404)
    assert node_keys(redis) == []
    assert redis.zcard("nvllm:nodes") == 0


def test_delete_of_an_unknown_node_is_404(client, worker):
    error_text(client.delete(f"{BASE}/delete/node-404", headers=worker), 404)


@pytest.mark.parametrize("route", ["get_node", "status"])
def test_read_of_an_unknown_node_is_404(client, worker, route):
    assert "node-404" in error_text(client.get(f"{BASE}/{route}/node-404", headers=worker), 404)


def test_liveness_boundary(client, worker, register, clock):
    register()
    clock.advance(60)  # now - update_time == timeout: still alive
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["alive"] is True and status["routable"] is True
    clock.advance(0.5)
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["alive"] is False


def test_an_expired_node_reads_as_offline_everywhere(client, worker, register, clock):
    register()
    clock.advance(61)
    assert ok_data(client.get(f"{BASE}/get_node/node-001", headers=worker))["node_status"] == "offline"
    assert ok_data(client.get(f"{BASE}/all", headers=worker))[0]["node_status"] == "offline"
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["node_status"] == "offline"
    assert status["alive"] is False
    assert status["routable"] is False
    assert status["seconds_since_update"] == 61
    assert status["update_time"] == "2024-01-01T00:00:00"


def test_a_heartbeat_revives_an_expired_node(client, worker, register, clock):
    register()
    clock.advance(120)
    ok_data(client.put(f"{BASE}/update/node-001", json={}, headers=worker))
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["node_status"] == "online" and status["alive"] is True


def test_status_of_a_live_node(client, worker, register, clock):
    register()
    clock.advance(12.5)
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["alive"] is True
    assert status["routable"] is True
    assert status["seconds_since_update"] == 12.5
    assert status["inflight"] == 0
    assert {k: status[k] for k in SEED_REGISTER} == SEED_REGISTER


@pytest.mark.parametrize(("node_status", "routable"), [("online", True), ("draining", False), ("offline", False)])
def test_only_online_nodes_are_routable(client, worker, register, node_status, routable):
    register(node_status=node_status)
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["alive"] is True
    assert status["node_status"] == node_status
    assert status["routable"] is routable


def test_retention_then_the_node_disappears(client, worker, register, clock, redis, settings):
    register()
    clock.advance(60 + settings.node_retention)  # expired exactly `retention` ago: still shown
    assert ok_data(client.get(f"{BASE}/get_node/node-001", headers=worker))["node_status"] == "offline"
    assert [n["node_id"] for n in ok_data(client.get(f"{BASE}/all", headers=worker))] == ["node-001"]
    assert ok_data(client.get(f"{BASE}/get_node/node-001", headers=worker))["node_id"] == "node-001"
    clock.advance(1)
    error_text(client.get(f"{BASE}/get_node/node-001", headers=worker), 404)
    error_text(client.get(f"{BASE}/status/node-001", headers=worker), 404)
    assert ok_data(client.get(f"{BASE}/all", headers=worker)) == []
    assert node_keys(redis) == []
    assert redis.zcard("nvllm:nodes") == 0
    error_text(client.put(f"{BASE}/update/node-001", json={}, headers=worker), 404)


@pytest.mark.parametrize("retention", [0, 10])
def test_retention_is_configurable(settings, redis, clock, retention):
    from main import create_app
    from tests.helpers import ADMIN_PASSWORD

    app = create_app(settings.replace(node_retention=retention), redis_client=redis, clock=clock)
    client = app.test_client()
    login = client.post("/api/user/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    headers = {"Authorization": f"Bearer {ok_data(login)['token']}"}
    ok_data(client.post(f"{BASE}/register", json=SEED_REGISTER, headers=headers))
    clock.advance(60 + retention)
    ok_data(client.get(f"{BASE}/get_node/node-001", headers=headers))
    clock.advance(0.5)
    error_text(client.get(f"{BASE}/get_node/node-001", headers=headers), 404)


def test_all_is_sorted_by_node_id(client, worker, register):
    for node_id in ["node-b", "node-10", "Node-Z", "node-a", "node-2"]:
        register(node_id=node_id)
    ids = [n["node_id"] for n in ok_data(client.get(f"{BASE}/all", headers=worker))]
    assert ids == sorted(ids) == ["Node-Z", "node-10", "node-2", "node-a", "node-b"]


def test_all_is_empty_with_no_nodes(client, worker):
    assert ok_data(client.get(f"{BASE}/all", headers=worker)) == []


@pytest.fixture
def fleet(register, clock):
    """Four nodes: two online (one expired), one draining, one offline."""
    register(node_id="expired", models=["llama"], node_type="master")
    clock.advance(61)
    register(node_id="online", models=["llama", "qwen"], node_type="worker")
    register(node_id="any-model", models=[], node_type="worker", node_status="draining")
    register(node_id="off", models=["qwen"], node_type="worker", node_status="offline")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["any-model", "expired", "off", "online"]),
        ("?status=online", ["online"]),
        ("?status=offline", ["expired", "off"]),
        ("?status=draining", ["any-model"]),
        ("?model=llama", ["any-model", "expired", "online"]),
        ("?model=qwen", ["any-model", "off", "online"]),
        ("?model=mistral", ["any-model"]),
        ("?type=worker", ["any-model", "off", "online"]),
        ("?type=master", ["expired"]),
        ("?type=nothing", []),
        ("?status=offline&model=qwen", ["off"]),
        ("?status=online&model=qwen&type=worker", ["online"]),
    ],
)
def test_all_filters(client, worker, fleet, query, expected):
    found = ok_data(client.get(f"{BASE}/all{query}", headers=worker))
    assert [n["node_id"] for n in found] == expected


@pytest.mark.parametrize("query", ["?status=busy", "?status=ONLINE", "?status="])
def test_all_with_a_bad_status_filter_is_400(client, worker, query):
    assert error_text(client.get(f"{BASE}/all{query}", headers=worker), 400).startswith("status:")


def test_node_ids_are_case_sensitive(client, worker, register):
    register(node_id="Node-1")
    register(node_id="node-1")
    assert len(ok_data(client.get(f"{BASE}/all", headers=worker))) == 2
    error_text(client.get(f"{BASE}/get_node/NODE-1", headers=worker), 404)


def chunked(client, headers, raw):
    """POST without Content-Length, as a server that handles chunked bodies
    passes it on."""
    import io

    return client.post(
        f"{BASE}/register",
        input_stream=io.BytesIO(raw),
        content_type="application/json",
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_small_chunked_body_is_read(client, worker):
    assert ok_data(chunked(client, worker, json.dumps(SEED_REGISTER).encode()))["node_id"] == "node-001"


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({**SEED_REGISTER, "remark": "x" * (65 * 1024)}).encode(),
        # Valid JSON within the limit, then more: must not be cut and accepted.
        json.dumps(SEED_REGISTER).encode() + b" " * (64 * 1024) + b"trailing",
    ],
    ids=["long-remark", "valid-prefix"],
)
def test_an_oversized_chunked_body_is_413(client, worker, redis, raw):
    assert "too large" in error_text(chunked(client, worker, raw), 413)
    assert node_keys(redis) == []


def test_a_node_past_retention_is_gone_for_writes_too(client, worker, register, clock, settings, redis):
    """Whether or not a listing purged it yet, a forgotten node is not revived
    by a heartbeat, and a new registration starts it afresh."""
    register()
    clock.advance(60 + settings.node_retention + 1)
    error_text(client.get(f"{BASE}/get_node/node-001", headers=worker), 404)
    error_text(client.put(f"{BASE}/update/node-001", json={"node_status": "online"}, headers=worker), 404)
    error_text(client.get(f"{BASE}/get_node/node-001", headers=worker), 404)
    assert node_keys(redis) == []
    data = register()
    assert data["create_time"] == data["update_time"] == "2024-01-01T01:01:01"

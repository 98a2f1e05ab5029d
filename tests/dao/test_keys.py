"""The key schema: one place spells keys, every key carries the prefix, and no
request scans the keyspace."""

from __future__ import annotations

import pytest
import redis.commands.core as redis_commands

from dao.keys import Keys
from service.routes import is_forwarded
from tests.dao.conftest import PREFIX
from tests.helpers import ADMIN_PASSWORD, PASSWORD, app_routes

# Where redis-py defines each scanning command.
SCANS = {
    "keys": redis_commands.BasicKeyCommands,
    "scan": redis_commands.ScanCommands,
    "scan_iter": redis_commands.ScanCommands,
}


def test_keys_are_spelled_from_the_prefix():
    keys = Keys("fleet-a")
    assert keys.node("node-001") == "fleet-a:node:node-001"
    assert keys.nodes_by_expiry() == "fleet-a:nodes"
    assert keys.user("admin") == "fleet-a:user:admin"
    assert keys.users() == "fleet-a:users"
    assert keys.login_failures("addr", "10.0.0.1") == "fleet-a:login_failures:addr:10.0.0.1"
    assert keys.jwt_secret() == "fleet-a:secret:jwt"
    assert keys.response_node("resp_1") == "fleet-a:response:resp_1"


def test_every_key_method_uses_the_prefix():
    keys = Keys("p")
    for name in dir(keys):
        method = getattr(keys, name)
        if name.startswith("_") or not callable(method):
            continue
        args = ["x"] * (method.__code__.co_argcount - 1)
        assert method(*args).startswith("p:"), name


@pytest.fixture
def settings(settings):
    return settings.replace(redis_prefix=PREFIX)


@pytest.fixture
def scans(monkeypatch, redis):
    """Every KEYS/SCAN anyone sends: refused, and remembered."""
    seen: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            seen.append(name)
            raise AssertionError(f"{name} in a request path")

        return call

    # Client side, for plain calls and pipelines alike, on any backend.
    for name, owner in SCANS.items():
        monkeypatch.setattr(owner, name, refuse(name))
    # Server side on fakeredis, which also catches KEYS inside a Lua script.
    if type(redis).__module__.startswith("fakeredis"):
        from fakeredis.commands_mixins.generic_mixin import GenericCommandsMixin

        for name in ("keys", "scan"):
            monkeypatch.setattr(GenericCommandsMixin, name, refuse(name.upper()))
    return seen


# A body each route accepts.
BODIES = {
    ("POST", "/api/user/login"): {"username": "admin", "password": ADMIN_PASSWORD},
    ("POST", "/api/user/register"): {"username": "ops-1", "password": PASSWORD},
    ("PUT", "/api/user/update/ops-1"): {"role": "worker"},
    ("POST", "/api/node/node/register"): {"node_id": "node-001", "node_status": "online", "models": ["m"]},
    ("PUT", "/api/node/node/update/node-001"): {"node_info": {"running": 1}},
    ("POST", "/api/alias/set"): {"alias": "node-001", "model": "m"},
}
# The proxy would try to reach the node over the network; its own tests cover it.
ROUTES = [
    (method, path.replace("/user/update/node-001", "/user/update/ops-1")
     .replace("/user/token/node-001", "/user/token/ops-1")
     .replace("/user/delete/node-001", "/user/delete/ops-1"))
    for method, path in app_routes()
    if not is_forwarded(path)
]
ORDER = {"POST": 0, "PUT": 1, "GET": 2, "DELETE": 3}


def test_every_route_keeps_to_the_prefix_and_never_scans(client, auth_headers, redis, clock, scans):
    headers = auth_headers("admin")
    for method, path in sorted(ROUTES, key=lambda r: (ORDER[r[0]], r[1])):
        response = client.open(path, method=method, json=BODIES.get((method, path), {}), headers=headers)
        assert response.status_code < 500 or path.endswith("/select"), (method, path, response.get_json())
    # Failed logins, expiry and retention touch keys too.
    client.post("/api/user/login", json={"username": "nobody", "password": "wrong-password"})
    client.post("/api/node/node/register", json={"node_id": "node-002"}, headers=headers)
    clock.advance(10**6)
    client.get("/api/node/node/all", headers=auth_headers("admin"))
    assert scans == []


def test_the_scan_guard_works(redis, scans):
    with pytest.raises(AssertionError):
        redis.keys("*")
    with pytest.raises(AssertionError):
        list(redis.scan_iter())
    assert scans[:2] == ["keys", "scan_iter"]
    if type(redis).__module__.startswith("fakeredis"):
        with pytest.raises(Exception):  # noqa: B017 - whatever the script error becomes
            redis.eval("return redis.call('KEYS', '*')", 0)
        assert scans[-1] == "KEYS"


def test_every_key_written_by_the_app_carries_the_prefix(client, auth_headers, redis, clock):
    headers = auth_headers("admin")
    for method, path in sorted(ROUTES, key=lambda r: (ORDER[r[0]], r[1])):
        if method != "DELETE":
            client.open(path, method=method, json=BODIES.get((method, path), {}), headers=headers)
    client.post("/api/user/login", json={"username": "nobody", "password": "wrong-password"})
    written = redis.keys("*")
    assert written
    assert [k for k in written if not k.startswith(f"{PREFIX}:")] == []
    assert f"{PREFIX}:node:node-001" in written
    assert f"{PREFIX}:secret:jwt" in written


def test_a_second_prefix_shares_nothing(settings, redis, clock, client, auth_headers):
    from main import create_app

    client.post("/api/node/node/register", json={"node_id": "node-001"}, headers=auth_headers("admin"))
    other = create_app(settings.replace(redis_prefix="other"), redis_client=redis, clock=clock).test_client()
    login = other.post("/api/user/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    token = login.get_json()["data"]["token"]
    listed = other.get("/api/node/node/all", headers={"Authorization": f"Bearer {token}"})
    assert listed.get_json()["data"] == []
    # Each deployment signs with its own generated secret.
    assert client.get("/api/node/node/all", headers={"Authorization": f"Bearer {token}"}).status_code == 401

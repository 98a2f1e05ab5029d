"""The node API against a hostile worker or user: addresses outside the
allowed networks, other accounts' nodes, caps, and what a user may see."""

from __future__ import annotations

import pytest

from config import Settings
from main import create_app
from model.node import Node, NodeStatus
from service.netpolicy import NetworkPolicy
from service.user import create_user
from tests.helpers import ADMIN_PASSWORD, PASSWORD, SEED_REGISTER, error_text, ok_data

BASE = "/api/node/node"


@pytest.fixture
def login(client, stores, settings):
    """login(name, role): headers of a fresh account with that role."""

    def make(name: str, role: str = "worker") -> dict[str, str]:
        create_user(stores.users, {"username": name, "password": PASSWORD, "role": role},
                    now=stores.clock(), hash_n=settings.password_hash_n)
        answer = client.post("/api/user/login", json={"username": name, "password": PASSWORD})
        return {"Authorization": f"Bearer {ok_data(answer)['token']}"}

    return make


@pytest.fixture
def dns(app):
    """Names the app resolves, set per test; no real DNS server is asked."""
    answers: dict[str, list[str]] = {}
    app.extensions["nvllm"].netpolicy = NetworkPolicy.from_settings(
        None, None, "127.0.0.1", resolver=lambda name: answers.get(name, []), cache_seconds=0
    )
    return answers


def node(**changes):
    return {**SEED_REGISTER, **changes}


# --- finding 1: which addresses a node may have ---

REFUSED = [
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:169.254.169.254", "metadata"),
    ("169.254.10.1", "link-local"),
    ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("8.8.8.8", "NVLLM_ALLOWED_NETWORKS"),
    ("2001:db8::1", "NVLLM_ALLOWED_NETWORKS"),
    ("metadata.google.internal", "metadata"),
    ("metadata.google.internal.", "metadata"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_register_refuses_addresses_outside_the_allowed_networks(client, auth_headers, redis, address, why):
    answer = client.post(f"{BASE}/register", json=node(node_address=address), headers=auth_headers("worker"))
    text = error_text(answer, 403)
    assert text.startswith("node_address:") and why in text
    assert not [k for k in redis.keys("*") if ":node:" in k]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_update_refuses_them_too_and_leaves_the_node_as_it_was(client, auth_headers, address, why):
    worker = auth_headers("worker")
    ok_data(client.post(f"{BASE}/register", json=node(), headers=worker))
    answer = client.put(f"{BASE}/update/node-001", json={"node_address": address}, headers=worker)
    assert why in error_text(answer, 403)
    assert ok_data(client.get(f"{BASE}/get_node/node-001", headers=worker))["node_address"] == "192.168.1.100"


def test_names_are_resolved_and_every_address_checked(client, auth_headers, dns):
    worker = auth_headers("worker")
    dns.update({"gpu-1.lan": ["10.0.0.7"], "evil.example": ["10.0.0.8", "169.254.169.254"],
                "public.example": ["8.8.8.8"]})
    assert ok_data(client.post(f"{BASE}/register", json=node(node_address="gpu-1.lan"), headers=worker))
    text = error_text(client.post(f"{BASE}/register", json=node(node_id="n2", node_address="evil.example"),
                                  headers=worker), 403)
    # What the client sent is named; what the name resolved to is not.
    assert "evil.example" in text and "169.254" not in text and "10.0.0.8" not in text
    text = error_text(client.post(f"{BASE}/register", json=node(node_id="n3", node_address="public.example"),
                                  headers=worker), 403)
    assert "8.8.8.8" not in text


def test_a_name_that_does_not_resolve_is_a_400_naming_node_address(client, auth_headers, dns):
    answer = client.post(f"{BASE}/register", json=node(node_address="nowhere.lan"), headers=auth_headers("worker"))
    assert error_text(answer, 400).startswith("node_address:")


def test_loopback_nodes_are_refused_when_nvllm_listens_beyond_loopback(redis, clock):
    settings = Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4, host="0.0.0.0")
    app = create_app(settings, redis_client=redis, clock=clock)
    client = app.test_client()
    token = ok_data(client.post("/api/user/login", json={"username": "admin", "password": ADMIN_PASSWORD}))
    headers = {"Authorization": f"Bearer {token['token']}"}
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "localhost"):
        answer = client.post(f"{BASE}/register", json=node(node_address=address), headers=headers)
        assert "loopback" in error_text(answer, 403), address
    ok_data(client.post(f"{BASE}/register", json=node(), headers=headers))  # a private address still is fine


def test_listed_networks_replace_the_default(redis, clock):
    settings = Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4,
                        allowed_networks=("203.0.113.0/24",))
    client = create_app(settings, redis_client=redis, clock=clock).test_client()
    token = ok_data(client.post("/api/user/login", json={"username": "admin", "password": ADMIN_PASSWORD}))
    headers = {"Authorization": f"Bearer {token['token']}"}
    ok_data(client.post(f"{BASE}/register", json=node(node_address="203.0.113.9"), headers=headers))
    for address in ("192.168.1.100", "127.0.0.1"):
        error_text(client.post(f"{BASE}/register", json=node(node_address=address), headers=headers), 403)


def test_the_seeds_default_address_is_stored_but_never_contacted(client, auth_headers, app):
    data = ok_data(client.post(f"{BASE}/register", json={"node_status": "online"}, headers=auth_headers("worker")))
    assert data["node_address"] == "0.0.0.0"
    fleet = app.extensions["nvllm"].proxy.fleet
    fleet.refresh()
    assert [s.node_id for s in fleet.known()] == [data["node_id"]]
    assert fleet.routable() == []


def test_reregistering_keeps_a_failing_node_out_of_rotation(client, auth_headers, stores):
    worker = auth_headers("worker")
    ok_data(client.post(f"{BASE}/register", json=node(), headers=worker))
    stores.nodes.flag("node-001", {"probe_failing": "1"})  # its /health failed
    ok_data(client.post(f"{BASE}/register", json=node(), headers=worker))
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=worker))
    assert status["probe_failing"] is True and status["routable"] is False


# --- finding 4: only a node's owner (or an admin) changes it ---


def test_another_worker_cannot_take_a_node_over(client, login, stores):
    alice, mallory = login("alice"), login("mallory")
    ok_data(client.post(f"{BASE}/register", json=node(), headers=alice))
    attempts = [
        client.post(f"{BASE}/register", json=node(node_address="10.6.6.6"), headers=mallory),
        client.put(f"{BASE}/update/node-001", json={"node_address": "10.6.6.6"}, headers=mallory),
        client.put(f"{BASE}/update/node-001", json={"node_status": "draining"}, headers=mallory),
        client.put(f"{BASE}/update/node-001", json={}, headers=mallory),
        client.delete(f"{BASE}/delete/node-001", headers=mallory),
    ]
    for answer in attempts:
        assert error_text(answer, 403) == "node 'node-001' belongs to another account"
    kept = stores.nodes.load("node-001")
    assert (kept.node_address, kept.node_status, kept.owner) == ("192.168.1.100", NodeStatus.ONLINE, "alice")
    assert kept.update_time == kept.create_time  # mallory's {} was no heartbeat either


def test_the_owner_and_admins_may_change_and_delete(client, login, stores):
    alice, admin = login("alice"), login("root", "admin")
    ok_data(client.post(f"{BASE}/register", json=node(), headers=alice))
    ok_data(client.post(f"{BASE}/register", json=node(remark="again"), headers=alice))
    ok_data(client.put(f"{BASE}/update/node-001", json={"node_status": "draining"}, headers=alice))
    ok_data(client.put(f"{BASE}/update/node-001", json={"node_status": "online"}, headers=admin))
    ok_data(client.post(f"{BASE}/register", json=node(remark="by admin"), headers=admin))
    assert stores.nodes.load("node-001").owner == "alice"  # an admin acting keeps the owner
    status = ok_data(client.get(f"{BASE}/status/node-001", headers=admin))
    assert status["owner"] == "alice"
    assert "owner" not in ok_data(client.get(f"{BASE}/status/node-001", headers=alice))
    ok_data(client.delete(f"{BASE}/delete/node-001", headers=admin))
    ok_data(client.post(f"{BASE}/register", json=node(), headers=alice))
    ok_data(client.delete(f"{BASE}/delete/node-001", headers=alice))


def test_a_node_from_before_owners_were_recorded_is_for_admins_only(client, login, stores, clock):
    now = clock()
    stores.nodes.save(Node("old", node_address="10.0.0.1", create_time=now, update_time=now))
    worker, admin = login("alice"), login("root", "admin")
    error_text(client.put(f"{BASE}/update/old", json={}, headers=worker), 403)
    error_text(client.post(f"{BASE}/register", json=node(node_id="old"), headers=worker), 403)
    error_text(client.delete(f"{BASE}/delete/old", headers=worker), 403)
    ok_data(client.put(f"{BASE}/update/old", json={}, headers=admin))
    ok_data(client.delete(f"{BASE}/delete/old", headers=admin))


def test_the_owner_check_is_atomic_with_the_write(stores, clock):
    """The check sits in the Lua script: a node deleted and re-registered by
    its owner between another worker's read and write is still refused."""
    from model.errors import NodeForbidden
    from model.node import Actor

    now = clock()
    stores.nodes.save(Node("n1", node_address="10.0.0.1", create_time=now, update_time=now),
                      actor=Actor("alice"))
    with pytest.raises(NodeForbidden):
        stores.nodes.update("n1", {}, now, actor=Actor("mallory"))
    with pytest.raises(NodeForbidden):
        stores.nodes.save(Node("n1", node_address="10.6.6.6"), actor=Actor("mallory"))
    with pytest.raises(NodeForbidden):
        stores.nodes.delete("n1", actor=Actor("mallory"))
    assert stores.nodes.load("n1").node_address == "10.0.0.1"


# --- finding 8: caps ---


def test_nodes_are_capped_in_total_and_per_account(redis, clock):
    settings = Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4, max_nodes=5, max_nodes_per_account=3)
    app = create_app(settings, redis_client=redis, clock=clock)
    client, stores = app.test_client(), app.extensions["nvllm"]

    def login(name: str) -> dict[str, str]:
        create_user(stores.users, {"username": name, "password": PASSWORD, "role": "worker"},
                    now=clock(), hash_n=2**4)
        answer = client.post("/api/user/login", json={"username": name, "password": PASSWORD})
        return {"Authorization": f"Bearer {ok_data(answer)['token']}"}

    alice, bob = login("alice"), login("bob")
    for i in range(3):
        ok_data(client.post(f"{BASE}/register", json=node(node_id=f"a{i}"), headers=alice))
    text = error_text(client.post(f"{BASE}/register", json=node(node_id="a3"), headers=alice), 409)
    assert "NVLLM_MAX_NODES_PER_ACCOUNT" in text
    ok_data(client.post(f"{BASE}/register", json=node(node_id="a0", remark="again"), headers=alice))
    for i in range(2):
        ok_data(client.post(f"{BASE}/register", json=node(node_id=f"b{i}"), headers=bob))
    text = error_text(client.post(f"{BASE}/register", json=node(node_id="b2"), headers=bob), 409)
    assert "NVLLM_MAX_NODES" in text
    ok_data(client.delete(f"{BASE}/delete/a1", headers=alice))  # deleting frees a place for anyone
    ok_data(client.post(f"{BASE}/register", json=node(node_id="b2"), headers=bob))
    assert len(ok_data(client.get(f"{BASE}/all", headers=bob))) == 5


def test_a_purged_node_frees_its_place(redis, clock):
    settings = Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4, max_nodes_per_account=1,
                        node_retention=10)
    app = create_app(settings, redis_client=redis, clock=clock)
    client, stores = app.test_client(), app.extensions["nvllm"]
    create_user(stores.users, {"username": "alice", "password": PASSWORD, "role": "worker"}, now=clock(), hash_n=16)
    token = ok_data(client.post("/api/user/login", json={"username": "alice", "password": PASSWORD}))["token"]
    alice = {"Authorization": f"Bearer {token}"}
    ok_data(client.post(f"{BASE}/register", json=node(node_id="a0", timeout=5), headers=alice))
    error_text(client.post(f"{BASE}/register", json=node(node_id="a1"), headers=alice), 409)
    clock.advance(60)
    assert ok_data(client.get(f"{BASE}/all", headers=alice)) == []  # a0 is purged
    ok_data(client.post(f"{BASE}/register", json=node(node_id="a1"), headers=alice))


def test_the_models_list_is_capped(client, auth_headers):
    worker = auth_headers("worker")
    for models in (["m"] * 65, ["x" * 257], [""]):
        answer = client.post(f"{BASE}/register", json=node(models=models), headers=worker)
        assert error_text(answer, 400).startswith("models:")


# --- finding 20: users do not see addresses ---


def test_users_see_no_node_addresses(client, auth_headers, app):
    worker, user = auth_headers("worker"), auth_headers("user")
    ok_data(client.post(f"{BASE}/register", json=node(), headers=worker))
    reads = [f"{BASE}/get_node/node-001", f"{BASE}/status/node-001", f"{BASE}/all"]
    for path in reads:
        shown = str(ok_data(client.get(path, headers=user)))
        assert "node_address" not in shown and "node_port" not in shown and "192.168" not in shown, path
        assert "192.168.1.100" in str(ok_data(client.get(path, headers=worker))), path
    app.extensions["nvllm"].proxy.fleet.refresh()
    selected = ok_data(client.get(f"{BASE}/select", headers=user))
    assert selected["node_id"] == "node-001"
    assert not {"url", "node_address", "node_port"} & set(selected) and "192.168" not in str(selected)
    assert ok_data(client.get(f"{BASE}/select", headers=worker))["url"] == "http://192.168.1.100:8000"

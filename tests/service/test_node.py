"""The node registry's rules, with the clock passed in: no Flask, no sleeping."""

from __future__ import annotations

import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from model.errors import NodeNotFound, ValidationError
from model.node import Actor, NodeStatus
from service import node as nodes
from service.netpolicy import NetworkPolicy

NOW = 1704067200.0
RETENTION = 3600
OPS = Actor("ops", admin=True)
POLICY = NetworkPolicy.from_settings(None, None, "127.0.0.1")


# Ownership and addresses have their own tests (tests/api/test_node_security.py):
# here an admin acts, under the default policy.
def register(store, payload, **options):
    return nodes.register(store, payload, actor=OPS, netpolicy=POLICY, **options)


def update(store, node_id, payload, **options):
    return nodes.update(store, node_id, payload, actor=OPS, netpolicy=POLICY, **options)


def delete(store, node_id):
    return nodes.delete(store, node_id, actor=OPS)


@pytest.fixture
def store(redis) -> NodeStore:
    return NodeStore(redis, Keys())


@pytest.fixture
def inflight(redis) -> InflightStore:
    return InflightStore(redis, Keys())


def test_register_then_get(store):
    node = register(store, {"node_id": "n1", "node_status": "online"}, now=NOW)
    assert nodes.get(store, "n1", now=NOW, retention=RETENTION) == node


def test_register_validates_before_writing(store, redis):
    with pytest.raises(ValidationError):
        register(store, {"node_id": "n1", "node_port": 0}, now=NOW)
    assert redis.keys("*") == []


def test_reregister_keeps_create_time(store):
    register(store, {"node_id": "n1"}, now=NOW)
    again = register(store, {"node_id": "n1", "remark": "back"}, now=NOW + 30)
    assert (again.create_time, again.update_time, again.remark) == (NOW, NOW + 30, "back")


def test_update_is_a_guarded_heartbeat(store, redis):
    with pytest.raises(NodeNotFound):
        update(store, "n1", {}, now=NOW)
    assert redis.keys("*") == []
    register(store, {"node_id": "n1", "node_info": {"running": 4}}, now=NOW)
    node = update(store, "n1", {"node_info": {"waiting": 2}}, now=NOW + 9)
    assert (node.node_info.running, node.node_info.waiting, node.update_time) == (4, 2, NOW + 9)


@pytest.mark.parametrize("bad", ["a:b", "*", ""])
def test_ids_are_checked_before_any_read(store, bad):
    for call in (
        lambda: update(store, bad, {}, now=NOW),
        lambda: delete(store, bad),
        lambda: nodes.get(store, bad, now=NOW, retention=RETENTION),
    ):
        with pytest.raises(ValidationError):
            call()


def test_delete(store):
    register(store, {"node_id": "n1"}, now=NOW)
    delete(store, "n1")
    with pytest.raises(NodeNotFound):
        delete(store, "n1")
    with pytest.raises(NodeNotFound):
        update(store, "n1", {}, now=NOW + 1)


def test_status_live_fields(store, inflight):
    register(store, {"node_id": "n1", "node_status": "online"}, now=NOW)
    live = nodes.status(store, inflight, "n1", now=NOW + 3.25, retention=RETENTION)
    assert (live["alive"], live["routable"], live["seconds_since_update"], live["inflight"]) == (True, True, 3.25, 0)
    failing = nodes.status(store, inflight, "n1", now=NOW, retention=RETENTION, failing=True)
    assert failing["routable"] is False and failing["alive"] is True
    expired = nodes.status(store, inflight, "n1", now=NOW + 61, retention=RETENTION)
    assert (expired["alive"], expired["routable"], expired["node_status"]) == (False, False, "offline")


def test_status_counts_inflight_from_every_instance(store, inflight):
    register(store, {"node_id": "n1", "node_status": "online"}, now=NOW)
    inflight.publish("instance-a", {"n1": 2}, now=NOW, lease=30)
    inflight.publish("instance-b", {"n1": 3, "n2": 1}, now=NOW, lease=30)
    assert nodes.status(store, inflight, "n1", now=NOW, retention=RETENTION)["inflight"] == 5


def test_retention(store, redis):
    register(store, {"node_id": "n1", "timeout": 10}, now=NOW)
    end = NOW + 10 + RETENTION
    assert nodes.get(store, "n1", now=end, retention=RETENTION).node_id == "n1"
    assert [n.node_id for n in nodes.list_nodes(store, now=end, retention=RETENTION)] == ["n1"]
    with pytest.raises(NodeNotFound):
        nodes.get(store, "n1", now=end + 0.001, retention=RETENTION)
    assert nodes.list_nodes(store, now=end + 0.001, retention=RETENTION) == []
    assert redis.keys("*") == []


def test_zero_retention_drops_a_node_as_it_expires(store):
    register(store, {"node_id": "n1", "timeout": 10}, now=NOW)
    assert len(nodes.list_nodes(store, now=NOW + 10, retention=0)) == 1
    assert nodes.list_nodes(store, now=NOW + 10.5, retention=0) == []


def test_list_filters(store):
    register(store, {"node_id": "b", "node_status": "online", "models": ["m"]}, now=NOW)
    register(store, {"node_id": "a", "node_status": "online", "node_type": "worker"}, now=NOW - 100)

    def ids(**filters):
        return [n.node_id for n in nodes.list_nodes(store, now=NOW, retention=RETENTION, **filters)]

    assert ids() == ["a", "b"]
    assert ids(status="online") == ["b"]
    assert ids(status="offline") == ["a"]  # expired: shown offline
    assert ids(model="m") == ["a", "b"]
    assert ids(model="other") == ["a"]
    assert ids(node_type="worker") == ["a"]
    assert ids(node_type="master", status="online", model="m") == ["b"]
    with pytest.raises(ValidationError) as caught:
        ids(status="up")
    assert caught.value.field == "status"


def test_listing_does_not_change_a_node(store):
    register(store, {"node_id": "n1", "node_status": "draining"}, now=NOW)
    nodes.list_nodes(store, now=NOW + 100, retention=RETENTION)
    assert store.load("n1").node_status is NodeStatus.DRAINING


def test_writes_after_retention_start_afresh(store, redis):
    register(store, {"node_id": "n1", "timeout": 10}, now=NOW)
    later = NOW + 10 + RETENTION + 1
    with pytest.raises(NodeNotFound):
        update(store, "n1", {}, now=later, retention=RETENTION)
    assert redis.keys("*") == []
    register(store, {"node_id": "n1", "timeout": 10}, now=NOW)
    again = register(store, {"node_id": "n1"}, now=later, retention=RETENTION)
    assert again.create_time == later


def test_writes_within_retention_keep_the_node(store):
    register(store, {"node_id": "n1", "timeout": 10}, now=NOW)
    end = NOW + 10 + RETENTION
    assert update(store, "n1", {}, now=end, retention=RETENTION).create_time == NOW
    assert register(store, {"node_id": "n1"}, now=end + 5, retention=RETENTION).create_time == NOW

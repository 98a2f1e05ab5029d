"""Node and NodeInfo: validation, liveness, and both conversions."""

from __future__ import annotations

import uuid

import pytest

from model.errors import ValidationError
from model.node import (
    Node,
    NodeInfo,
    NodeStatus,
    changes_to_redis,
    format_time,
    validate_changes,
    validate_node_id,
)

NOW = 1704067200.0


def test_defaults_are_the_seeds():
    node = Node.from_payload({}, now=NOW)
    assert uuid.UUID(node.node_id).version == 4
    assert (node.node_type, node.node_address, node.node_port) == ("master", "0.0.0.0", 8000)
    assert node.node_status is NodeStatus.OFFLINE
    assert node.node_info == NodeInfo(0, 0, 0)
    assert (node.remark, node.timeout, node.models) == ("doc", 60, [])
    assert node.create_time == node.update_time == NOW


def test_each_missing_id_is_a_new_uuid():
    assert Node.from_payload({}, now=NOW).node_id != Node.from_payload({}, now=NOW).node_id


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"node_port": True}, "node_port"),
        ({"node_port": False}, "node_port"),
        ({"timeout": 1.0}, "timeout"),
        ({"node_info": {"running": True}}, "node_info.running"),
        ({"node_info": {"kv_cache_usage": True}}, "node_info.kv_cache_usage"),
        ({"node_info": {"kv_cache_usage": float("nan")}}, "node_info.kv_cache_usage"),
        ({"node_info": {"kv_cache_usage": float("inf")}}, "node_info.kv_cache_usage"),
        ({"node_id": "a\n"}, "node_id"),
        ({"node_type": "worker\n"}, "node_type"),
        ({"bogus": 1}, "bogus"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_validation_names_the_field(payload, field):
    with pytest.raises(ValidationError) as caught:
        Node.from_payload(payload, now=NOW)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert caught.value.code == 400


@pytest.mark.parametrize("payload", [None, [], "x", 1])
def test_a_body_that_is_not_an_object_is_rejected(payload):
    with pytest.raises(ValidationError) as caught:
        validate_changes(payload, allow_id=True)
    assert caught.value.field == "body"


def test_updates_may_not_carry_an_id():
    with pytest.raises(ValidationError, match="node_id"):
        validate_changes({"node_id": "x"}, allow_id=False)


def test_validate_changes_keeps_only_what_was_sent():
    assert validate_changes({"node_info": {"waiting": 3}}, allow_id=False) == {"node_info": {"waiting": 3}}
    assert validate_changes({}, allow_id=False) == {}


@pytest.mark.parametrize("good", ["a", "0", "node-001", "A.b_c-d", "x" * 128])
def test_good_node_ids(good):
    assert validate_node_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", ":", "a:b", "*", "a*", "?", "[a]", " x", "x ", "x\n", "-x", "_x", ".x", "x" * 129, "节点", "ａ"]
)
def test_bad_node_ids(bad):
    with pytest.raises(ValidationError):
        validate_node_id(bad)


def test_ipv6_is_normalised_and_bracketed_in_the_url():
    node = Node.from_payload({"node_address": "2001:DB8:0::1", "node_port": 8001}, now=NOW)
    assert node.node_address == "2001:db8::1"
    assert node.url == "http://[2001:db8::1]:8001"
    assert Node.from_payload({"node_address": "gpu-1.lan"}, now=NOW).url == "http://gpu-1.lan:8000"


def test_liveness():
    node = Node("n", timeout=60, update_time=NOW, node_status=NodeStatus.ONLINE)
    assert node.expires_at == NOW + 60
    assert node.alive(NOW + 60) and node.routable(NOW + 60)
    assert not node.alive(NOW + 60.001)
    assert node.effective_status(NOW + 61) is NodeStatus.OFFLINE
    assert node.effective_status(NOW) is NodeStatus.ONLINE
    assert not Node("n", update_time=NOW, node_status=NodeStatus.DRAINING).routable(NOW)


@pytest.mark.parametrize(
    ("models", "asked", "serves"),
    [([], "any", True), (["a"], "a", True), (["a"], "b", False), (["a"], None, True), (["a"], "", True)],
)
def test_serves(models, asked, serves):
    assert Node("n", models=models).serves(asked) is serves


def test_to_dict_shows_an_expired_node_as_offline():
    node = Node("n", node_status=NodeStatus.DRAINING, update_time=NOW, create_time=NOW)
    assert node.to_dict(NOW)["node_status"] == "draining"
    assert node.to_dict(NOW + 61)["node_status"] == "offline"
    assert node.node_status is NodeStatus.DRAINING  # the stored status is untouched


def test_redis_round_trip():
    node = Node(
        "node-001",
        node_type="worker",
        node_address="::1",
        node_port=8001,
        node_status=NodeStatus.DRAINING,
        node_info=NodeInfo(running=2, waiting=1, kv_cache=1024, kv_cache_usage=0.125),
        remark="GPU节点1",
        timeout=120,
        models=["m1", "m/2"],
        create_time=NOW + 0.25,
        update_time=NOW + 10.5,
    )
    mapping = node.to_redis()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    assert Node.from_redis(mapping) == node


def test_an_unset_usage_round_trips_as_unset():
    node = Node("n")
    assert node.to_redis().get("info:kv_cache_usage", "") == ""
    assert Node.from_redis(node.to_redis()).node_info.kv_cache_usage is None
    cleared = changes_to_redis({"node_info": {"kv_cache_usage": None}})
    assert cleared == {"info:kv_cache_usage": ""}
    assert Node.from_redis({"node_id": "n", **cleared}).node_info.kv_cache_usage is None


def test_an_old_record_with_few_fields_loads_with_defaults():
    node = Node.from_redis({"node_id": "old", "node_status": "busy", "info:gpu": "3"})
    assert node == Node("old")


def test_node_info_merge():
    info = NodeInfo(running=1, waiting=2, kv_cache=3, kv_cache_usage=0.5)
    assert info.merged({"waiting": 9}) == NodeInfo(1, 9, 3, 0.5)
    assert info.merged({"kv_cache_usage": None}) == NodeInfo(1, 2, 3, None)


def test_changes_to_redis_touches_only_the_sent_fields():
    clean = validate_changes(
        {"node_info": {"waiting": 4}, "node_status": "online", "models": ["x"], "node_port": 9},
        allow_id=False,
    )
    assert changes_to_redis(clean) == {
        "info:waiting": "4",
        "node_status": "online",
        "models": '["x"]',
        "node_port": "9",
    }


@pytest.mark.parametrize(
    ("ts", "text"),
    [(0, "1970-01-01T00:00:00"), (NOW, "2024-01-01T00:00:00"), (NOW + 59.999, "2024-01-01T00:00:59")],
)
def test_format_time(ts, text):
    assert format_time(ts) == text

"""NodeStore: upserts, guarded heartbeats, the expiry index, purges."""

from __future__ import annotations

import pytest

from model.node import Node, NodeInfo, NodeStatus, validate_changes
from tests.dao.conftest import PREFIX

NOW = 1704067200.0


def make(node_id="node-001", now=NOW, **fields) -> Node:
    return Node(node_id, create_time=now, update_time=now, **fields)


def test_save_then_load(nodes):
    node = make(node_status=NodeStatus.ONLINE, node_info=NodeInfo(1, 2, 3, 0.5), models=["m"])
    assert nodes.save(node) == node
    assert nodes.load("node-001") == node
    assert nodes.load("node-404") is None


def test_save_writes_the_hash_and_the_index(nodes, redis):
    nodes.save(make(timeout=90))
    assert redis.hget(f"{PREFIX}:node:node-001", "node_id") == "node-001"
    assert redis.zscore(f"{PREFIX}:nodes", "node-001") == NOW + 90


def test_save_again_keeps_create_time_and_drops_old_fields(nodes, redis):
    nodes.save(make(node_info=NodeInfo(kv_cache_usage=0.9), remark="first"))
    saved = nodes.save(make(now=NOW + 100, remark="second"))
    assert saved.create_time == NOW and saved.update_time == NOW + 100
    assert saved.remark == "second" and saved.node_info.kv_cache_usage is None
    assert redis.zscore(f"{PREFIX}:nodes", "node-001") == NOW + 160


def test_update_merges_and_refreshes(nodes, redis):
    nodes.save(make(node_info=NodeInfo(1, 2, 3, 0.5)))
    changes = validate_changes({"node_info": {"waiting": 7}, "timeout": 30}, allow_id=False)
    updated = nodes.update("node-001", changes, NOW + 5)
    assert updated.node_info == NodeInfo(1, 7, 3, 0.5)
    assert updated.timeout == 30 and updated.update_time == NOW + 5 and updated.create_time == NOW
    assert redis.zscore(f"{PREFIX}:nodes", "node-001") == NOW + 35


def test_an_empty_update_is_a_heartbeat(nodes):
    nodes.save(make())
    assert nodes.update("node-001", {}, NOW + 42).update_time == NOW + 42


def test_update_of_a_missing_node_writes_nothing(nodes, redis):
    assert nodes.update("node-001", validate_changes({"remark": "x"}, allow_id=False), NOW) is None
    assert redis.keys("*") == []


def test_update_after_delete_writes_nothing(nodes, redis):
    nodes.save(make())
    assert nodes.delete("node-001") is True
    assert nodes.update("node-001", {}, NOW + 1) is None
    assert nodes.delete("node-001") is False
    assert redis.keys("*") == []


def test_load_all_follows_the_index(nodes, redis):
    for node_id in ("b", "a", "c"):
        nodes.save(make(node_id))
    assert sorted(n.node_id for n in nodes.load_all()) == ["a", "b", "c"]
    # A hash whose index entry is missing is not listed; an index entry whose
    # hash is missing is skipped.
    redis.zrem(f"{PREFIX}:nodes", "a")
    redis.delete(f"{PREFIX}:node:b")
    assert [n.node_id for n in nodes.load_all()] == ["c"]


def test_load_all_of_nothing(nodes):
    assert nodes.load_all() == []


def test_purge_forgets_only_nodes_expired_before_the_cutoff(nodes, redis):
    nodes.save(make("old", timeout=10))  # expires NOW + 10
    nodes.save(make("edge", timeout=20))  # expires NOW + 20
    nodes.save(make("new", timeout=60))
    assert nodes.purge_expired(NOW + 20) == ["old"]
    assert redis.exists(f"{PREFIX}:node:old") == 0
    assert redis.zscore(f"{PREFIX}:nodes", "old") is None
    assert sorted(n.node_id for n in nodes.load_all()) == ["edge", "new"]


def test_purge_spares_a_node_revived_since_it_was_looked_at(nodes, redis, monkeypatch):
    nodes.save(make("n", timeout=10))
    real_zrange = redis.zrangebyscore

    def stale_read(*args, **kwargs):
        found = real_zrange(*args, **kwargs)
        nodes.update("n", {}, NOW + 1000)  # a heartbeat lands between the read and the purge
        return found

    monkeypatch.setattr(redis, "zrangebyscore", stale_read)
    assert nodes.purge_expired(NOW + 100) == []
    monkeypatch.undo()
    assert nodes.load("n").update_time == NOW + 1000


@pytest.mark.parametrize("method", ["load", "delete"])
def test_storage_errors_become_storage_unavailable(nodes, server, method):
    from model.errors import StorageUnavailable

    server.connected = False
    with pytest.raises(StorageUnavailable) as caught:
        getattr(nodes, method)("node-001")
    assert caught.value.code == 503 and caught.value.headers["Retry-After"]


def test_every_node_method_maps_storage_errors(nodes, server):
    from model.errors import StorageUnavailable

    server.connected = False
    calls = [
        lambda: nodes.save(make()),
        lambda: nodes.update("node-001", {}, NOW),
        nodes.load_all,
        lambda: nodes.purge_expired(NOW),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable):
            call()


def test_purge_one_node_only_past_the_cutoff(nodes, redis):
    nodes.save(make("n", timeout=10))
    nodes.purge("n", NOW + 10)  # expiry not before the cutoff: kept
    assert nodes.load("n") is not None
    nodes.purge("n", NOW + 10.5)
    assert nodes.load("n") is None and redis.keys("*") == []
    nodes.purge("missing", NOW)
    assert redis.keys("*") == []


def test_load_changed_reads_only_nodes_written_since(nodes, redis):
    for node_id in ("a", "b", "c"):
        nodes.save(make(node_id))
    ids, changed = nodes.load_changed({})
    assert ids == ["a", "b", "c"] and set(changed) == {"a", "b", "c"}
    known = {node_id: rev for node_id, (rev, _) in changed.items()}
    assert nodes.load_changed(known) == (["a", "b", "c"], {})
    nodes.update("a", {}, NOW + 1)  # a heartbeat
    nodes.flag("b", {"probe_failing": "1"})  # no heartbeat, still a change
    nodes.save(make("c", remark="again"))  # a re-registration
    ids, changed = nodes.load_changed(known)
    assert set(changed) == {"a", "b", "c"}
    assert changed["b"][1].probe_failing and changed["c"][1].remark == "again"
    redis.hdel(f"{PREFIX}:node:a", "rev")  # a record from an older nvllm: read every time
    assert set(nodes.load_changed({k: v for k, (v, _) in changed.items()})[1]) == {"a"}

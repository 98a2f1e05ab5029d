"""Which nodes Proxy.select may pick: by model, by health, by exclusion."""

from __future__ import annotations

import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from model.errors import NoRoutableNode
from model.node import Node, NodeStatus
from service.fleet import Fleet
from service.proxy import Proxy, UpstreamConfig
from service.routing import RouteRequest
from service.routing.load import LoadPolicy
from service.routing.random_choice import RandomPolicy


@pytest.fixture
def node_store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


@pytest.fixture
def fleet(redis, node_store, clock):
    # The refresher thread waits an hour before its first tick: the test drives
    # refresh() itself.
    fleet = Fleet(node_store, InflightStore(redis, Keys("nvllm")), refresh_interval=3600,
                  eject_after=2, clock=clock)
    yield fleet
    fleet.close()


def save(store: NodeStore, node_id: str, now: float, **fields) -> Node:
    fields.setdefault("node_status", NodeStatus.ONLINE)
    return store.save(Node(node_id, node_address="127.0.0.1", create_time=now, update_time=now, **fields))


def picks(proxy: Proxy, model: str | None, tries: int = 40) -> set[str]:
    return {proxy.select(RouteRequest(model=model)).node_id for _ in range(tries)}


def test_select_keeps_to_nodes_serving_the_model_or_declaring_none(node_store, fleet, clock):
    save(node_store, "a", clock(), models=["m1"])
    save(node_store, "b", clock(), models=["m2", "m1"])
    save(node_store, "any", clock())
    fleet.refresh()
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert picks(proxy, "m1") == {"a", "b", "any"}
    assert picks(proxy, "m2") == {"b", "any"}
    assert picks(proxy, "other") == {"any"}
    assert picks(proxy, None) == {"a", "b", "any"}


def test_select_with_no_node_for_the_model_names_it(node_store, fleet, clock):
    save(node_store, "a", clock(), models=["m1"])
    fleet.refresh()
    proxy = Proxy(fleet, LoadPolicy(), UpstreamConfig())
    with pytest.raises(NoRoutableNode) as raised:
        proxy.select(RouteRequest(model="llama-70b"))
    assert raised.value.code == 503
    assert "'llama-70b'" in raised.value.message


def test_select_honours_exclude(node_store, fleet, clock):
    save(node_store, "a", clock())
    save(node_store, "b", clock())
    fleet.refresh()
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert {proxy.select(RouteRequest(), frozenset({"a"})).state.node_id for _ in range(20)} == {"b"}
    with pytest.raises(NoRoutableNode):
        proxy.select(RouteRequest(), frozenset({"a", "b"}))


def save_unroutable(node_store: NodeStore, fleet: Fleet, now: float) -> None:
    """One node left out for each reason routable() has."""
    save(node_store, "draining", now, node_status=NodeStatus.DRAINING)
    save(node_store, "offline", now, node_status=NodeStatus.OFFLINE)
    save(node_store, "expired", now - 61, timeout=60)
    save(node_store, "probe-failing", now, probe_failing=True)
    save(node_store, "ejected", now)
    fleet.refresh()
    for _ in range(2):
        fleet.record_failure(fleet.get("ejected"), "HTTP 500")


def test_only_live_online_healthy_nodes_are_routable(node_store, fleet, clock):
    save(node_store, "ok", clock())
    save_unroutable(node_store, fleet, clock())
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert {s.node_id for s in fleet.routable()} == {"ok"}
    assert picks(proxy, None) == {"ok"}


def test_a_node_expires_between_refreshes(node_store, fleet, clock):
    save(node_store, "a", clock(), timeout=10)
    fleet.refresh()
    assert [s.node_id for s in fleet.routable()] == ["a"]
    clock.advance(11)
    assert fleet.routable() == []


def test_a_pinned_request_goes_only_to_its_node_and_fails_when_it_is_excluded(node_store, fleet, clock):
    for node_id in ("a", "b", "c"):
        save(node_store, node_id, clock(), models=["m1"])
    fleet.refresh()
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    pinned = RouteRequest(pinned_node="b")  # it holds the stored response named
    assert {proxy.select(pinned).node_id for _ in range(20)} == {"b"}
    with pytest.raises(NoRoutableNode):
        proxy.select(pinned, frozenset({"b"}))  # never retried on another node


def test_no_routable_node_logs_why_each_node_was_left_out_once_a_second(node_store, fleet, clock, caplog):
    save(node_store, "m2-only", clock(), models=["m2"])
    save_unroutable(node_store, fleet, clock())
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    with caplog.at_level("WARNING", logger="nvllm.proxy"):
        for _ in range(3):
            with pytest.raises(NoRoutableNode):
                proxy.select(RouteRequest(model="m1"))
    [line] = [r.getMessage() for r in caplog.records if r.name == "nvllm.proxy"]
    assert line == ("no routable node for model 'm1' (draining: status draining, ejected: ejected for 1.0s more, "
                    "expired: no heartbeat for 61s (timeout 60s), m2-only: does not serve it, "
                    "offline: status offline, probe-failing: its /metrics poll fails)")

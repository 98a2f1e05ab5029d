"""Balancer-side polling of nodes without an agent."""

from __future__ import annotations

import pytest

from dao.keys import Keys
from dao.node import NodeStore
from model.node import Node, NodeInfo, NodeStatus
from service.netpolicy import NetworkPolicy
from service.probe import Prober

pytestmark = pytest.mark.integration  # starts fake vLLM servers


@pytest.fixture
def fake():
    from fakevllm import FakeVLLM

    server = FakeVLLM(models=["fake-model"], step_time=0.0, prefill_time_per_token=0.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


def register(store: NodeStore, port: int, now: float, node_id: str = "n1") -> Node:
    node = Node(node_id, node_address="127.0.0.1", node_port=port, node_status=NodeStatus.ONLINE,
                node_info=NodeInfo(running=7), create_time=now, update_time=now)
    return store.save(node)


def test_good_poll_is_a_heartbeat_with_load(store, fake, clock):
    register(store, fake.port, clock())
    clock.advance(30)
    prober = Prober(store, interval=5, clock=clock)
    assert prober.tick() == 1
    node = store.load("n1")
    assert node.update_time == clock()
    assert node.node_info.running == 0  # the fake is idle; the stale 7 is replaced
    assert node.node_info.kv_cache_usage == 0.0
    assert node.routable(clock())


def test_failed_poll_makes_node_unroutable_until_a_good_one(store, fake, clock):
    register(store, fake.port, clock())
    prober = Prober(store, interval=5, clock=clock)
    fake.set_fault("unhealthy")
    prober.probe(store.load("n1"))
    node = store.load("n1")
    assert node.probe_failing and not node.routable(clock())
    assert node.update_time == clock()  # a failure is not a heartbeat
    fake.set_fault(None)
    prober.probe(store.load("n1"))
    assert store.load("n1").routable(clock())


def test_unreachable_node_is_flagged(store, clock):
    register(store, 1, clock())  # nothing listens on port 1
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    assert store.load("n1").probe_failing


def test_each_node_is_polled_once_per_interval_across_instances(store, fake, clock):
    register(store, fake.port, clock())
    first, second = Prober(store, interval=5, clock=clock), Prober(store, interval=5, clock=clock)
    assert first.tick() + second.tick() == 1


def test_poll_never_recreates_a_deleted_node(store, fake, clock):
    node = register(store, fake.port, clock())
    store.delete("n1")
    Prober(store, interval=5, clock=clock).probe(node)
    assert store.load("n1") is None


def test_registering_again_keeps_the_failing_flag_until_a_poll_succeeds(store, fake, clock):
    register(store, 1, clock())
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    register(store, 1, clock())  # a target failing /health, registered again
    assert store.load("n1").probe_failing
    register(store, fake.port, clock())
    assert store.load("n1").probe_failing
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    assert not store.load("n1").probe_failing


class NoConnections:
    """An HTTP pool that fails the test if anything connects through it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def request(self, method: str, url: str, **options):
        self.calls.append(url)
        raise AssertionError(f"connected to {url}")

    urlopen = request


@pytest.mark.parametrize(("address", "answers"), [
    ("169.254.169.254", {}),
    ("0.0.0.0", {}),
    ("metadata.google.internal", {"metadata.google.internal": ["169.254.169.254"]}),
    ("gpu-1.lan", {"gpu-1.lan": ["169.254.169.254"]}),  # the name now points elsewhere
    ("gpu-2.lan", {}),  # no longer resolves
])
def test_a_refused_address_is_not_polled_and_counts_as_failing(store, clock, address, answers):
    now = clock()
    store.save(Node("n1", node_address=address, node_port=80, node_status=NodeStatus.ONLINE,
                    create_time=now, update_time=now))
    http = NoConnections()
    policy = NetworkPolicy.from_settings(None, None, "127.0.0.1", resolver=lambda name: answers.get(name, []))
    assert Prober(store, interval=5, clock=clock, http=http, netpolicy=policy).probe(store.load("n1")) is False
    assert http.calls == []
    assert store.load("n1").probe_failing

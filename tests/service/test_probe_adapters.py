"""The poller records a node's LoRA adapters and which of them run now."""

from __future__ import annotations

import pytest
import urllib3

from dao.keys import Keys
from dao.node import NodeStore
from model.adapter import Adapter
from model.node import Node, NodeStatus
from service.netpolicy import NetworkPolicy
from service.probe import Prober

pytestmark = pytest.mark.integration  # starts fake vLLM servers


@pytest.fixture
def store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


@pytest.fixture
def start():
    from fakevllm import FakeVLLM

    started = []

    def make(**options):
        server = FakeVLLM(models=["base"], step_time=0.01, prefill_time_per_token=0.0, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def register(store: NodeStore, port: int, now: float) -> Node:
    return store.save(Node("n1", node_address="127.0.0.1", node_port=port, node_status=NodeStatus.ONLINE,
                           models=["base"], create_time=now, update_time=now))


def test_a_poll_records_the_adapters_and_the_active_ones(store, start, clock):
    fake = start(lora_modules={"sql": "/loras/sql"})
    register(store, fake.port, clock())
    http = urllib3.PoolManager()
    stream = http.request("POST", fake.url + "/v1/completions", json={"model": "sql", "prompt": "x",
                          "max_tokens": 200, "stream": True}, preload_content=False)
    assert stream.read1(65536).startswith(b"data:")
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    node = store.load("n1")
    assert node.adapters == [Adapter("sql", "base", "/loras/sql")]
    assert node.models == ["base"]  # the poller leaves the registered models alone
    assert node.node_info.running_lora_adapters == ["sql"]
    assert node.node_info.waiting_lora_adapters == []
    stream.release_conn()


def test_a_node_with_an_api_key_gets_it_for_v1_models_only_where_keys_go(store, start, clock):
    fake = start(lora_modules={"sql": "/loras/sql"}, api_key="node-key")
    register(store, fake.port, clock())
    no_key = NetworkPolicy.from_settings(None, ("10.0.0.0/8",), "127.0.0.1")  # keys only to 10/8
    Prober(store, interval=5, clock=clock, netpolicy=no_key, api_key="node-key").probe(store.load("n1"))
    assert store.load("n1").adapters == []  # 401 without the key: nothing learned, nothing cleared
    Prober(store, interval=5, clock=clock, api_key="node-key").probe(store.load("n1"))
    assert [a.id for a in store.load("n1").adapters] == ["sql"]

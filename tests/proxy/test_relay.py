"""nvllm is no open relay: the address of a node is checked again at every
connection, the upstream API key goes only to the key networks, and a 502
tells a client nothing about what is listening where."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from model.node import NodeInfo
from service.netpolicy import NetworkPolicy
from tests.proxy.recorder import Recorder, serving

pytestmark = pytest.mark.integration  # a live nvllm and upstream servers

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[Recorder]:
    with serving(Recorder()) as server:
        yield server


def use_dns(live, answers: dict[str, list[str]], **options) -> None:
    """The live app resolves names from `answers` (no real DNS, no cache)."""
    settings = live.app.config["NVLLM"]
    policy = NetworkPolicy.from_settings(settings.allowed_networks, settings.upstream_key_networks, settings.host,
                                         resolver=lambda name: answers.get(name, []), cache_seconds=0, **options)
    live.app.extensions["nvllm"].netpolicy = policy
    live.fleet.netpolicy = policy


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_name_is_resolved_checked_and_connected_to_by_address(nvllm, upstream):
    answers = {"gpu-1.lan": ["127.0.0.1"]}
    use_dns(nvllm, answers)
    nvllm.register("named", upstream.port)
    nvllm.app.extensions["nvllm"].nodes.update("named", {"node_address": "gpu-1.lan"}, time.time())
    nvllm.fleet.refresh()
    assert nvllm.post("/v1/chat/completions", BODY).status == 200
    assert upstream.seen[-1]["host"] == f"gpu-1.lan:{upstream.port}"  # the name the node expects
    # DNS rebinding: the same name now points at the metadata service.
    answers["gpu-1.lan"] = ["169.254.169.254"]
    answer = nvllm.post("/v1/chat/completions", BODY)
    assert answer.status == 502 and len(upstream.seen) == 1
    assert "169.254" not in answer.data.decode()


def test_a_refused_address_gets_no_traffic_and_others_serve(nvllm, upstream):
    """A record written before addresses were checked, at the metadata
    address: it is not routable, and the request goes to a good node."""
    nvllm.register("good", upstream.port)
    nvllm.register("metadata", 80)
    nodes = nvllm.app.extensions["nvllm"].nodes
    nodes.update("metadata", {"node_address": "169.254.169.254"}, time.time())
    nvllm.fleet.refresh()
    assert [s.node_id for s in nvllm.fleet.routable()] == ["good"]
    for _ in range(3):
        answer = nvllm.post("/v1/chat/completions", BODY)
        assert answer.status == 200 and answer.headers["X-NVLLM-Node"] == "good"


def test_a_name_refused_at_connect_time_is_retried_elsewhere(nvllm, upstream):
    use_dns(nvllm, {"gone.lan": []})
    nvllm.register("good", upstream.port, node_info=NodeInfo(waiting=50))
    nvllm.register("gone", upstream.port)
    nvllm.app.extensions["nvllm"].nodes.update("gone", {"node_address": "gone.lan"}, time.time())
    nvllm.fleet.refresh()
    answer = nvllm.post("/v1/chat/completions", BODY)
    assert answer.status == 200 and answer.headers["X-NVLLM-Node"] == "good"


def test_the_502_text_tells_nothing_about_the_connection(nvllm):
    nvllm.register("closed", closed_port())
    answer = nvllm.post("/v1/chat/completions", BODY)
    assert answer.status == 502
    message = answer.json()["error"]["message"]
    assert message == "no node could serve the request (1 attempt(s) failed)"
    for detail in ("closed", "Error", "127.0.0.1", "refused", "timed out"):
        assert detail not in message


def test_the_api_key_goes_only_to_the_key_networks(start_nvllm, upstream):
    keyed = start_nvllm(upstream_api_key="node-secret", upstream_key_networks=("127.0.0.0/8",))
    keyed.register("rec", upstream.port)
    assert keyed.post("/v1/chat/completions", BODY).status == 200
    assert upstream.seen[-1]["authorization"] == "Bearer node-secret"
    # A wide allowed range for registration, the key only for the GPU subnet.
    narrow = start_nvllm(upstream_api_key="node-secret", upstream_key_networks=("10.1.0.0/16",))
    narrow.fleet.refresh()
    assert narrow.post("/v1/chat/completions", BODY).status == 200
    assert "authorization" not in upstream.seen[-1]
    assert "node-secret" not in str(upstream.seen[-1])


def test_the_api_key_follows_the_checked_address_of_a_name(start_nvllm, upstream):
    live = start_nvllm(upstream_api_key="node-secret", upstream_key_networks=("10.0.0.0/8",))
    # The name resolves to loopback (allowed here), outside the key networks.
    use_dns(live, {"gpu-1.lan": ["127.0.0.1"]})
    live.register("named", upstream.port)
    live.app.extensions["nvllm"].nodes.update("named", {"node_address": "gpu-1.lan"}, time.time())
    live.fleet.refresh()
    assert live.post("/v1/chat/completions", BODY).status == 200
    assert "authorization" not in upstream.seen[-1]

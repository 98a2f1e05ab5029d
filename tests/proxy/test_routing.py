"""Where the proxy sends requests: by model, by policy (NVLLM_ROUTING), never
to a node that may not take new work, and with counts shared by instances."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from model.node import NodeInfo, NodeStatus
from service.user import create_user
from tests.helpers import PASSWORD
from tests.proxy.conftest import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

CHAT = [{"role": "user", "content": "hello"}]




@pytest.fixture
def pair(nvllm, start_fake):
    """Two nodes serving fake-model."""
    for node_id in ("a", "b"):
        nvllm.register(node_id, start_fake().port, models=["fake-model"])
    return nvllm


def test_requests_go_only_to_nodes_serving_the_model(nvllm, start_fake):
    llama, qwen = start_fake(["llama"]), start_fake(["qwen"])
    nvllm.register("llama-node", llama.port, models=["llama"])
    nvllm.register("qwen-node", qwen.port, models=["qwen"])
    client = nvllm.sdk()
    for _ in range(4):
        answer = client.chat.completions.with_raw_response.create(model="qwen", messages=CHAT, max_tokens=1)
        assert answer.headers["X-NVLLM-Node"] == "qwen-node"
        assert answer.parse().model == "qwen"
    assert nvllm.served_by(4, model="llama") == ["llama-node"] * 4
    assert llama.stats()["requests_received"] == 4
    assert qwen.stats()["requests_received"] == 4


def test_a_node_declaring_no_models_takes_any(nvllm, start_fake):
    nvllm.register("generic", start_fake(["llama"]).port)
    assert nvllm.served_by(model="llama") == ["generic"]


def test_round_robin_alternates(start_nvllm, start_fake):
    live = start_nvllm(routing="round_robin")
    for node_id in ("b", "a", "c"):
        live.register(node_id, start_fake().port)
    assert live.served_by(n=6) == ["a", "b", "c", "a", "b", "c"]
    answer = live.sdk().completions.with_raw_response.create(model="fake-model", prompt="x", max_tokens=1)
    assert answer.headers["X-NVLLM-Route"] == "round_robin"


def test_random_reaches_every_node(start_nvllm, start_fake):
    live = start_nvllm(routing="random")
    for node_id in ("a", "b"):
        live.register(node_id, start_fake().port)
    assert set(live.served_by(n=30)) == {"a", "b"}


def test_least_inflight_avoids_the_node_holding_a_stream(start_nvllm, start_fake):
    live = start_nvllm(routing="least_inflight")
    live.register("a", start_fake(step_time=0.05).port)
    live.register("b", start_fake(step_time=0.05).port)
    held = live.open_stream()
    busy = held.headers["X-NVLLM-Node"]
    idle = ({"a", "b"} - {busy}).pop()
    try:
        assert live.served_by(n=3) == [idle] * 3
    finally:
        held.close()


def test_load_policy_is_the_default_and_spreads(pair):
    client = pair.sdk()
    answer = client.completions.with_raw_response.create(model="fake-model", prompt="x", max_tokens=1)
    assert answer.headers["X-NVLLM-Route"].startswith("load ttft=")
    picks = Counter(
        client.completions.with_raw_response.create(
            model="fake-model", prompt=f"distinct prompt {i} " * 40, max_tokens=1
        ).headers["X-NVLLM-Node"]
        for i in range(20)
    )
    assert set(picks) == {"a", "b"}


def test_load_policy_keeps_a_shared_prefix_on_one_node(pair):
    system = "You are a helpful assistant. " * 40  # several prefix blocks
    nodes = [pair.served_by(prompt=f"{system}question {i}")[0] for i in range(6)]
    assert len(set(nodes)) == 1


def test_load_policy_keeps_a_named_session_on_one_node(pair):
    client = pair.sdk()
    for hint in ({"extra_headers": {"X-Session-ID": "chat-7"}}, {"user": "alice"},
                 {"extra_body": {"prompt_cache_key": "doc-42"}}):
        nodes = {
            client.completions.with_raw_response.create(
                model="fake-model", prompt=f"turn {i}", max_tokens=1, **hint).headers["X-NVLLM-Node"]
            for i in range(6)
        }
        assert len(nodes) == 1, hint


def test_load_policy_avoids_a_node_reporting_a_queue(nvllm, start_fake):
    nvllm.register("queued", start_fake().port, node_info=NodeInfo(running=8, waiting=20))
    nvllm.register("idle", start_fake().port)
    assert nvllm.served_by(n=3) == ["idle"] * 3


@pytest.mark.parametrize("status", [NodeStatus.DRAINING, NodeStatus.OFFLINE])
def test_draining_and_offline_nodes_get_nothing_new(nvllm, start_fake, status):
    nvllm.register("open", start_fake().port)
    closed = start_fake()
    nvllm.register("closed", closed.port, node_status=status)
    assert nvllm.served_by(n=5) == ["open"] * 5
    assert closed.stats()["requests_received"] == 0


def test_expired_and_probe_failing_nodes_get_nothing(nvllm, start_fake):
    nvllm.register("fresh", start_fake().port)
    expired, failing = start_fake(), start_fake()
    node = nvllm.register("expired", expired.port, timeout=1)
    store = nvllm.app.extensions["nvllm"].nodes
    node.update_time -= 5
    store.save(node)
    nvllm.register("failing", failing.port, probe_failing=True)
    nvllm.fleet.refresh()
    assert nvllm.served_by(n=5) == ["fresh"] * 5
    assert expired.stats()["requests_received"] == failing.stats()["requests_received"] == 0


def test_a_draining_node_finishes_its_streams_and_its_count_falls_to_zero(nvllm, start_fake):
    draining = start_fake(step_time=0.01)
    nvllm.register("draining", draining.port)
    held = nvllm.open_stream({"max_tokens": 30})
    assert held.headers["X-NVLLM-Node"] == "draining"
    nvllm.register("other", start_fake().port)
    stores = nvllm.app.extensions["nvllm"]
    stores.nodes.update("draining", {"node_status": NodeStatus.DRAINING}, time.time())
    nvllm.fleet.refresh()
    assert nvllm.inflight("draining") == 1
    assert nvllm.served_by(n=3) == ["other"] * 3
    rest = held.read()
    held.release_conn()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert nvllm.inflight("draining") == 0
    wait_for(lambda: nvllm.get("/api/node/node/status/draining").json()["data"]["inflight"] == 0, 2,
             "the published count to fall to zero")
    assert draining.stats()["completed"] == 1


def test_select_returns_the_node_or_503(nvllm, start_fake):
    fake = start_fake(["llama"])
    nvllm.register("llama-node", fake.port, models=["llama"])
    answer = nvllm.get("/api/node/node/select?model=llama")
    assert answer.status == 200
    data = answer.json()["data"]
    assert data["node_id"] == "llama-node"
    assert "url" not in data and "node_port" not in data  # a user sees no addresses
    assert data["reason"].startswith("load")
    stores = nvllm.app.extensions["nvllm"]
    worker = create_user(stores.users, {"username": "agent", "password": PASSWORD, "role": "worker"},
                         now=time.time(), hash_n=2**4)
    answer = nvllm.get("/api/node/node/select?model=llama", token=stores.tokens.issue(worker, 60))
    assert answer.json()["data"]["url"] == fake.url
    missing = nvllm.get("/api/node/node/select?model=qwen")
    assert missing.status == 503
    body = missing.json()
    assert body["code"] == 503 and "'qwen'" in body["error"]
    assert missing.headers["Retry-After"]


def test_two_instances_see_each_others_inflight(start_nvllm, start_fake):
    one = start_nvllm(routing="least_inflight")
    two = start_nvllm(routing="least_inflight")
    one.register("a", start_fake(step_time=0.05).port)
    one.register("b", start_fake(step_time=0.05).port)
    two.fleet.refresh()
    held = one.open_stream()
    busy = held.headers["X-NVLLM-Node"]
    idle = ({"a", "b"} - {busy}).pop()
    try:
        one.fleet.refresh()  # publish
        two.fleet.refresh()  # read
        assert two.fleet.get(busy).inflight == 1 and two.fleet.get(busy).local_inflight == 0
        assert two.served_by(n=3) == [idle] * 3
        assert two.get(f"/api/node/node/status/{busy}").json()["data"]["inflight"] == 1
    finally:
        held.close()
    wait_for(lambda: one.inflight(busy) == 0, 2, "the stream's count to be released")
    one.fleet.refresh()
    two.fleet.refresh()
    assert two.fleet.get(busy).inflight == 0


def test_instances_refresh_each_other_in_the_background(start_nvllm, start_fake):
    one, two = start_nvllm(), start_nvllm()
    one.register("a", start_fake(step_time=0.05).port)
    two.served_by()  # starts two's refresher
    held = one.open_stream()
    try:
        wait_for(lambda: two.fleet.get("a").inflight == 1, 2, "the other instance to see the stream")
    finally:
        held.close()
    wait_for(lambda: two.fleet.get("a").inflight == 0, 3, "the other instance to see it end")

"""What crosses the proxy: trace ids forwarded, the client's credentials and
cookies kept back, the upstream API key sent, nvllm's own headers returned,
and vLLM's in-band load report read and kept to ourselves."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from model.node import NodeInfo
from tests.proxy.recorder import Recorder, serving

pytestmark = pytest.mark.integration  # a live nvllm and upstream servers


# Headers a proxy must not pass on to its client (and its load report).
NODE_HEADERS = [
    ("Set-Cookie", "node-session=secret"),
    ("endpoint-load-metrics", 'JSON {"named_metrics": {"num_requests_waiting": 4}}'),
    ("X-Upstream", "internal"),
    ("Access-Control-Allow-Origin", "*"),
    ("Retry-After", "3"),
]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder(NODE_HEADERS)) as server:
        yield server


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_trace_ids_forwarded_credentials_and_cookies_kept_back(nvllm, recorder):
    nvllm.register("rec", recorder.port)
    answer = nvllm.post(
        "/v1/chat/completions",
        BODY,
        headers={"X-Trace-ID": "trace-abc.1", "X-Request-Id": "client-chosen", "Cookie": "session=client",
                 "X-Custom": "stays", "Proxy-Authorization": "Basic eA==", "X-Forwarded-For": "169.254.169.254",
                 "Metadata-Flavor": "Google", "X-Session-Id": "s-1", "User-Agent": "sdk/1"},
    )
    assert answer.status == 200
    sent = {k.lower(): v for k, v in recorder.seen[-1].items()}
    assert sent["x-trace-id"] == "trace-abc.1"
    assert sent["x-request-id"] == "trace-abc.1"
    assert sent["endpoint-load-metrics-format"] == "JSON"
    assert (sent["x-session-id"], sent["user-agent"], sent["content-type"]) == ("s-1", "sdk/1", "application/json")
    # An allow-list: whatever vLLM does not need stays behind.
    for name in ("authorization", "cookie", "proxy-authorization", "x-custom", "x-forwarded-for", "metadata-flavor"):
        assert name not in sent
    assert nvllm.token not in json.dumps(sent)


def test_a_bad_trace_id_is_replaced_and_the_new_one_forwarded(nvllm, recorder):
    nvllm.register("rec", recorder.port)
    answer = nvllm.post("/v1/chat/completions", BODY, headers={"X-Trace-ID": "bad id with spaces"})
    trace_id = answer.headers["X-Trace-ID"]
    assert trace_id != "bad id with spaces"
    sent = {k.lower(): v for k, v in recorder.seen[-1].items()}
    assert sent["x-trace-id"] == sent["x-request-id"] == trace_id


def test_response_headers_returned_and_filtered(nvllm, recorder):
    nvllm.register("rec", recorder.port)
    answer = nvllm.post("/v1/chat/completions", BODY, headers={"X-Trace-ID": "t-1"})
    headers = answer.headers
    assert headers["X-NVLLM-Node"] == "rec"
    assert headers["X-NVLLM-Route"].startswith("load")
    assert headers["X-Trace-ID"] == "t-1"
    assert headers["Retry-After"] == "3"
    for name in ("X-Upstream", "Set-Cookie", "Access-Control-Allow-Origin"):
        assert name not in headers
    assert "endpoint-load-metrics" not in headers
    assert len(headers.getlist("Date")) == 1 and len(headers.getlist("Server")) == 1


def test_the_upstream_api_key_is_sent_instead_of_the_clients_token(start_nvllm, recorder):
    live = start_nvllm(upstream_api_key="node-secret")
    live.register("rec", recorder.port)
    assert live.post("/v1/chat/completions", BODY).status == 200
    assert recorder.seen[-1]["authorization"] == "Bearer node-secret"


def test_a_node_started_with_an_api_key(start_nvllm, start_fake):
    guarded = start_fake(api_key="node-secret")
    without = start_nvllm()
    without.register("guarded", guarded.port)
    refused = without.post("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 1})
    assert refused.status == 401  # the node's own refusal, not retried elsewhere
    assert refused.headers["X-NVLLM-Node"] == "guarded"
    with_key = start_nvllm(upstream_api_key="node-secret")
    with_key.fleet.refresh()
    client = with_key.sdk()
    assert client.completions.create(model="fake-model", prompt="x", max_tokens=1).choices[0].text
    assert len(list(client.completions.create(model="fake-model", prompt="x", max_tokens=2, stream=True))) == 2


def test_the_inband_load_report_updates_the_nodes_load(nvllm, recorder):
    nvllm.register("rec", recorder.port, node_info=NodeInfo(running=3, waiting=9, kv_cache_usage=0.5))
    state = nvllm.fleet.get("rec")
    assert (state.reported_waiting, state.kv_usage) == (9, 0.5)
    nvllm.post("/v1/chat/completions", BODY)
    assert state.reported_waiting == 4  # from the header, fresher than the heartbeat
    assert state.reported_running == 3  # the header says nothing of it
    assert state.kv_usage == 0.5


def test_the_fake_vllms_load_report_is_read(nvllm, start_fake):
    fake = start_fake()
    nvllm.register("n1", fake.port, node_info=NodeInfo(running=3, waiting=9, kv_cache_usage=0.5))
    answer = nvllm.sdk().completions.with_raw_response.create(model="fake-model", prompt="x", max_tokens=1)
    assert "endpoint-load-metrics" not in answer.headers
    state = nvllm.fleet.get("n1")
    assert (state.reported_waiting, state.kv_usage) == (0, 0.0)

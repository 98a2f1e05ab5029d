"""/metrics after real traffic through the proxy: first-token and inter-token
histograms, tokens, requests by model, route and code, retries, ejections and
routing reasons by node, in flight; and the access log line of a /v1 request."""

from __future__ import annotations

import logging

import pytest

from tests.integration.conftest import free_port
from tests.metrics import Scrape, promtool_check_metrics
from tests.proxy.conftest import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

CHAT = "/v1/chat/completions"


def chat(live, max_tokens: int = 5, *, model: str = "fake-model", **extra) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, **extra}
    answer = live.post(CHAT, body)
    assert answer.status == 200, answer.data


def scrape(live) -> Scrape:
    answer = live.http.request("GET", live.url + "/metrics", timeout=10.0)
    assert answer.status == 200
    return Scrape(answer.data.decode())


def settled(live) -> None:
    """Every request's report is in: nothing in flight any more."""
    wait_for(lambda: scrape(live).value("nvllm_requests_in_flight") == 0, 2, "requests to finish")


@pytest.fixture
def gpu(nvllm, start_fake):
    fake = start_fake(models=("fake-model",))
    nvllm.register("gpu-1", fake.port, models=["fake-model"])
    return fake


def test_streams_are_measured_by_model_and_node(nvllm, gpu):
    for _ in range(3):
        chat(nvllm, 5, stream=True)
    chat(nvllm, 6, stream=True, stream_options={"include_usage": True})
    client = nvllm.sdk()
    for _ in range(2):
        client.completions.create(model="fake-model", prompt="hi", max_tokens=4)
    settled(nvllm)
    got = scrape(nvllm)
    promtool_check_metrics(got.text)
    at = {"model": "fake-model", "node": "gpu-1"}
    assert got.value("nvllm_time_to_first_token_seconds_count", **at) == 4  # streams only
    assert 0 < got.value("nvllm_time_to_first_token_seconds_sum", **at) < 4
    assert got.value("nvllm_inter_token_latency_seconds_count", **at) == 4
    assert got.value("nvllm_output_tokens_total", **at) == 3 * 5 + 6 + 2 * 4
    assert got.value("nvllm_proxy_requests_total", model="fake-model", route=CHAT, code="200") == 4
    assert got.value("nvllm_proxy_requests_total", model="fake-model", route="/v1/completions", code="200") == 2
    assert got.value("nvllm_routing_decisions_total", node="gpu-1") == 6
    assert got.labels("nvllm_routing_decisions_total", "reason") <= {"load", "prefix_affinity"}
    assert got.value("nvllm_upstream_requests_total", node="gpu-1", outcome="ok") == 6
    assert got.value("nvllm_node_up", node="gpu-1") == 1 and got.value("nvllm_node_routable", node="gpu-1") == 1
    assert got.value("nvllm_node_status", node="gpu-1", status="online") == 1
    assert got.value("nvllm_node_ejected", node="gpu-1") == 0
    assert got.value("nvllm_storage_up") == 1


def test_an_open_stream_is_in_flight(nvllm, gpu):
    stream = nvllm.open_stream({"max_tokens": 2000})
    try:
        assert scrape(nvllm).value("nvllm_requests_in_flight") == 1
        assert scrape(nvllm).value("nvllm_node_inflight", node="gpu-1") == 1
    finally:
        stream.release_conn()
        stream.close()
    settled(nvllm)


def test_retries_ejections_and_fallbacks_are_counted_by_node(start_nvllm, start_fake):
    # Round robin over sorted ids: each request goes to the dead node first.
    live = start_nvllm(routing="round_robin")
    live.register("a-dead", free_port(), models=["fake-model"])
    live.register("b-good", start_fake().port, models=["fake-model"])
    chat(live)
    live.fleet.get("a-dead").breaker.open_until = 0  # its cooldown over: it gets the next one again
    chat(live)
    settled(live)
    got = scrape(live)
    assert got.value("nvllm_upstream_retries_total", node="a-dead") == 2
    assert got.value("nvllm_node_ejections_total", node="a-dead") == 1  # NVLLM_EJECT_AFTER=2
    assert got.value("nvllm_node_ejected", node="a-dead") == 1
    assert got.value("nvllm_node_routable", node="a-dead") == 0
    assert got.value("nvllm_routing_decisions_total", node="b-good", reason="fallback") == 2
    assert got.value("nvllm_routing_decisions_total", node="a-dead") == 0
    assert got.value("nvllm_proxy_requests_total", route=CHAT, code="200") == 2
    failed = {o for o in got.labels("nvllm_upstream_requests_total", "outcome") if o.startswith("failed:")}
    assert failed and got.value("nvllm_upstream_requests_total", node="a-dead") == 2


def test_a_deleted_nodes_series_disappear(nvllm, gpu):
    chat(nvllm, stream=True)
    settled(nvllm)
    assert scrape(nvllm).value("nvllm_time_to_first_token_seconds_count", node="gpu-1") == 1
    nvllm.app.extensions["nvllm"].nodes.delete("gpu-1")
    nvllm.fleet.refresh()
    got = scrape(nvllm)
    assert "gpu-1" not in got.text
    # What is not a node's stays.
    assert got.value("nvllm_proxy_requests_total", model="fake-model", route=CHAT, code="200") == 1


def test_labels_a_client_chooses_are_bounded(nvllm, start_fake):
    nvllm.register("any-model", start_fake().port)  # lists no models: takes any name
    for model in ("made-up-1", "made-up-2"):
        assert nvllm.post(CHAT, {"model": model, "messages": []}).status == 404  # the node does not know it
    assert nvllm.post("/v1/some/odd/path", {"model": "fake-model"}).status == 404
    settled(nvllm)
    got = scrape(nvllm)
    assert got.value("nvllm_proxy_requests_total", model="other", route=CHAT, code="404") == 2
    assert got.value("nvllm_proxy_requests_total", route="other", code="404") == 1
    assert not {"made-up-1", "made-up-2"} & got.labels("nvllm_proxy_requests_total", "model")
    assert "/v1/some/odd/path" not in got.text


def test_requests_nvllm_answers_itself_are_counted_by_model(nvllm, gpu):
    assert nvllm.post(CHAT, {"model": "not-served", "messages": []}).status == 503
    assert nvllm.post(CHAT, [1, 2]).status == 400
    got = scrape(nvllm)
    assert got.value("nvllm_proxy_requests_total", model="other", route=CHAT, code="503") == 1
    assert got.value("nvllm_proxy_requests_total", model="", route=CHAT, code="400") == 1


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "nvllm.access" and "/v1/" in r.getMessage()]


def test_the_access_log_line_carries_model_node_ttft_and_tokens(nvllm, gpu, caplog):
    caplog.set_level(logging.INFO, logger="nvllm.access")
    chat(nvllm, 5, stream=True)
    chat(nvllm, 3)
    lines = wait_for(lambda: len(access_lines(caplog)) == 2 and access_lines(caplog), 2, "two access lines")
    stream, whole = lines
    assert " 200 " in stream.getMessage()
    assert "model=fake-model node=gpu-1 attempts=1 ttft=0." in stream.getMessage()
    assert stream.getMessage().endswith("output_tokens=5")
    assert 0 < stream.http["ttft"] < 1 and stream.http["output_tokens"] == 5 and stream.http["node"] == "gpu-1"
    # A whole answer has no first-token time of its own; its tokens come from its usage.
    assert "model=fake-model node=gpu-1 attempts=1 ttft=- output_tokens=3" in whole.getMessage()
    assert whole.http["ttft"] is None and whole.http["output_tokens"] == 3


def test_the_access_log_line_of_a_refused_request_names_its_model_safely(nvllm, gpu, caplog):
    caplog.set_level(logging.INFO, logger="nvllm.access")
    assert nvllm.post(CHAT, {"model": "no such\nmodel", "messages": []}).status == 503
    (line,) = wait_for(lambda: access_lines(caplog), 2, "the access line")
    message = line.getMessage()
    assert "\n" not in message and 'model="no such\\nmodel"' in message and " 503 " in message
    assert line.http["model"] == "no such\nmodel"  # JSON logs escape it themselves


def test_every_forwarded_route_is_counted_under_its_own_pattern():
    from service.routes import label

    assert label("/v1/messages") == "/v1/messages"
    assert label("/v1/responses/resp_abc/cancel") == "/v1/responses/{response_id}/cancel"
    assert label("/tokenize") == "/tokenize"
    assert label("/v1/anything/a-client/chose") == "other"
    assert label("/api/node/node/all") is None

"""Tests for the fake vLLM server: wire shapes, metrics, batching, prefix cache and faults."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakevllm import FakeVLLM
from fakevllm.engine import BLOCK_SIZE, KVCache, Seq, block_hashes, tokenize

MODEL = "fake-model"
LONG_PROMPT = " ".join(f"word{i}" for i in range(200))


# -- helpers ---------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(fake: FakeVLLM, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def chat(fake: FakeVLLM, content: str = "hello there", **extra: Any) -> Reply:
    headers = extra.pop("headers", None)
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return call(fake, "POST", "/v1/chat/completions", body, headers)


def complete(fake: FakeVLLM, prompt: Any = "hello there", **extra: Any) -> Reply:
    headers = extra.pop("headers", None)
    return call(fake, "POST", "/v1/completions", {"model": MODEL, "prompt": prompt, **extra}, headers)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def metrics(fake: FakeVLLM) -> dict[str, list[Any]]:
    text = call(fake, "GET", "/metrics").body.decode()
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


def value(families: dict[str, list[Any]], name: str) -> float:
    return families[name][0].value


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def open_stream(fake: FakeVLLM, max_tokens: int = 1000) -> tuple[http.client.HTTPConnection,
                                                                     http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    body = {"model": MODEL, "prompt": "go", "max_tokens": max_tokens, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


@pytest.fixture
def fake() -> Iterator[FakeVLLM]:
    with FakeVLLM(models=[MODEL], step_time=0.002, prefill_time_per_token=0.0) as f:
        yield f


# -- API shapes --------------------------------------------------------------------------


def test_models_list(fake: FakeVLLM) -> None:
    reply = call(fake, "GET", "/v1/models")
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert {k: card[k] for k in ("id", "object", "owned_by", "root", "parent")} == {
        "id": MODEL, "object": "model", "owned_by": "vllm", "root": MODEL, "parent": None}
    assert isinstance(card["created"], int) and card["max_model_len"] > 0


def test_unknown_model_is_404_with_vllm_error_shape(fake: FakeVLLM) -> None:
    reply = call(fake, "POST", "/v1/chat/completions",
                 {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status == 404
    assert reply.json() == {"error": {"message": "The model `nope` does not exist.",
                                      "type": "NotFoundError", "param": "model", "code": 404}}


def test_bad_requests_are_400(fake: FakeVLLM) -> None:
    assert chat(fake, max_tokens=0).status == 400
    missing_prompt = call(fake, "POST", "/v1/completions", {"model": MODEL})
    assert missing_prompt.json()["error"]["type"] == "BadRequestError"
    assert complete(fake, "x " * 40000, max_tokens=10).status == 400  # beyond max_model_len


def test_chat_non_streaming_shape(fake: FakeVLLM) -> None:
    reply = chat(fake, max_tokens=5, headers={"X-Request-Id": "abc"})
    assert reply.status == 200
    body = reply.json()
    assert body["id"] == "chatcmpl-abc" and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert chat(fake, max_tokens=5).json()["choices"][0]["message"] == choice["message"]


def test_completion_non_streaming_shape_and_max_completion_tokens(fake: FakeVLLM) -> None:
    body = complete(fake, max_tokens=3).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert len(body["choices"][0]["text"].split()) == 3
    assert body["usage"]["completion_tokens"] == 3
    assert chat(fake, max_completion_tokens=7).json()["usage"]["completion_tokens"] == 7
    assert complete(fake).json()["usage"]["completion_tokens"] == 16  # the default


def test_completion_batch_prompts_and_token_ids(fake: FakeVLLM) -> None:
    body = complete(fake, ["one", "two three"], max_tokens=2).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 4
    assert complete(fake, [1, 2, 3, 4], max_tokens=2).json()["usage"]["prompt_tokens"] == 4


def test_chat_streaming_chunks(fake: FakeVLLM) -> None:
    reply = chat(fake, max_tokens=4, stream=True, stream_options={"include_usage": True})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    chunks = parse_sse(reply.body)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 4
    assert all("content" in c["choices"][0]["delta"] for c in tokens)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None, None, None, "length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    text = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    assert text == chat(fake, max_tokens=4).json()["choices"][0]["message"]["content"]


def test_completion_streaming_chunks(fake: FakeVLLM) -> None:
    chunks = parse_sse(complete(fake, max_tokens=3, stream=True).body)
    assert len(chunks) == 3  # no usage chunk unless asked for
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(isinstance(c["choices"][0]["text"], str) for c in chunks)


def test_continuous_usage_stats(fake: FakeVLLM) -> None:
    opts = {"include_usage": True, "continuous_usage_stats": True}
    chunks = parse_sse(complete(fake, max_tokens=3, stream=True, stream_options=opts).body)
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 3]


def test_embeddings(fake: FakeVLLM) -> None:
    body = call(fake, "POST", "/v1/embeddings", {"model": MODEL, "input": ["a b", "c"]}).json()
    assert body["object"] == "list" and len(body["data"]) == 2
    vec = body["data"][0]["embedding"]
    assert body["data"][0]["object"] == "embedding" and len(vec) == 64
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-6
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] == 0


def test_health_and_load(fake: FakeVLLM) -> None:
    health = call(fake, "GET", "/health")
    assert (health.status, health.body) == (200, b"")
    assert call(fake, "GET", "/load").json() == {"server_load": 0}


def test_api_key_guards_v1_only() -> None:
    with FakeVLLM(models=[MODEL], step_time=0, prefill_time_per_token=0, api_key="sekret") as fake:
        denied = call(fake, "GET", "/v1/models")
        assert denied.status == 401 and denied.json() == {"error": "Unauthorized"}
        assert chat(fake, headers={"Authorization": "Bearer wrong"}).status == 401
        assert chat(fake, headers={"Authorization": "Bearer sekret"}).status == 200
        assert call(fake, "GET", "/health").status == 200
        assert call(fake, "GET", "/metrics").status == 200


# -- metrics and load reporting ---------------------------------------------------------


def test_metrics_show_running_and_waiting_under_load() -> None:
    with FakeVLLM(models=[MODEL], max_num_seqs=2, step_time=0.01, prefill_time_per_token=0) as fake:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(complete, fake, f"p{i}", max_tokens=20) for i in range(6)]
            wait_for(lambda: fake.stats()["running"] == 2 and fake.stats()["waiting"] == 4)
            fams = metrics(fake)
            assert value(fams, "vllm:num_requests_running") == 2
            assert value(fams, "vllm:num_requests_waiting") > 0
            assert 0 < value(fams, "vllm:kv_cache_usage_perc") <= 1
            assert all(f.result().status == 200 for f in futures)
        fams = metrics(fake)
        labels = fams["vllm:num_requests_running"][0].labels
        assert labels == {"model_name": MODEL, "engine": "0"}
        assert value(fams, "vllm:num_requests_running") == 0
        success = {s.labels["finished_reason"]: s.value for s in fams["vllm:request_success"]}
        assert success["length"] == 6
        assert value(fams, "vllm:generation_tokens") == 120
        assert value(fams, "vllm:prompt_tokens") == fake.stats()["prompt_tokens"]
        assert "vllm:gpu_cache_usage_perc" not in fams


def test_metrics_legacy_style() -> None:
    with FakeVLLM(models=[MODEL], step_time=0, prefill_time_per_token=0, metrics_style="legacy") as fake:
        complete(fake)
        fams = metrics(fake)
        assert fams["vllm:gpu_cache_usage_perc"][0].labels == {"model_name": MODEL}
        assert "vllm:kv_cache_usage_perc" not in fams
        assert value(fams, "vllm:generation_tokens") == 16


def test_metrics_both_style() -> None:
    with FakeVLLM(models=[MODEL], step_time=0, prefill_time_per_token=0, metrics_style="both") as fake:
        fams = metrics(fake)
        assert {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc",
                "vllm:gpu_prefix_cache_queries", "vllm:prefix_cache_queries"} <= set(fams)


def test_load_header_json_and_text(fake: FakeVLLM) -> None:
    reply = chat(fake, headers={"Endpoint-Load-Metrics-Format": "json"})
    header = reply.headers["endpoint-load-metrics"]
    assert header.startswith("JSON ")
    report = json.loads(header[len("JSON "):])
    assert report == {"named_metrics": {"num_requests_waiting": 0.0, "kv_cache_usage_perc": 0.0}}
    text = complete(fake, headers={"endpoint-load-metrics-format": "TEXT"}).headers["endpoint-load-metrics"]
    assert text == "TEXT named_metrics.num_requests_waiting=0.0, named_metrics.kv_cache_usage_perc=0.0"


def test_load_header_only_when_asked_and_not_on_streams(fake: FakeVLLM) -> None:
    assert "endpoint-load-metrics" not in chat(fake).headers
    streamed = chat(fake, stream=True, headers={"endpoint-load-metrics-format": "JSON"})
    assert "endpoint-load-metrics" not in streamed.headers  # as in vLLM


def test_load_header_reports_queue() -> None:
    # The header is stamped when the response is ready, so queue work behind the probe.
    with FakeVLLM(models=[MODEL], max_num_seqs=1, step_time=0.01, prefill_time_per_token=0) as fake:
        with ThreadPoolExecutor(4) as pool:
            probe = pool.submit(complete, fake, "y", max_tokens=10,
                                headers={"endpoint-load-metrics-format": "JSON"})
            wait_for(lambda: fake.stats()["running"] == 1)
            others = [pool.submit(complete, fake, "x", max_tokens=10) for _ in range(3)]
            wait_for(lambda: fake.stats()["waiting"] == 3)
            header = probe.result().headers["endpoint-load-metrics"]
            report = json.loads(header.removeprefix("JSON "))["named_metrics"]
            assert report["num_requests_waiting"] == 2  # one was admitted as the probe finished
            assert report["kv_cache_usage_perc"] > 0
            assert all(f.result().status == 200 for f in others)


# -- batching and prefix cache ------------------------------------------------------------


def test_more_requests_than_slots_queue_fifo() -> None:
    with FakeVLLM(models=[MODEL], max_num_seqs=2, step_time=0.005, prefill_time_per_token=0) as fake:
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(complete, fake, f"p{i}", max_tokens=10) for i in range(6)]
            peak = 0
            while not all(f.done() for f in futures):
                peak = max(peak, fake.stats()["waiting"])
                time.sleep(0.002)
        elapsed = time.monotonic() - started
        assert peak > 0
        assert elapsed >= 3 * 10 * 0.005 * 0.9  # three waves of ten steps
        assert fake.stats()["completed"] == 6


def test_kv_capacity_limits_admission() -> None:
    # 4 blocks of KV: one 40-token request fills 3, so a second one must wait.
    with FakeVLLM(models=[MODEL], kv_tokens=4 * BLOCK_SIZE, step_time=0.005, prefill_time_per_token=0) as fake:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(complete, fake, "a b c", max_tokens=36) for _ in range(2)]
            wait_for(lambda: fake.stats()["waiting"] == 1)
            assert fake.stats()["running"] == 1
            assert all(f.result().status == 200 for f in futures)


def test_prefix_cache_hit_on_repeated_prompt() -> None:
    with FakeVLLM(models=[MODEL], step_time=0.001, prefill_time_per_token=0.001) as fake:
        t0 = time.monotonic()
        complete(fake, LONG_PROMPT, max_tokens=1)
        cold = time.monotonic() - t0
        assert fake.stats()["prefix_cache_hits"] == 0
        t0 = time.monotonic()
        complete(fake, LONG_PROMPT, max_tokens=1)
        warm = time.monotonic() - t0
        stats = fake.stats()
        prompt_len = len(tokenize(LONG_PROMPT))
        assert stats["prefix_cache_queries"] == 2 * prompt_len
        assert stats["prefix_cache_hits"] == (prompt_len - 1) // BLOCK_SIZE * BLOCK_SIZE
        assert warm < cold / 3  # cached blocks skip prefill
        fams = metrics(fake)
        assert value(fams, "vllm:prefix_cache_hits") == stats["prefix_cache_hits"]
        complete(fake, LONG_PROMPT, max_tokens=1, cache_salt="other")
        assert fake.stats()["prefix_cache_hits"] == stats["prefix_cache_hits"]


def test_chat_prefix_shared_across_turns(fake: FakeVLLM) -> None:
    first = [{"role": "system", "content": LONG_PROMPT}, {"role": "user", "content": "q1"}]
    call(fake, "POST", "/v1/chat/completions", {"model": MODEL, "messages": first})
    second = first + [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    call(fake, "POST", "/v1/chat/completions", {"model": MODEL, "messages": second})
    assert fake.stats()["prefix_cache_hits"] >= 192


def test_instant_mode_is_fast() -> None:
    with FakeVLLM(models=[MODEL], step_time=0, prefill_time_per_token=0) as fake:
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 16})
        started = time.monotonic()
        for _ in range(200):
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            assert conn.getresponse().read()
        conn.close()
        assert time.monotonic() - started < 5
        assert fake.stats()["completed"] == 200


def test_speed_scales_decode_time() -> None:
    def timed(speed: float) -> float:
        with FakeVLLM(models=[MODEL], speed=speed, step_time=0.004, prefill_time_per_token=0) as fake:
            t0 = time.monotonic()
            complete(fake, max_tokens=50)
            return time.monotonic() - t0

    half = timed(0.5)
    assert half >= 50 * 0.004 * 2 * 0.95
    assert half > 1.4 * timed(1.0)


# -- client disconnect and shutdown -------------------------------------------------------


def test_disconnect_mid_stream_frees_slot_and_counts_cancelled(fake: FakeVLLM) -> None:
    conn, resp = open_stream(fake)
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    assert fake.stats()["running"] == 1
    conn.close()
    resp.close()
    wait_for(lambda: fake.stats()["cancelled"] == 1, timeout=1.0)
    stats = fake.stats()
    assert stats["running"] == 0 and stats["in_flight"] == 0 and stats["kv_cache_usage"] == 0
    assert value(metrics(fake), "vllm:num_requests_running") == 0


def test_disconnect_while_queued_counts_cancelled(fake: FakeVLLM) -> None:
    fake.set_fault("hang")
    sock = socket.create_connection(("127.0.0.1", fake.port))
    body = json.dumps({"model": MODEL, "prompt": "x"}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: fake.stats()["waiting"] == 1)
    sock.close()
    wait_for(lambda: fake.stats()["cancelled"] == 1, timeout=1.0)
    assert fake.stats()["waiting"] == 0


def test_stop_cuts_in_flight_streams() -> None:
    fake = FakeVLLM(models=[MODEL], step_time=0.01).start()
    conn, resp = open_stream(fake)
    resp.readline()
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    with pytest.raises((http.client.HTTPException, ConnectionError, ValueError)):
        while resp.read(1024):
            pass
    conn.close()


def test_restart_serves_again_on_the_same_port() -> None:
    fake = FakeVLLM(models=[MODEL], step_time=0, prefill_time_per_token=0).start()
    port = fake.port
    fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with fake.start():
        assert fake.port == port
        assert chat(fake).status == 200


# -- faults -------------------------------------------------------------------------------


def test_fault_error500_keeps_health(fake: FakeVLLM) -> None:
    fake.set_fault("error500")
    reply = chat(fake)
    assert reply.status == 500
    assert reply.json()["error"]["type"] == "InternalServerError"
    assert reply.json()["error"]["code"] == 500
    assert call(fake, "GET", "/health").status == 200
    fake.set_fault(None)
    assert chat(fake).status == 200
    assert fake.stats()["rejected"] == 1


def test_fault_busy429(fake: FakeVLLM) -> None:
    fake.set_fault("busy429")
    reply = complete(fake)
    assert reply.status == 429 and reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["code"] == 429


def test_fault_unhealthy_only_fails_health(fake: FakeVLLM) -> None:
    fake.set_fault("unhealthy")
    assert call(fake, "GET", "/health").status == 503
    assert chat(fake).status == 200


def test_fault_down_closes_connections(fake: FakeVLLM) -> None:
    conn, resp = open_stream(fake)
    resp.readline()
    fake.set_fault("down")
    with pytest.raises((http.client.HTTPException, ConnectionError, ValueError)):
        while resp.read(1024):
            pass
    conn.close()
    for path in ("/health", "/v1/models"):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            call(fake, "GET", path)
    assert fake.stats()["fault"] == "down"  # the control plane still answers
    fake.set_fault(None)
    assert call(fake, "GET", "/health").status == 200


def test_fault_refuse_stops_listening_and_comes_back(fake: FakeVLLM) -> None:
    port = fake.port
    fake.set_fault("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    fake.set_fault(None)
    assert fake.port == port
    assert call(fake, "GET", "/health").status == 200


def test_fault_slow_multiplies_step_time() -> None:
    with FakeVLLM(models=[MODEL], step_time=0.005, prefill_time_per_token=0) as fake:
        t0 = time.monotonic()
        complete(fake, max_tokens=10)
        normal = time.monotonic() - t0
        fake.set_fault("slow")
        t0 = time.monotonic()
        complete(fake, max_tokens=10)
        slow = time.monotonic() - t0
        assert slow >= 10 * 0.005 * 10 * 0.95
        assert slow > 3 * normal


def test_fault_slow_takes_a_factor() -> None:
    with FakeVLLM(models=[MODEL], step_time=0.01, prefill_time_per_token=0) as fake:
        fake.set_fault("slow", factor=5)
        t0 = time.monotonic()
        complete(fake, max_tokens=10)
        slow = time.monotonic() - t0
        assert 10 * 0.01 * 5 * 0.95 <= slow < 10 * 0.01 * 10  # 5x, not the default 10x
        assert call(fake, "POST", "/fake/fault", {"mode": "slow", "factor": 0.5}).status == 400
        assert call(fake, "POST", "/fake/fault", {"mode": "hang", "factor": 5}).status == 400
        assert call(fake, "POST", "/fake/fault", {"mode": "slow", "factor": 2}).json() == {"mode": "slow"}
        assert fake.server.engine.slowdown == 2


def test_fault_hang_holds_requests_until_cleared(fake: FakeVLLM) -> None:
    fake.set_fault("hang")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(chat, fake, max_tokens=3)
        time.sleep(0.2)
        assert not future.done()
        assert call(fake, "GET", "/health").status == 200
        assert fake.stats()["waiting"] == 1
        fake.set_fault(None)
        assert future.result(timeout=5).status == 200


def test_fault_hang_stalls_running_stream(fake: FakeVLLM) -> None:
    conn, resp = open_stream(fake, max_tokens=20000)
    resp.readline()
    fake.set_fault("hang")
    generated = fake.stats()["generation_tokens"]
    time.sleep(0.1)
    assert fake.stats()["generation_tokens"] == generated
    fake.set_fault(None)
    wait_for(lambda: fake.stats()["generation_tokens"] > generated)
    conn.close()
    resp.close()


def test_fault_over_http_with_duration(fake: FakeVLLM) -> None:
    assert call(fake, "POST", "/fake/fault", {"mode": "error500", "duration": 0.2}).json() == {"mode": "error500"}
    assert chat(fake).status == 500
    wait_for(lambda: fake.stats()["fault"] is None, timeout=2)
    assert chat(fake).status == 200
    assert call(fake, "POST", "/fake/fault", {"mode": "bogus"}).status == 400
    call(fake, "POST", "/fake/fault", {"mode": "down"})
    assert call(fake, "POST", "/fake/fault", {"mode": None}).json() == {"mode": None}
    assert call(fake, "GET", "/health").status == 200


def test_stats_endpoint_matches_python_api(fake: FakeVLLM) -> None:
    chat(fake)
    stats = call(fake, "GET", "/fake/stats").json()
    assert stats["requests_received"] == stats["completed"] == 1
    assert set(stats) >= {"cancelled", "running", "waiting", "prefix_cache_hits", "prefix_cache_queries"}
    assert stats == fake.stats()


# -- engine internals and CLI -------------------------------------------------------------


def test_block_hashes_chain_on_prefix() -> None:
    a = block_hashes(list(range(40)))
    b = block_hashes(list(range(32)) + [99] * 8)
    c = block_hashes([0] + list(range(1, 40)), salt="s")
    assert len(a) == 2 and a == b[:2]
    assert not set(c) & set(a)


def test_kv_cache_reuses_and_evicts_lru() -> None:
    kv = KVCache(num_blocks=4)

    def seq(tokens: list[int]) -> Seq:
        return Seq(len(tokens), 1, block_hashes(tokens), asyncio.Event())

    first = seq(list(range(33)))  # 3 blocks with the output token, 2 hashed
    assert kv.allocate(first, 0) and kv.used == 3
    kv.free(first)
    assert kv.used == 0
    again = seq(list(range(33)))
    assert kv.cached_prefix(again.hashes, 2) == 2
    other = seq([7] * 40)  # needs 3 blocks: evicts the cached tail first
    assert kv.allocate(other, 0)
    assert kv.cached_prefix(again.hashes, 2) == 1
    assert not kv.allocate(seq([8] * 40), 0)


def test_cli_fleet_prints_urls() -> None:
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "fakevllm", "--port", "0", "--fleet", "2", "--speed", "1,0.5"]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            urls = [proc.stdout.readline().strip() for _ in range(2)]
            assert all(u.startswith("http://127.0.0.1:") for u in urls) and urls[0] != urls[1]
            for url in urls:
                conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
                conn.request("GET", "/health")
                assert conn.getresponse().status == 200
                conn.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0

"""Streams through the proxy: a client that goes away frees the node at once,
and a node that dies mid-stream is never retried."""

from __future__ import annotations

import json
import socket
import time

import pytest
import urllib3

from tests.proxy.conftest import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

DISCONNECT_LIMIT = 1.0  # seconds from the client closing to the node seeing it


def raw_stream(live, body: dict) -> socket.socket:
    """POST a streamed request over a bare socket and read until two SSE
    events have arrived; the caller closes the socket to go away."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", live.server.server_port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: nvllm\r\n"
        + f"Authorization: Bearer {live.token}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while received.count(b"data:") < 2:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    return sock


@pytest.fixture
def slow_node(nvllm, start_fake):
    """A node streaming a token every 20 ms."""
    fake = start_fake(step_time=0.02)
    nvllm.register("slow", fake.port)
    return fake


def test_a_client_going_away_closes_the_upstream_request(nvllm, slow_node):
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500,
            "stream": True}
    sock = raw_stream(nvllm, body)
    assert slow_node.stats()["in_flight"] == 1 and nvllm.inflight("slow") == 1
    sock.close()
    gone = time.monotonic()
    wait_for(lambda: slow_node.stats()["cancelled"] == 1, DISCONNECT_LIMIT, "the node to see the cancel")
    assert time.monotonic() - gone < DISCONNECT_LIMIT
    wait_for(lambda: nvllm.inflight("slow") == 0, DISCONNECT_LIMIT, "nvllm to release its count")
    stats = slow_node.stats()
    assert stats["in_flight"] == 0 and stats["running"] == 0 and stats["completed"] == 0


def test_an_sdk_stream_closed_early_closes_the_upstream_request(nvllm, slow_node):
    stream = nvllm.sdk().completions.create(model="fake-model", prompt="x", max_tokens=500, stream=True)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    wait_for(lambda: slow_node.stats()["cancelled"] == 1, DISCONNECT_LIMIT, "the node to see the cancel")
    wait_for(lambda: nvllm.inflight("slow") == 0, DISCONNECT_LIMIT, "nvllm to release its count")
    assert not nvllm.fleet.is_failing("slow")  # a client leaving is not the node's fault
    assert nvllm.fleet.get("slow").breaker.failures == 0


def test_a_node_dying_mid_stream_is_not_retried(nvllm, start_fake):
    dying = start_fake(step_time=0.02)
    nvllm.register("dying", dying.port)
    held = nvllm.open_stream({"max_tokens": 500})
    assert held.headers["X-NVLLM-Node"] == "dying"
    other = start_fake()
    nvllm.register("other", other.port)
    time.sleep(0.1)  # a few tokens more
    dying.set_fault("down")  # cuts the connection mid-stream
    rest = b""
    # The client's connection is closed, not the stream ended as if whole.
    with pytest.raises(urllib3.exceptions.ProtocolError):
        while chunk := held.read1(65536):
            rest += chunk
    texts = [json.loads(line[6:])["choices"][0]["text"] for line in rest.split(b"\n") if
             line.startswith(b"data: {")]
    assert b"[DONE]" not in rest  # the client sees a cut stream...
    assert len(texts) < 500
    assert other.stats()["requests_received"] == 0  # ...never a second answer spliced on
    wait_for(lambda: nvllm.inflight("dying") == 0, 1, "nvllm to release its count")
    assert nvllm.fleet.get("dying").breaker.failures == 1


def test_two_streams_at_once_are_both_relayed(nvllm, slow_node):
    first = nvllm.open_stream({"max_tokens": 10})
    second = nvllm.open_stream({"max_tokens": 10})
    assert nvllm.inflight("slow") == 2
    sent = list(nvllm.learned("slow").flights.values())  # what routing knows of them
    assert [r.out_tokens for r in sent] == [10, 10]
    for held in (first, second):
        assert held.read().endswith(b"data: [DONE]\n\n")
        held.release_conn()
    assert nvllm.inflight("slow") == 0
    assert nvllm.learned("slow").flights == {} and nvllm.learned("slow").starting == {}
    assert nvllm.learned("slow").ttft_error_at > 0  # their first tokens were held against the estimate
    assert slow_node.stats()["completed"] == 2


def test_many_streams_some_abandoned_leave_no_count_behind(nvllm, start_fake):
    from concurrent.futures import ThreadPoolExecutor

    fakes = [start_fake(step_time=0.01), start_fake(step_time=0.01)]
    nvllm.register("a", fakes[0].port)
    nvllm.register("b", fakes[1].port)

    def one(i: int) -> bytes:
        held = nvllm.open_stream({"max_tokens": 40, "prompt": f"request {i}"})
        if i % 2:
            held.close()  # this client goes away after the first chunk
            return b""
        rest = held.read()
        held.release_conn()
        return rest

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(one, range(12)))
    assert all(a.endswith(b"data: [DONE]\n\n") for a in answers[0::2])
    wait_for(lambda: nvllm.inflight("a") == nvllm.inflight("b") == 0, 2, "every count to be released")
    assert all(not nvllm.learned(n).flights and not nvllm.learned(n).starting for n in "ab")
    wait_for(lambda: sum(f.stats()["cancelled"] for f in fakes) == 6, 2, "every abandoned stream to be cancelled")
    assert sum(f.stats()["completed"] for f in fakes) == 6
    assert all(f.stats()["in_flight"] == 0 for f in fakes)


def test_a_stream_that_goes_silent_is_cut_after_the_stream_timeout(start_nvllm, start_fake):
    live = start_nvllm(upstream_stream_timeout=0.5)
    stuck = start_fake(step_time=0.02)
    live.register("stuck", stuck.port)
    held = live.open_stream({"max_tokens": 500})
    time.sleep(0.1)  # a few tokens reach the client
    stuck.set_fault("hang")  # then the engine stops producing
    started = time.monotonic()
    rest = b""
    with pytest.raises(urllib3.exceptions.ProtocolError):  # the connection is closed: a cut stream
        while chunk := held.read1(65536):
            rest += chunk
    assert time.monotonic() - started < 3  # a cut stream, not a wait for the read timeout
    assert b"[DONE]" not in rest
    wait_for(lambda: live.inflight("stuck") == 0, 2, "nvllm to release its count")

"""A server with two worker processes routes as one: each conversation stays
on its node whichever worker takes each turn, and each worker counts the
other's requests in flight at once, not one fleet refresh later
(service/siblings.py, service/routing/mirror.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import urllib3
from prometheus_client.multiprocess import MultiProcessCollector

from fakevllm import FakeVLLM
from tests.integration.conftest import wait_for
from tests.metrics import Scrape

pytestmark = pytest.mark.integration

MODEL = "fake-model"
NODES = 4
SYSTEM = "You are a careful assistant who answers in full sentences. " * 12


@pytest.fixture
def fakes():
    # A prefill that costs something, as on a GPU: a node holding a conversation's
    # history is worth staying on (without it, a request that ended a
    # millisecond ago on the other worker could tip the balance).
    started = [FakeVLLM([MODEL], step_time=0.002, prefill_time_per_token=0.0001).start() for _ in range(NODES)]
    yield started
    for fake in started:
        fake.stop()


def fresh(service, method: str, path: str, token: str, body=None, *, preload: bool = True):
    """A request on a new connection: gunicorn gives it to either worker."""
    with urllib3.PoolManager(retries=False) as http:
        return http.request(method, service.base_url + path, body=None if body is None else json.dumps(body).encode(),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                     "Connection": "close"}, timeout=30, preload_content=preload)


def streamed_text(body: bytes) -> str:
    text = []
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            text.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
    return "".join(text)


def scrape(service) -> Scrape:
    answer = service.request("GET", "/metrics", headers={"Connection": "close"})
    assert answer.status == 200, answer.text
    return Scrape(answer.text)


def served_by_worker(directory: Path) -> list[float]:
    counts = []
    for path in directory.glob("counter_*.db"):
        counts.append(sum(s.value for m in MultiProcessCollector.merge([str(path)]) for s in m.samples
                          if s.name == "nvllm_proxy_requests_total"))
    return counts


def start(start_service, redis_url, fakes):
    # Refreshes far apart: what one worker knows of the other's requests cannot come from Redis in time.
    service = start_service(redis_url, NVLLM_WORKERS="2", NVLLM_FLEET_REFRESH="3", NVLLM_PROBE_INTERVAL="0",
                            NVLLM_UPSTREAM_CONNECT_TIMEOUT="10")
    token = service.login()
    for i, fake in enumerate(fakes):
        service.api("POST", "/api/node/node/register", token=token, body={
            "node_id": f"gpu-{i}", "node_address": "127.0.0.1", "node_port": fake.port, "node_status": "online",
            "models": [MODEL], "timeout": 300})
    wait_for(lambda: all(scrape(service).value("nvllm_node_routable") == NODES for _ in range(8)), 15,
             "every node routable in both workers")
    return service, token


def test_each_conversation_stays_on_its_node_whichever_worker_takes_a_turn(start_service, redis_url, fakes):
    service, token = start(start_service, redis_url, fakes)
    histories = {c: [{"role": "system", "content": SYSTEM + f" Conversation {c}."}] for c in range(12)}
    nodes: dict[int, set[str]] = {c: set() for c in histories}
    for turn in range(4):
        for c, history in histories.items():
            history.append({"role": "user", "content": f"Turn {turn} of conversation {c}: " + "tell me more. " * 20})
            answer = fresh(service, "POST", "/v1/chat/completions", token,
                           {"model": MODEL, "messages": history, "max_tokens": 8, "stream": True})
            assert answer.status == 200, answer.data[:300]
            nodes[c].add(answer.headers["X-NVLLM-Node"])
            history.append({"role": "assistant", "content": streamed_text(answer.data)})
    assert all(len(n) == 1 for n in nodes.values()), {c: n for c, n in nodes.items() if len(n) > 1}
    assert len(set().union(*nodes.values())) > 1  # spread over the fleet, not piled on one node
    served = served_by_worker(service.data_dir / f"metrics.{service.process.pid}")
    assert len([n for n in served if n]) == 2, served  # both workers took turns


def test_each_worker_counts_the_others_requests_in_flight_at_once(start_service, redis_url, fakes):
    service, token = start(start_service, redis_url, fakes)
    for fake in fakes:
        fake.step_time = 0.05  # streams of 100 tokens: 5 s each
    streams = []

    def open_stream(i: int) -> None:
        reply = fresh(service, "POST", "/v1/chat/completions", token, {
            "model": MODEL, "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": f"stream {i}"}]}, preload=False)
        streams.append(reply)
        for _ in reply.stream(64):
            pass
        reply.release_conn()

    threads = [threading.Thread(target=open_stream, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    started = time.monotonic()
    wait_for(lambda: scrape(service).value("nvllm_requests_in_flight") == 6, 2, "six streams in flight")
    # Every scrape, whichever worker answers it, sees all six on the nodes,
    # long before a fleet refresh (3 s) could have told it of the other's.
    for _ in range(8):
        assert scrape(service).value("nvllm_node_inflight") == 6
    assert time.monotonic() - started < 2.5
    for t in threads:
        t.join(30)
    wait_for(lambda: all(scrape(service).value("nvllm_node_inflight") == 0 for _ in range(4)), 5,
             "every worker to see them end")

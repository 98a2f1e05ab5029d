"""/metrics of a server with two worker processes: any scrape counts the
requests of both, a worker that exits keeps its counts but not its in-flight
gauge, a deleted node's series go from every worker's scrape, and the
metrics directory is removed when the server stops."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import urllib3
from prometheus_client.multiprocess import MultiProcessCollector

from fakevllm import FakeVLLM
from tests.integration.conftest import wait_for
from tests.metrics import Scrape, promtool_check_metrics

pytestmark = pytest.mark.integration

REQUESTS = 80
CLIENTS = 8
MAX_TOKENS = 7
SCRAPES = 8


@pytest.fixture
def fakes():
    started = [FakeVLLM(["fake-model"], step_time=0.005, prefill_time_per_token=0.0).start() for _ in range(2)]
    yield started
    for fake in started:
        fake.stop()


def scrape(service) -> Scrape:
    # A new connection each time, so scrapes land on either worker.
    answer = service.request("GET", "/metrics", headers={"Connection": "close"})
    assert answer.status == 200, answer.text
    return Scrape(answer.text)


def per_worker(directory: Path, name: str) -> dict[int, float]:
    """`name`'s total in each worker's own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        counts[pid] = sum(s.value for m in MultiProcessCollector.merge([str(path)]) for s in m.samples
                          if s.name == name)
    return counts


def test_two_workers_scrape_the_load_sent(start_service, redis_url, fakes):
    # Generous upstream timeouts: the fake nodes share this process (and a busy machine) with the clients.
    service = start_service(redis_url, NVLLM_WORKERS="2", NVLLM_FLEET_REFRESH="0.1", NVLLM_PROBE_INTERVAL="0",
                            NVLLM_UPSTREAM_CONNECT_TIMEOUT="10", NVLLM_UPSTREAM_STREAM_TIMEOUT="60")
    directory = service.data_dir / f"metrics.{service.process.pid}"
    assert directory.is_dir() and oct(directory.stat().st_mode & 0o777) == "0o700"
    token = service.login()
    for i, fake in enumerate(fakes):
        service.api("POST", "/api/node/node/register", token=token, body={
            "node_id": f"gpu-{i}", "node_address": "127.0.0.1", "node_port": fake.port, "node_status": "online",
            "models": ["fake-model"], "timeout": 300})
    wait_for(lambda: all(scrape(service).value("nvllm_node_routable") == 2 for _ in range(SCRAPES)), 10,
             "both nodes routable in both workers")

    def send(i: int) -> int:
        body = {"model": "fake-model", "max_tokens": MAX_TOKENS, "stream": i % 2 == 0,
                "messages": [{"role": "user", "content": f"request {i}"}]}
        with urllib3.PoolManager(retries=False) as http:
            reply = http.request("POST", f"{service.base_url}/v1/chat/completions", body=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                          "Connection": "close"}, timeout=30)
        return reply.status

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(send, range(REQUESTS)))
    assert statuses == [200] * REQUESTS, (Counter(statuses), service.log()[-3000:])
    wait_for(lambda: scrape(service).value("nvllm_requests_in_flight") == 0, 5, "every request to finish")

    # Both workers served some of it: each keeps its own count.
    served = per_worker(directory, "nvllm_proxy_requests_total")
    assert sum(served.values()) == REQUESTS and len([n for n in served.values() if n]) == 2, served
    generated = sum(fake.stats()["generation_tokens"] for fake in fakes)
    assert generated == REQUESTS * MAX_TOKENS
    for _ in range(SCRAPES):
        got = scrape(service)
        assert got.value("nvllm_proxy_requests_total", model="fake-model", code="200") == REQUESTS
        assert got.value("nvllm_routing_decisions_total") == REQUESTS
        assert got.value("nvllm_output_tokens_total", model="fake-model") == generated
        assert got.value("nvllm_time_to_first_token_seconds_count") == REQUESTS // 2  # the streams
        assert got.value("nvllm_http_requests_total", route="proxy.forward", code="200") == REQUESTS
    promtool_check_metrics(got.text)

    # A worker that exits: its counts stay in the sum, its in-flight gauge goes.
    gone = next(pid for pid, n in served.items() if n)
    os.kill(gone, signal.SIGTERM)
    wait_for(lambda: not (directory / f"gauge_livesum_{gone}.db").exists(), 10, "the worker's gauge file to go")
    for _ in range(SCRAPES):
        assert scrape(service).value("nvllm_proxy_requests_total", code="200") == REQUESTS

    # A deleted node's series leave every worker's scrape.
    service.api("DELETE", "/api/node/node/delete/gpu-0", token=token)
    wait_for(lambda: all('node="gpu-0"' not in scrape(service).text for _ in range(SCRAPES)), 10,
             "gpu-0's series to go")
    assert 'node="gpu-1"' in scrape(service).text

    assert service.stop() == 0
    assert not directory.exists()

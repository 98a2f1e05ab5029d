"""A hung store (SIGSTOP: connections stay open, nothing answers) costs a
proxied request nothing: its token check and the fleet view are this
instance's own, refreshed in the background. The API answers 503 within
NVLLM_REDIS_TIMEOUT plus half a second, and all recovers on SIGCONT."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fakevllm import FakeVLLM
from server.store import run_embedded
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

REDIS_TIMEOUT = 1.0
MODEL = "fake-model"
# Longer than the token cache (2 s) and twice the Redis timeout, so every
# refresh there is times out at least once while requests keep coming.
FROZEN_FOR = 5.0
# A request that waited on the hung store would take REDIS_TIMEOUT at least.
NO_WAIT = REDIS_TIMEOUT / 2


@pytest.fixture
def own_store(tmp_path):
    with run_embedded(tmp_path / "store") as store:
        yield store


def chat(service, token: str, stream: bool) -> float:
    """Seconds one small completion took; fails unless it succeeded in full."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}
    started = time.monotonic()
    answer = service.request("POST", "/v1/chat/completions", token=token, body=body, timeout=10)
    elapsed = time.monotonic() - started
    assert answer.status == 200, answer.text
    assert ("[DONE]" in answer.text) if stream else answer.json["choices"]
    return elapsed


def test_a_frozen_store_adds_no_wait_to_proxied_requests(start_service, own_store):
    with FakeVLLM(models=[MODEL], step_time=0.001, prefill_time_per_token=0) as fake:
        service = start_service(own_store.url, NVLLM_REDIS_TIMEOUT=str(REDIS_TIMEOUT), NVLLM_PROBE_INTERVAL="0")
        token = service.login()
        node = {"node_id": "gpu-1", "node_address": "127.0.0.1", "node_port": fake.port,
                "node_status": "online", "timeout": 3600, "models": [MODEL]}
        service.api("POST", "/api/node/node/register", token=token, body=node)
        wait_for(lambda: service.request("GET", "/v1/models", token=token).text.count(MODEL), 5, "the node")
        before = sorted(chat(service, token, stream=i % 2 == 0) for i in range(20))

        os.kill(own_store.process.pid, signal.SIGSTOP)
        try:
            frozen = []
            until = time.monotonic() + FROZEN_FOR
            while time.monotonic() < until:
                frozen.append(chat(service, token, stream=len(frozen) % 2 == 0))
                time.sleep(0.05)
            api = {}
            for path in ("/api/node/node/all", "/readyz"):
                started = time.monotonic()
                answer = service.request("GET", path, token=token, timeout=10)
                api[path] = (answer.status, time.monotonic() - started, answer.headers.get("Retry-After"))
        finally:
            os.kill(own_store.process.pid, signal.SIGCONT)

        assert len(frozen) > 20
        assert max(frozen) < before[-1] + NO_WAIT, (max(frozen), before[-1])
        for path, (status, elapsed, retry_after) in api.items():
            assert status == 503, path
            assert elapsed < REDIS_TIMEOUT + 0.5, (path, elapsed)
            assert retry_after and int(retry_after) >= 1

        wait_for(lambda: service.request("GET", "/readyz").status == 200, 10, "readiness after SIGCONT")
        assert service.request("GET", "/api/node/node/all", token=token).status == 200
        chat(service, token, stream=True)
        assert "Traceback" not in service.log()

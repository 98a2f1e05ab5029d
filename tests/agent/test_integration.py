"""The agent as a process against a fake vLLM and a real nvllm process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import urllib3

from tests.agent.conftest import wait_for

pytestmark = pytest.mark.integration

NODE = "it-node"
INTERVAL = 0.5
# "Within two intervals", plus room for a loaded test machine.
TWO_INTERVALS = 2 * INTERVAL + 0.5


def agent_flags(fake, *extra: str) -> list[str]:
    return ["--vllm", fake.url, "--node-id", NODE, "--interval", str(INTERVAL), "--drain-grace", "5", *extra]


def node_status(nvllm, token: str) -> dict | None:
    answer = nvllm.request("GET", f"/api/node/node/status/{NODE}", token=token)
    return answer.json["data"] if answer.status == 200 else None


def wait_node(nvllm, token: str, check, what: str, timeout: float = 10.0) -> dict:
    return wait_for(lambda: (lambda s: s if s and check(s) else None)(node_status(nvllm, token)), timeout, what)


@contextmanager
def queued_requests(fake, count: int) -> Iterator[None]:
    """`count` completions held in vLLM's queue (its engine frozen) until the block ends."""
    http = urllib3.PoolManager(retries=False, maxsize=count)
    body = json.dumps({"model": "fake-model", "prompt": "hello", "max_tokens": 4})

    def send() -> None:
        http.request("POST", fake.url + "/v1/completions", body=body,
                     headers={"Content-Type": "application/json"}, timeout=20)

    fake.set_fault("hang")
    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        fake.set_fault(None)
        for thread in threads:
            thread.join(10)


def test_registers_reports_load_and_vllm_health(nvllm, worker_token, fake_vllm, run_agent):
    agent = run_agent(nvllm.base_url, worker_token, *agent_flags(fake_vllm))
    node = wait_node(nvllm, worker_token, lambda s: s["node_status"] == "online", "the node to register")
    assert node["models"] == ["fake-model"]
    assert (node["node_address"], node["node_port"]) == ("127.0.0.1", fake_vllm.port)
    assert (node["node_type"], node["timeout"]) == ("worker", 2)

    with queued_requests(fake_vllm, 3):
        started = time.monotonic()
        node = wait_node(nvllm, worker_token, lambda s: s["node_info"]["waiting"] == 3,
                         "the queued requests to show in status", timeout=TWO_INTERVALS)
        assert time.monotonic() - started <= TWO_INTERVALS
        assert node["node_info"]["running"] == 0
        assert node["node_info"]["kv_cache_usage"] == 0.0

    fake_vllm.set_fault("down")
    wait_node(nvllm, worker_token, lambda s: s["node_status"] == "offline", "offline", timeout=TWO_INTERVALS)
    fake_vllm.set_fault(None)
    wait_node(nvllm, worker_token, lambda s: s["node_status"] == "online", "online again", timeout=TWO_INTERVALS)

    assert agent.stop() == 0
    log = agent.log()
    assert "vLLM unhealthy (connection dropped): reporting offline" in log
    assert "vLLM healthy: reporting online" in log
    assert worker_token not in log


def test_comes_back_after_nvllm_restarts_and_after_its_node_is_deleted(
    nvllm, worker_token, fake_vllm, run_agent, restart_nvllm
):
    agent = run_agent(nvllm.base_url, worker_token, *agent_flags(fake_vllm))
    wait_node(nvllm, worker_token, lambda s: s["node_status"] == "online", "the node to register")

    # Stay down until the agent has seen it, however fast the restart would be.
    nvllm = restart_nvllm(
        nvllm, while_down=lambda: wait_for(lambda: "nvllm unreachable" in agent.log(), 10, "the agent to notice")
    )
    wait_node(nvllm, worker_token, lambda s: s["alive"] and s["seconds_since_update"] < INTERVAL * 2,
              "heartbeats after the restart")

    admin = nvllm.login()
    nvllm.request("DELETE", f"/api/node/node/delete/{NODE}", token=admin)
    node = wait_node(nvllm, worker_token, lambda s: s["node_status"] == "online",
                     "the node to register again", timeout=TWO_INTERVALS)
    assert node["models"] == ["fake-model"]

    assert agent.stop() == 0
    log = agent.log()
    assert "nvllm unreachable" in log and "nvllm reachable again" in log
    assert f"node {NODE} gone (404): registering again" in log
    assert agent.process.returncode == 0


def test_sigterm_drains_then_deregisters_and_exits_0(nvllm, worker_token, fake_vllm, run_agent):
    agent = run_agent(nvllm.base_url, worker_token, *agent_flags(fake_vllm))
    wait_node(nvllm, worker_token, lambda s: s["node_status"] == "online", "the node to register")

    with queued_requests(fake_vllm, 2):
        wait_node(nvllm, worker_token, lambda s: s["node_info"]["waiting"] == 2, "the load")
        agent.process.terminate()
        wait_node(nvllm, worker_token, lambda s: s["node_status"] == "draining", "draining")
        time.sleep(INTERVAL)  # vLLM still holds work: the node must stay
        assert node_status(nvllm, worker_token)["node_status"] == "draining"
        assert agent.process.poll() is None

    assert agent.process.wait(10) == 0
    assert node_status(nvllm, worker_token) is None
    log = agent.log()
    assert "drained: nothing running or in flight" in log
    assert f"deregistered node {NODE}" in log

"""REDIS_URL=redis+sentinel://...: nvllm follows a failover without a restart.
A real primary, replica and three sentinels; the primary is SIGKILLed while
requests flow. The API answers 503 with Retry-After only during the switch,
the proxy keeps routing throughout, and what was acknowledged (and
replicated) before the kill is still there."""

from __future__ import annotations

import threading
import time

import pytest

from fakevllm import FakeVLLM
from tests.helpers import require_binary
from tests.integration.conftest import wait_for
from tests.integration.redis_ha import RedisHA

pytestmark = pytest.mark.integration

MODEL = "fake-model"
SWITCH_WITHIN = 15.0  # seconds from the kill to the API answering again: detection 1 s, election, promotion


@pytest.fixture
def ha(tmp_path):
    cluster = RedisHA(tmp_path / "ha", require_binary("redis-server"), require_binary("redis-sentinel"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class Load:
    """Two loops beside the test: /v1 completions, and node heartbeats plus
    reads on the API; every answer recorded with its time."""

    def __init__(self, service, token: str) -> None:
        self.service, self.token = service, token
        self.proxied: list[tuple[float, int]] = []
        self.api: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._proxy), threading.Thread(target=self._api)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _proxy(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        while not self.stop.is_set():
            answer = self.service.request("POST", "/v1/chat/completions", token=self.token, body=body, timeout=10)
            ok = answer.status == 200 and "[DONE]" in answer.text
            self.proxied.append((time.monotonic(), 200 if ok else answer.status))
            time.sleep(0.02)

    def _api(self) -> None:
        while not self.stop.is_set():
            for method, path, body in (("PUT", "/api/node/node/update/gpu-1", {"node_info": {"running": 1}}),
                                       ("GET", "/api/node/node/get_node/gpu-1", None)):
                answer = self.service.request(method, path, token=self.token, body=body, timeout=10)
                self.api.append((time.monotonic(), answer.status, answer.headers.get("Retry-After")))
            time.sleep(0.05)


def test_a_primary_killed_under_load_is_followed_without_a_restart(start_service, ha):
    with FakeVLLM(models=[MODEL], step_time=0.001, prefill_time_per_token=0) as fake:
        service = start_service(ha.url, NVLLM_REDIS_TIMEOUT="1", NVLLM_PROBE_INTERVAL="0")
        token = service.login()
        node = {"node_id": "gpu-1", "node_address": "127.0.0.1", "node_port": fake.port,
                "node_status": "online", "timeout": 3600, "models": [MODEL]}
        service.api("POST", "/api/node/node/register", token=token, body=node)
        service.api("POST", "/api/user/register", token=token,
                    body={"username": "alice", "password": "alice-long-password", "role": "user"})
        wait_for(lambda: MODEL in service.request("GET", "/v1/models", token=token).text, 5, "the node")
        wait_for(ha.in_sync, 10, "the replica to hold every write")

        with Load(service, token) as load:
            time.sleep(1.0)
            killed_at = time.monotonic()
            ha.kill_primary()
            wait_for(lambda: ha.sentinels_agree(ha.ports["replica"]), SWITCH_WITHIN, "the replica's promotion")
            wait_for(lambda: any(t > killed_at and s == 200 for t, s, _ in load.api[-4:]), SWITCH_WITHIN,
                     "the API to answer again")
            time.sleep(2.0)

        assert load.proxied and all(status == 200 for _, status in load.proxied), load.proxied
        assert any(t > killed_at for t, _ in load.proxied)
        failed = [(t, status, retry) for t, status, retry in load.api if status != 200]
        assert failed, "the kill was not noticed: no 503 at all"
        assert all(status == 503 and retry and int(retry) >= 1 for _, status, retry in failed), failed
        # The switch lasts from the kill until the API answers steadily again:
        # a pooled connection to the dead primary may fail once more after the
        # first good answer, but never before the kill or after the switch.
        steady_at = max(t for t, _, _ in failed)
        assert all(t >= killed_at for t, _, _ in failed), "503 before the kill"
        assert steady_at - killed_at < SWITCH_WITHIN, "503 outside the switch"
        assert service.api("GET", "/api/node/node/get_node/gpu-1", token=token)["node_port"] == fake.port
        assert service.login("alice", "alice-long-password")
        assert service.alive() and "Traceback" not in service.log()

"""The realtime WebSocket through the production server (gunicorn + gevent),
where the client's socket carries request deadlines that a session must not
inherit."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from fakevllm import FakeVLLM
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def test_a_session_outlives_the_body_timeout_and_closes_with_the_client(start_service, redis_url):
    service = start_service(redis_url, NVLLM_BODY_TIMEOUT="0.5", NVLLM_HEADER_TIMEOUT="0.5",
                            NVLLM_FLEET_REFRESH="0.1", NVLLM_PROBE_INTERVAL="0")
    token = service.login()
    with FakeVLLM(["asr"], step_time=0.0, prefill_time_per_token=0.0) as fake:
        service.api("POST", "/api/node/node/register", token=token, body={
            "node_id": "asr-node", "node_address": "127.0.0.1", "node_port": fake.port,
            "node_status": "online", "models": ["asr"], "timeout": 300})
        wait_for(lambda: service.request("GET", "/api/node/node/select?model=asr", token=token).status == 200,
                 10, "the node to become routable")
        url = f"ws://127.0.0.1:{service.port}/v1/realtime?model=asr"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5) as ws:
            assert ws.response.headers["X-NVLLM-Node"] == "asr-node"
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            time.sleep(1.0)  # longer than both request deadlines
            ws.send(json.dumps({"type": "session.update", "model": "asr"}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            assert json.loads(ws.recv(timeout=5))["type"] == "transcription.done"
        # The server is still serving, and logged the session once it ended.
        assert service.request("GET", "/healthz").status == 200
        deadline = time.monotonic() + 5
        while "GET /v1/realtime 101" not in service.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "GET /v1/realtime 101" in service.log()

"""The realtime WebSocket through nvllm, with a real WebSocket client: the
upgrade, events both ways, and the close of either side."""

from __future__ import annotations

import base64
import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

AUDIO = base64.b64encode(b"\0\1" * 3200).decode()  # 0.2 s of 16 kHz PCM16: two words


@pytest.fixture
def auth_admin(nvllm) -> str:
    """A token of the admin nvllm created at its first start."""
    stores = nvllm.app.extensions["nvllm"]
    return stores.tokens.issue(stores.users.load("admin"), 3600)


def ws_url(live, query: str = "?model=asr") -> str:
    return live.url.replace("http://", "ws://") + "/v1/realtime" + query


def open_ws(live, query: str = "?model=asr", token: str | None = None, **options):
    headers = {"Authorization": f"Bearer {token or live.token}"}
    return connect(ws_url(live, query), additional_headers=headers, open_timeout=5, **options)


def events(ws, n: int) -> list[dict]:
    return [json.loads(ws.recv(timeout=5)) for _ in range(n)]


def test_a_transcription_session_passes_through(nvllm, start_fake):
    other = start_fake(["chat"])
    asr = start_fake(["asr"])
    nvllm.register("chat-node", other.port, models=["chat"])
    nvllm.register("asr-node", asr.port, models=["asr"])
    with open_ws(nvllm) as ws:
        assert ws.response.status_code == 101
        assert ws.response.headers["X-NVLLM-Node"] == "asr-node"
        created = json.loads(ws.recv(timeout=5))
        assert created["type"] == "session.created" and created["id"].startswith("sess-")
        assert nvllm.inflight("asr-node") == 1  # a session counts as in flight, so a drain waits for it
        ws.send(json.dumps({"type": "session.update", "model": "asr"}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": AUDIO}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        got = events(ws, 3)
    assert [e["type"] for e in got] == ["transcription.delta", "transcription.delta", "transcription.done"]
    assert got[-1]["text"] == got[0]["delta"] + got[1]["delta"]
    assert got[-1]["usage"]["completion_tokens"] == 2
    wait_for(lambda: nvllm.inflight("asr-node") == 0, 3, "the session to be released after the client closed")


def test_the_node_closing_closes_the_client(nvllm, start_fake):
    asr = start_fake(["asr"])
    nvllm.register("asr-node", asr.port, models=["asr"])
    with open_ws(nvllm) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        asr.stop()  # the node goes away mid-session
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    wait_for(lambda: nvllm.inflight("asr-node") == 0, 3, "the session to be released after the node closed")


def test_an_alias_routes_and_reaches_the_node_as_its_model(nvllm, start_fake, auth_admin):
    asr = start_fake(["asr"])
    nvllm.register("asr-node", asr.port, models=["asr"])
    assert nvllm.post("/api/alias/set", {"alias": "whisper-1", "model": "asr"}, token=auth_admin).status == 200
    with open_ws(nvllm, "?model=whisper-1") as ws:
        assert ws.response.headers["X-NVLLM-Node"] == "asr-node"
        ws.recv(timeout=5)
        ws.send(json.dumps({"type": "session.update", "model": "asr"}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        assert events(ws, 1)[0]["type"] == "transcription.done"


def test_no_token_no_node_and_no_upgrade_are_refused(nvllm, start_fake):
    asr = start_fake(["asr"])
    nvllm.register("asr-node", asr.port, models=["asr"])
    with pytest.raises(InvalidStatus) as refused:
        open_ws(nvllm, token="not-a-token")
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as missing:
        open_ws(nvllm, "?model=nobody-serves-this")
    assert missing.value.response.status_code == 503
    plain = nvllm.get("/v1/realtime?model=asr")
    assert plain.status == 426 and plain.headers["Upgrade"] == "websocket"
    assert "WebSocket" in plain.json()["error"]["message"]

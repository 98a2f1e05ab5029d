"""The HTTP clients against small stub servers: headers, envelopes, and how failures map."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.nvllm import NodeGone, NvllmClient, Rejected, Unreachable
from agent.vllm import VllmClient, VllmError
from model.adapter import Adapter
from model.vllm_metrics import Load

FIXTURES = Path(__file__).parents[1] / "model" / "fixtures"  # vLLM /metrics samples, shared with the parser tests
TOKEN = "worker-token-abc"

Reply = tuple[int, dict[str, str], bytes]


class Stub:
    """An HTTP server in a thread answering `routes[(method, path)]`, or hanging."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Reply] = {}
        self.requests: list[dict[str, Any]] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers), "body": body})
                if stub.hang.is_set():
                    stub.release.wait(5)  # answer nothing until the test ends
                    return
                status, headers, payload = stub.routes.get((self.command, self.path), (404, {}, b"{}"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def json(self, method: str, path: str, status: int, body: Any, **headers: str) -> None:
        self.routes[(method, path)] = (status, {"Content-Type": "application/json", **headers},
                                       json.dumps(body).encode())


def envelope(data: Any) -> dict[str, Any]:
    return {"message": "success", "status": "success", "code": 200, "data": data, "trace_id": "t"}


def error(code: int, text: str) -> dict[str, Any]:
    return {"message": "error", "status": "error", "code": code, "error": text, "trace_id": "t"}


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def nvllm(stub) -> NvllmClient:
    return NvllmClient(stub.url + "/", TOKEN, timeout=1.0)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- nvllm ---


def test_register_posts_json_with_the_bearer_token(stub, nvllm):
    stub.json("POST", "/api/node/node/register", 200, envelope({"node_id": "n1"}))
    assert nvllm.register({"node_id": "n1", "remark": "GPU节点1"}) == {"node_id": "n1"}
    sent = stub.requests[0]
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["User-Agent"] == "nvllm-agent"
    assert json.loads(sent["body"]) == {"node_id": "n1", "remark": "GPU节点1"}


def test_update_status_and_delete_use_the_seed_paths(stub, nvllm):
    stub.json("PUT", "/api/node/node/update/n1", 200, envelope({"node_status": "online"}))
    stub.json("GET", "/api/node/node/status/n1", 200, envelope({"inflight": 2}))
    stub.json("DELETE", "/api/node/node/delete/n1", 200, envelope({"deleted": True}))
    assert nvllm.update("n1", {}) == {"node_status": "online"}
    assert nvllm.status("n1") == {"inflight": 2}
    assert nvllm.delete("n1") is None
    assert [(r["method"], r["path"]) for r in stub.requests] == [
        ("PUT", "/api/node/node/update/n1"),
        ("GET", "/api/node/node/status/n1"),
        ("DELETE", "/api/node/node/delete/n1"),
    ]


def test_404_on_a_node_path_means_the_node_is_gone(stub, nvllm):
    stub.json("PUT", "/api/node/node/update/n1", 404, error(404, "node 'n1' not found"))
    with pytest.raises(NodeGone, match="not found"):
        nvllm.update("n1", {})
    with pytest.raises(NodeGone):
        nvllm.delete("n1")


def test_404_on_register_means_the_server_url_is_wrong(nvllm):
    with pytest.raises(Rejected, match="HTTP 404"):
        nvllm.register({})


@pytest.mark.parametrize("code", [401, 403, 400])
def test_client_errors_are_rejections(stub, nvllm, code):
    stub.json("POST", "/api/node/node/register", code, error(code, "nope"))
    with pytest.raises(Rejected, match=f"HTTP {code}: nope"):
        nvllm.register({})


@pytest.mark.parametrize("code", [500, 502, 503, 429])
def test_server_errors_and_429_are_worth_retrying(stub, nvllm, code):
    stub.json("PUT", "/api/node/node/update/n1", code, error(code, "later"), **{"Retry-After": "7"})
    with pytest.raises(Unreachable) as info:
        nvllm.update("n1", {})
    assert info.value.retry_after == 7.0


def test_a_200_without_the_envelope_is_not_nvllm(stub, nvllm):
    stub.routes[("POST", "/api/node/node/register")] = (200, {}, b"<html>hello</html>")
    with pytest.raises(Rejected, match="is --server nvllm"):
        nvllm.register({})


def test_connection_refused_is_unreachable():
    client = NvllmClient(closed_port_url(), TOKEN, timeout=1.0)
    with pytest.raises(Unreachable, match="(?i)refused") as info:
        client.register({})
    assert TOKEN not in str(info.value)


def test_a_server_that_never_answers_times_out(stub):
    stub.hang.set()
    client = NvllmClient(stub.url, TOKEN, timeout=0.2)
    with pytest.raises(Unreachable, match="timed out"):
        client.update("n1", {})


# --- vLLM ---


def test_vllm_health_models_and_load(stub):
    stub.routes[("GET", "/health")] = (200, {}, b"")
    stub.json("GET", "/v1/models", 200, {"object": "list", "data": [
        {"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model", "owned_by": "vllm"},
        {"id": "my-lora", "object": "model", "owned_by": "vllm", "parent": "Qwen/Qwen2.5-7B-Instruct"},
    ]})
    stub.routes[("GET", "/metrics")] = (200, {"Content-Type": "text/plain; version=0.0.4"},
                                        (FIXTURES / "vllm_current.txt").read_bytes())
    client = VllmClient(stub.url, timeout=1.0)
    assert client.health_problem() is None
    # A card with a parent is a LoRA adapter, reported apart from the base models.
    assert client.models() == ["Qwen/Qwen2.5-7B-Instruct"]
    assert client.catalog() == (["Qwen/Qwen2.5-7B-Instruct"], [Adapter("my-lora", "Qwen/Qwen2.5-7B-Instruct")])
    assert client.load() == Load(running=3, waiting=2, kv_cache_usage=0.4375)


def test_the_vllm_api_key_goes_to_v1_only(stub):
    stub.routes[("GET", "/health")] = (200, {}, b"")
    stub.json("GET", "/v1/models", 200, {"data": []})
    client = VllmClient(stub.url, timeout=1.0, api_key="vllm-key")
    client.health_problem()
    client.models()
    auth = [r["headers"].get("Authorization") for r in stub.requests]
    assert auth == [None, "Bearer vllm-key"]


def test_vllm_failures_are_described(stub):
    stub.routes[("GET", "/health")] = (503, {}, b"")
    stub.json("GET", "/v1/models", 401, {"error": "Unauthorized"})
    stub.routes[("GET", "/metrics")] = (200, {}, b"not prometheus {{{\n")
    client = VllmClient(stub.url, timeout=1.0)
    assert client.health_problem() == "/health answered HTTP 503"
    with pytest.raises(VllmError, match="HTTP 401"):
        client.models()
    with pytest.raises(VllmError, match="not Prometheus"):
        client.load()


def test_a_model_list_of_the_wrong_shape_is_an_error(stub):
    stub.json("GET", "/v1/models", 200, {"models": ["a"]})
    with pytest.raises(VllmError, match="not an OpenAI model list"):
        VllmClient(stub.url, timeout=1.0).models()


def test_vllm_down_is_a_health_problem():
    assert "refused" in VllmClient(closed_port_url(), timeout=1.0).health_problem().lower()

"""No client path climbs out of /v1: what the client really sent is checked
(raw socket requests, since an HTTP client would tidy the path first), and a
query string reaches the node only as a query string."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.proxy.recorder import Recorder, serving

pytestmark = pytest.mark.integration  # a live nvllm and an upstream server


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with serving(Recorder()) as server:
        yield server


def raw_post(port: int, target: str, token: str) -> tuple[int, bytes]:
    """POST `target` exactly as written; (status, body)."""
    body = json.dumps({"model": "m", "messages": []}).encode()
    head = (f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


ESCAPES = [
    "/v1/../health%3Fq=1",
    "/v1/../../metrics",
    "/v1/%2e%2e/health",
    "/v1/.%2E/health",
    "/v1/chat%2Fcompletions",
    "/v1/chat/completions%3Fx=1",
    "/v1/chat/completions%23x",
    "/v1/chat/./completions",
    "/v1/chat//completions",
    "/v1/chat%5C..%5Chealth",
    "/v1/chat\\..\\health",
    "/v1/chat/completions/",
    "/v1/responses/resp_1/../../pause",
    "/v1/responses/%2e%2e/cancel",
    "/v1/audio/transcriptions%3F../../sleep",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_a_path_that_could_escape_v1_is_refused_and_never_sent(nvllm, recorder, target):
    nvllm.register("rec", recorder.server_address[1])
    status, body = raw_post(nvllm.server.server_port, target, nvllm.token)
    assert status == 400, body
    assert json.loads(body)["error"]["message"].startswith("path: ")
    assert recorder.paths == []


@pytest.mark.parametrize("target", ["/tokenize/../pause", "/v2/rerank/..", "/score%2F..%2Fsleep"])
def test_a_root_route_that_could_escape_is_never_sent(nvllm, recorder, target):
    nvllm.register("rec", recorder.server_address[1])
    status, _ = raw_post(nvllm.server.server_port, target, nvllm.token)
    assert status in (400, 404)
    assert recorder.paths == []


def test_a_plain_path_and_its_query_arrive_as_sent(nvllm, recorder):
    nvllm.register("rec", recorder.server_address[1])
    assert raw_post(nvllm.server.server_port, "/v1/chat/completions", nvllm.token)[0] == 200
    assert raw_post(nvllm.server.server_port, "/v1/chat/completions?a=1&b=..%2F%23", nvllm.token)[0] == 200
    assert recorder.paths == ["/v1/chat/completions", "/v1/chat/completions?a=1&b=..%2F%23"]

"""nvllm frames every answer itself: a node's Content-Length is never passed
on, and a node that cuts its body short gets the client's connection closed,
so a pipelined next answer can never land inside the previous body and a
client never waits for bytes that will not come."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.integration  # a live nvllm and a raw-socket node

PROMISED, SENT = 1000, 10


class ShortNode:
    """A node that promises PROMISED bytes of body and sends SENT, then closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length")), b"0"))
                    while len(body) < length and (chunk := conn.recv(65536)):
                        body += chunk
                except OSError:
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % PROMISED + b"x" * SENT)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def short_node() -> Iterator[ShortNode]:
    node = ShortNode()
    yield node
    node.close()


def request(token: str) -> bytes:
    body = json.dumps({"model": "m", "messages": []}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


def test_a_cut_body_closes_the_client_connection(nvllm, short_node):
    nvllm.register("short", short_node.port)
    with socket.create_connection(("127.0.0.1", nvllm.server.server_port), timeout=3) as sock:
        # Two pipelined requests: the second's answer must not be read as the
        # rest of the first's body.
        sock.sendall(request(nvllm.token) * 2)
        data = b""
        while chunk := sock.recv(65536):  # a timeout here is the hang this prevents
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = head.lower().split(b"\r\n")
    assert headers[0].startswith(b"http/1.1 200")
    assert b"content-length: %d" % PROMISED not in headers
    assert b"transfer-encoding: chunked" in headers
    assert b"x" * SENT in body
    assert not body.endswith(b"0\r\n\r\n")  # never ended as if whole
    assert b"HTTP/1.1" not in body  # and nothing after it on this connection


def test_a_whole_answer_is_reframed(nvllm, start_fake):
    fake = start_fake()
    nvllm.register("n1", fake.port)
    answer = nvllm.post("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 1})
    assert answer.status == 200 and json.loads(answer.data)["choices"]
    assert answer.headers.get("Transfer-Encoding") == "chunked"

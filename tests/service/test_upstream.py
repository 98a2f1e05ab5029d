"""The client to nodes sends a request's headers and body in one write, and
everything else as urllib3 would."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest
import urllib3

from service.upstream import ONE_WRITE_MAX_BODY, OneWritePool, pool_manager


class Recorder:
    """A server on a free 127.0.0.1 port answering `ok` to each request on a
    kept-alive connection, keeping every request it read (head and body)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[tuple[bytes, bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is None and b"transfer-encoding: chunked" in head.lower():
                    while b"0\r\n\r\n" not in buf:
                        buf += conn.recv(65536)
                    body, _, buf = buf.partition(b"0\r\n\r\n")
                else:
                    while len(buf) < (length or 0):
                        buf += conn.recv(65536)
                    body, buf = buf[: length or 0], buf[length or 0:]
                self.requests.append((head, body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    recorder = Recorder()
    yield recorder
    recorder.close()


@pytest.fixture
def writes(monkeypatch):
    """Every write the connection makes, in order."""
    sent: list[bytes] = []
    original = http.client.HTTPConnection.send

    def record(self, data):
        sent.append(bytes(data))
        return original(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", record)
    return sent


def test_headers_and_body_go_in_one_write(server, writes):
    http = pool_manager()
    body = b'{"model": "m", "messages": []}'
    for _ in range(2):  # the second on the kept-alive connection
        response = http.urlopen("POST", server.url + "/v1/chat/completions", body=body,
                                headers={"Content-Type": "application/json"}, retries=False)
        assert response.status == 200 and response.data == b"ok"
    assert len(writes) == 2
    for write in writes:
        assert write.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and write.endswith(b"\r\n\r\n" + body)
        assert b"Content-Length: %d\r\n" % len(body) in write
    assert [b for _, b in server.requests] == [body, body]
    assert isinstance(http.connection_from_url(server.url), OneWritePool)


def test_large_bodies_and_bodiless_requests_go_as_urllib3_sends_them(server, writes):
    http = pool_manager()
    large = b"x" * (ONE_WRITE_MAX_BODY + 1)
    assert http.urlopen("POST", server.url + "/v1/audio", body=large, retries=False).status == 200
    assert http.urlopen("GET", server.url + "/v1/models", retries=False).status == 200
    assert len(writes) == 3  # the large body's headers, its body, the GET
    assert writes[0].endswith(b"\r\n\r\n") and writes[1] == large
    assert writes[2].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert [b for _, b in server.requests] == [large, b""]


def test_a_chunked_body_is_left_alone(server, writes):
    http = pool_manager()
    response = http.urlopen("POST", server.url + "/upload", body=iter([b"ab", b"cd"]), retries=False)
    assert response.status == 200
    assert writes[0].endswith(b"\r\n\r\n") and b"Transfer-Encoding: chunked" in writes[0]
    assert writes[1:] == [b"2\r\nab\r\n", b"2\r\ncd\r\n", b"0\r\n\r\n"]
    assert server.requests[0][1] == b"2\r\nab\r\n2\r\ncd\r\n"


def test_an_explicit_transfer_encoding_is_left_alone(writes):
    """Written exactly as urllib3's own pools write it."""
    seen = []
    for manager in (pool_manager(), urllib3.PoolManager()):
        server = Recorder()
        try:
            response = manager.urlopen("POST", server.url + "/upload", body=b"ab",
                                    headers={"Transfer-Encoding": "chunked"}, retries=False)
            assert response.status == 200
        finally:
            server.close()
        seen.append([w.replace(server.url[7:].encode(), b"HOST") for w in writes])
        writes.clear()
    assert seen[0] == seen[1] and len(seen[0]) == 3

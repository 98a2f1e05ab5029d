"""Slow clients cannot take the server's connection slots (slowloris): headers
and bodies have deadlines, and one client address holds a bounded share of the
slots, while /healthz keeps answering another client throughout."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time

import pytest

from server.http import WORKER_CONNECTIONS

pytestmark = pytest.mark.integration

HALF_SENT = WORKER_CONNECTIONS + 200  # more than a worker's every slot
OTHER_CLIENT = "127.0.0.2"  # all of 127/8 is local on Linux: a second client address


@pytest.fixture
def many_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = HALF_SENT + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def healthz_from(port: int, source: str, timeout: float = 3.0) -> int:
    """Status of GET /healthz sent from `source`, on a fresh connection."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(sock.recv(65536).split(b" ", 2)[1])


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` (maybe after an answer) in time."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def test_half_sent_requests_neither_fill_the_server_nor_stay(start_service, redis_url, many_files):
    service = start_service(redis_url, NVLLM_HEADER_TIMEOUT="3")
    held: list[socket.socket] = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            held.append(sock)
        # Past the per-client cap, a connection is answered 429 and closed at once.
        last = held[-1]
        last.settimeout(3)
        assert b" 429 " in last.recv(65536)
        assert healthz_from(service.port, OTHER_CLIENT) == 200
        # The half-sent headers run out of time and their slots come back.
        assert closed_within(held[0], 6)
        assert healthz_from(service.port, "127.0.0.1") == 200
    finally:
        for sock in held:
            sock.close()
    assert "Traceback" not in service.log()


def test_a_body_sent_too_slowly_is_cut_off(start_service, redis_url):
    service = start_service(redis_url, NVLLM_BODY_TIMEOUT="1")
    token = service.login()
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        started = time.monotonic()
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
        assert time.monotonic() - started < 4
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert "not received in full" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"]
    assert healthz_from(service.port, "127.0.0.1") == 200
    assert "Traceback" not in service.log()


def test_a_kept_alive_connection_may_idle_and_then_send_again(start_service, redis_url):
    service = start_service(redis_url, NVLLM_HEADER_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}\n'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(1.5)  # idle longer than the header timeout: keep-alive's own bound applies

"""What a client and an operator see of the HTTP server itself: probes
without a token, no debugger, no tracebacks, TCP_NODELAY, clear start-up
errors, and requests in flight finishing on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import urllib3

from dao.keys import Keys
from tests.integration.conftest import ROOT, free_port, run_cli, service_env, wait_for

pytestmark = pytest.mark.integration

TRACEBACK_MARKERS = ("Traceback", 'File "', "Error:", "werkzeug", "__debugger__")


def test_probes_need_no_token(start_service, redis_url):
    service = start_service(redis_url)
    health = service.request("GET", "/healthz")
    assert health.status == 200 and health.json["status"] == "ok"
    ready = service.request("GET", "/readyz")
    assert ready.status == 200 and ready.json["status"] == "ready"


def test_debugger_is_unreachable_and_errors_carry_no_traceback(start_service, redis_url, store_client):
    service = start_service(redis_url)
    for path in ("/console", "/console?__debugger__=yes&cmd=resource&f=style.css", "/api/nope"):
        answer = service.request("GET", path)
        assert answer.status == 404, path
        assert answer.json["code"] == 404 and answer.json["status"] == "error"
        assert not any(marker in answer.text for marker in TRACEBACK_MARKERS), answer.text

    # A node hash that cannot be parsed: the unexpected error becomes a
    # generic 500, its details only in the log under the trace id.
    token = service.login()
    service.api("POST", "/api/node/node/register", token=token, body={"node_id": "broken"})
    store_client.hset(Keys("nvllm").node("broken"), "node_port", "not-a-port")
    answer = service.request("GET", "/api/node/node/get_node/broken", token=token,
                             headers={"X-Trace-ID": "trace-of-a-500"})
    assert answer.status == 500
    assert answer.json == {"message": "error", "status": "error", "code": 500,
                           "error": "internal server error", "trace_id": "trace-of-a-500"}
    assert not any(marker in answer.text for marker in TRACEBACK_MARKERS)
    assert "not-a-port" not in answer.text
    wait_for(lambda: "trace-of-a-500" in service.log(), 5, "the error in the log")


NODELAY_APP = """
import socket, sys
from config import Settings
from server.http import NvllmServer

def factory(settings):
    def app(environ, start_response):
        sock = environ["gunicorn.socket"]
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(value).encode()]
    return app

NvllmServer(Settings(port=int(sys.argv[1])), app_factory=factory).run()
"""


def test_accepted_connections_have_tcp_nodelay(tmp_path):
    """The production server, with a probe app in place of nvllm's."""
    port = free_port()
    env = service_env(tmp_path, None, {})
    process = subprocess.Popen([sys.executable, "-c", NODELAY_APP, str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = urllib3.PoolManager(retries=False)
    try:
        def answer() -> str | None:
            try:
                return http.request("GET", f"http://127.0.0.1:{port}/", timeout=1).data.decode()
            except urllib3.exceptions.HTTPError:
                return None

        assert wait_for(answer, 20, "the probe server") != "0"
    finally:
        http.clear()
        # At once after the first answer: with a worker per core, another may
        # still be booting, and must stop at once too (not after 30 s).
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - started < 10


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(tmp_path / "data", None, {})
        started = time.monotonic()
        result = run_cli(["--port", str(port)], env)
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert result.stderr.strip() == f"nvllm: cannot listen on http://127.0.0.1:{port}: address already in use"
    # Nothing was started for a server that cannot listen.
    assert not (tmp_path / "data" / "store.json").exists()
    assert not (tmp_path / "data" / "valkey.log").exists()


def test_stream_in_flight_finishes_on_sigterm(start_service, redis_url):
    fakevllm = pytest.importorskip("fakevllm")
    fake = fakevllm.FakeVLLM(["fake-model"], step_time=0.05).start()
    try:
        service = start_service(redis_url)
        token = service.login()
        node = {"node_id": "fake-1", "node_address": "127.0.0.1", "node_port": fake.port,
                "node_status": "online", "models": ["fake-model"], "timeout": 300}
        service.api("POST", "/api/node/node/register", token=token, body=node)
        wait_for(
            lambda: service.request("GET", "/api/node/node/select?model=fake-model", token=token).status == 200,
            10, "the node to become routable",
        )
        body = {"model": "fake-model", "stream": True, "max_tokens": 40,
                "messages": [{"role": "user", "content": "hello"}]}
        reply = service.http.request(
            "POST", f"{service.base_url}/v1/chat/completions", body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            preload_content=False, timeout=30,
        )
        assert reply.status == 200
        chunks = reply.stream(64)
        received = [next(chunks)]
        stopper = threading.Thread(target=service.stop, args=(signal.SIGTERM,))
        stopper.start()
        received.extend(chunks)
        stopper.join()
        text = b"".join(received).decode()
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
        assert service.process.returncode == 0
    finally:
        fake.stop()


def test_a_nodes_cut_body_closes_the_client_connection_under_gunicorn(start_service, redis_url):
    from tests.proxy.test_framing import SENT, ShortNode, request

    node = ShortNode()
    try:
        service = start_service(redis_url, NVLLM_PROBE_INTERVAL="0")
        token = service.login()
        service.api("POST", "/api/node/node/register", token=token,
                    body={"node_id": "short", "node_address": "127.0.0.1", "node_port": node.port,
                          "node_status": "online"})
        wait_for(lambda: service.request("GET", "/api/node/node/select", token=token).status == 200, 5,
                 "the node to be routable")
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            sock.sendall(request(token) * 2)  # pipelined: the second must not land in the first's body
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
        assert b"x" * SENT in body and not body.endswith(b"0\r\n\r\n") and b"HTTP/1.1" not in body
        assert service.request("GET", "/healthz").status == 200
        assert "Traceback" not in service.log()
    finally:
        node.close()

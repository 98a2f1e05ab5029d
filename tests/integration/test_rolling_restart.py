"""A stop that loses no request: what a balancer in front sees of an
instance being stopped, and bench/chaos.py's rolling restart of two
instances behind HAProxy under load."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import require_binary, wait_for
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

DELAY = 3.0


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, dict]:
    conn.request("GET", path)
    answer = conn.getresponse()
    body = answer.read()
    return answer.status, answer.getheader("Connection", ""), json.loads(body) if body else {}


def readiness(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        return get(conn, "/readyz")[0]
    except OSError:
        return 0
    finally:
        conn.close()


def test_a_stopping_instance_fails_readiness_and_still_answers_its_kept_alive_clients(start_service):
    service = start_service(NVLLM_SHUTDOWN_DELAY=str(DELAY))
    kept = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    assert get(kept, "/healthz")[:2] == (200, "keep-alive")

    service.process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_for(lambda: readiness(service.port) == 503, 2, "/readyz to answer 503")
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    status, connection, body = get(conn, "/readyz")
    assert (status, body["code"]) == (503, 503) and "shutting down" in body["error"], body
    # The client was told keep-alive before the stop: its next request on
    # that connection is answered, and told to go elsewhere after it.
    assert get(kept, "/healthz")[:2] == (200, "close")
    # New connections are still taken until the delay is over.
    fresh = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    assert get(fresh, "/healthz")[:2] == (200, "close")

    assert service.process.wait(DELAY + 15) == 0
    assert time.monotonic() - stopped_at >= DELAY
    assert readiness(service.port) == 0  # the listener is closed
    log = service.log()
    assert f"stopping: /readyz answers 503; the listener closes in {DELAY:g}s" in log
    assert "Traceback" not in log


def test_rolling_restart_behind_haproxy_fails_no_request():
    require_binary("redis-server")
    require_binary("redis-sentinel")
    require_binary("haproxy")
    result = subprocess.run([sys.executable, "bench/chaos.py", "rolling-restart"], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "rolling-restart" and row["sent"] > 50, row
    assert row["failed_before_first_byte"] == 0 and row["cut_streams"] == 0, row
    assert row["ok"] == row["sent"], row
    # HAProxy took each instance out on its /readyz answer, before its listener closed.
    assert "HAProxy took them out on: ['Layer7 wrong status, code: 503']" in row["notes"], row
    assert "exit codes [0, 0]" in row["notes"], row

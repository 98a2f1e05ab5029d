"""nvllm fuzzed from its own /openapi.json with schemathesis: a real server
(gunicorn, its embedded store) on a free port, with one fake vLLM node, and a
bounded number of examples per route, valid and invalid. Every answer must
match the description (status, media type, schema), be in the envelope (or
OpenAI's shape on /v1), never be a 5xx, and every 4xx must name what was wrong.

The model routes (/v1, and vLLM's own outside it) are fuzzed first: the /api fuzzing registers nodes at random
(loopback only, NVLLM_ALLOWED_NETWORKS) that would then take /v1 traffic."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import routes
from tests.helpers import ERROR_KEYS
from tests.integration.conftest import ROOT, Service, _wait_healthy, free_port, service_env, wait_for

pytestmark = pytest.mark.integration
fakevllm = pytest.importorskip("fakevllm")

EXAMPLES = 10  # per route and per mode (valid, invalid): about 30 s in all
# Not negative_data_rejection: the fuzzer's invalid query strings can lose
# their invalid part when sent (a key with no value), and then pass.
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
# The real server, with scrypt's cost turned down as in the unit tests: the
# fuzzer logs in and creates users hundreds of times.
LAUNCH = """
import os, sys
from config import Settings
from main import serving_app
from server.http import serve
settings = Settings.from_env(os.environ).replace(host="127.0.0.1", port=int(sys.argv[1]), password_hash_n=2**4)
sys.exit(serve(settings, serving_app))
"""
FAKE_NODE = "fake-1"
# Texts that would not tell a client what was wrong.
GENERIC = {"bad request", "not found", "forbidden", "conflict", "unauthorized", "error"}
# A 400's text names a field ("node_port: must be ..."), the path, or the body.
NAMED = re.compile(r"^.+: \S|^request body")


class Live:
    def __init__(self, service: Service, token: str) -> None:
        self.service = service
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    fake = fakevllm.FakeVLLM(["fake-model"], step_time=0.001, max_model_len=512, default_max_tokens=4).start()
    port = free_port()
    env = service_env(tmp / "data", None, {"NVLLM_ALLOWED_NETWORKS": "127.0.0.0/8", "NVLLM_LOG_LEVEL": "WARNING"})
    log_path = tmp / "nvllm.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([sys.executable, "-c", LAUNCH, str(port)], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    service = Service(process, port, Path(tmp / "data"), log_path, env)
    try:
        _wait_healthy(service)
        token = service.login()
        # models [] serves any model, so the fuzzed bodies reach the node.
        node = {"node_id": FAKE_NODE, "node_address": "127.0.0.1", "node_port": fake.port,
                "node_status": "online", "models": [], "timeout": 3600}
        service.api("POST", "/api/node/node/register", token=token, body=node)
        wait_for(lambda: service.request("GET", "/api/node/node/select", token=token).status == 200,
                 10, "the fake node to become routable")
        yield Live(service, token)
    finally:
        code = service.stop()
        fake.stop()
        log = log_path.read_text(encoding="utf-8", errors="replace")
        assert code == 0, log[-3000:]
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def operations(live: Live) -> dict[str, Any]:
    """The described operations, by label ("GET /healthz")."""
    loaded = schemathesis.openapi.from_url(live.service.base_url + "/openapi.json")
    found = {}
    for result in loaded.get_all_operations():
        operation = result.ok()
        found[operation.label] = operation
    return found


def fuzz(live: Live, operation: Any, mode: GenerationMode) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=live.headers, checks=CHECKS, timeout=30)
        check_answer(case, response)
        if case.path.startswith("/api/node/node/") and case.method in ("POST", "PUT", "DELETE"):
            restore_fleet(live)

    try:
        run()
    except Unsatisfiable:
        # A route with no parameter, body or token has no invalid request to make.
        assert mode is GenerationMode.NEGATIVE, operation.label


def header(response: Any, name: str) -> str:
    return ", ".join(response.headers.get(name.lower(), []))


def check_answer(case: Any, response: Any) -> None:
    """What the description cannot say: the envelope, no 5xx, errors that name the problem."""
    status, path = response.status_code, case.path
    label = f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}"
    model_route = routes.is_forwarded(path)  # the OpenAI-compatible surface, /v1 and vLLM's routes outside it
    forwarded = bool(header(response, "X-NVLLM-Node"))  # a node's own answer, passed on as it came
    if model_route and forwarded:
        assert status < 500, label
        return
    media = header(response, "Content-Type")
    body = response.json() if "json" in media else None
    trace_id = header(response, "X-Trace-ID")
    if status < 400:
        if path.startswith("/api/"):
            assert list(body) == ["message", "status", "code", "data", "trace_id"], label
            assert body["code"] == status and body["trace_id"] == trace_id, label
        return
    assert isinstance(body, dict), f"{label} ({media})"
    if routes.is_anthropic(path):
        text = body["error"]["message"]
        assert body["type"] == "error" and body["error"]["type"], label
    elif model_route:
        text = body["error"]["message"]
        assert body["error"]["code"] == status, label
    else:
        assert list(body) == ERROR_KEYS and body["code"] == status, label
        assert body["trace_id"] == trace_id, label
        text = body["error"]
    # 503 "no routable node for model 'x'" is the documented answer for a model
    # no node serves: it names the model. Any other 5xx is a bug.
    assert status < 500 or (status == 503 and text.startswith("no routable node")), label
    assert text.strip() and text.lower() not in GENERIC and "Traceback" not in text, label
    if status == 400:
        assert NAMED.match(text), label


def restore_fleet(live: Live) -> None:
    """Node writes are undone after each example, so the fleet stays the fake node."""
    nodes = live.service.api("GET", "/api/node/node/all", token=live.token)
    for node in nodes:
        if node["node_id"] != FAKE_NODE:
            live.service.api("DELETE", f"/api/node/node/delete/{node['node_id']}", token=live.token)


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def test_fuzz_openai_routes(live, operations):
    v1 = [label for label in operations if routes.is_forwarded(label.split(" ", 1)[1])]
    assert v1
    for label in sorted(v1):
        for mode in MODES:
            fuzz(live, operations[label], mode)


def test_fuzz_routes(live, operations):
    others = [label for label in operations if not routes.is_forwarded(label.split(" ", 1)[1])]
    assert len(others) > 15
    for label in sorted(others):
        for mode in MODES:
            fuzz(live, operations[label], mode)

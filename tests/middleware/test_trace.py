"""Trace ids: accepted or made, echoed in header and body, and in every log line."""

from __future__ import annotations

import json
import logging
import re

import pytest

from middleware.logs import init_logging
from tests.helpers import error_text, ok_data

GENERATED = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")


@pytest.fixture
def logs(capsys):
    """install(as_json): the app's own log handler, writing to the captured
    stderr, for one test and removed after. Installed from inside the test,
    where capsys's stream is the one the test reads."""
    root = logging.getLogger()
    level = root.level

    def install(as_json: bool = False):
        init_logging("INFO", as_json)
        return capsys

    yield install
    for handler in [h for h in root.handlers if getattr(h, "_nvllm", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("trace_id", ["abc", "a" * 128, "A.b_c-9", "0", "-", "..."])
def test_a_valid_trace_id_is_echoed_on_success(client, auth_headers, trace_id):
    response = client.get("/api/node/node/all", headers={**auth_headers("user"), "X-Trace-ID": trace_id})
    ok_data(response)
    assert response.headers["X-Trace-ID"] == trace_id
    assert response.get_json()["trace_id"] == trace_id


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("get", "/api/node/node/get_node/node-404", 404),
        ("get", "/api/node/node/all", 401),
        ("post", "/api/node/node/all", 405),
        ("get", "/api/nope", 404),
        ("post", "/api/user/login", 400),
    ],
)
def test_a_valid_trace_id_is_echoed_on_errors(client, auth_headers, method, path, code):
    headers = {"X-Trace-ID": "trace-err"}
    if code == 404 and "node-404" in path:
        headers.update(auth_headers("user"))
    response = getattr(client, method)(path, headers=headers, data=b"{")
    error_text(response, code)
    assert response.headers["X-Trace-ID"] == "trace-err"
    assert response.get_json()["trace_id"] == "trace-err"


def test_a_trace_id_is_echoed_by_the_probes(client):
    assert client.get("/healthz", headers={"X-Trace-ID": "probe-1"}).headers["X-Trace-ID"] == "probe-1"


@pytest.mark.parametrize(
    "offered",
    ["a" * 129, "has space", "semi;colon", "new\nline", "trail\n", "ünï", "a/b", "<script>", ""],
    ids=repr,
)
def test_an_invalid_trace_id_is_replaced(client, offered):
    environ = {"HTTP_X_TRACE_ID": offered}  # raw, so werkzeug does not refuse the newline
    response = client.get("/api/nope", environ_base=environ)
    echoed = response.headers["X-Trace-ID"]
    assert echoed != offered and GENERATED.match(echoed)
    assert response.get_json()["trace_id"] == echoed


def test_each_request_gets_its_own_trace_id(client):
    ids = {client.get("/api/nope").headers["X-Trace-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_log_lines_carry_the_trace_id(client, auth_headers, logs, caplog):
    capsys = logs()
    headers = {**auth_headers("user"), "X-Trace-ID": "trace-log-1"}
    caplog.clear()
    ok_data(client.get("/api/node/node/all", headers=headers))
    assert caplog.records
    assert {getattr(r, "trace_id", None) for r in caplog.records} == {"trace-log-1"}
    [access] = [r for r in caplog.records if r.name == "nvllm.access"]
    assert "GET /api/node/node/all 200" in access.getMessage()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "trace-log-1" in line]
    assert len(lines) == 1 and "[trace-log-1]" in lines[0]


def test_an_unexpected_error_is_logged_with_the_trace_id(client, auth_headers, logs, caplog, monkeypatch):
    from service import node as nodes

    def explode(*args, **kwargs):
        raise RuntimeError("details for the log only")

    monkeypatch.setattr(nodes, "list_nodes", explode)
    headers = {**auth_headers("user"), "X-Trace-ID": "trace-500"}
    capsys = logs()
    response = client.get("/api/node/node/all", headers=headers)
    assert "details" not in error_text(response, 500)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.trace_id == "trace-500"
    err = capsys.readouterr().err
    assert "[trace-500]" in err and "Traceback" in err and "details for the log only" in err


def test_json_logs_carry_the_trace_id(client, logs):
    capsys = logs(as_json=True)
    client.get("/api/nope", headers={"X-Trace-ID": "trace-json"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [entry] = [e for e in lines if e["trace_id"] == "trace-json"]
    assert entry["status"] == 404 and entry["path"] == "/api/nope"


def test_outside_a_request_the_trace_id_is_a_dash():
    from middleware.trace import current_trace_id

    assert current_trace_id() == "-"

"""Small assertions shared by the unit tests."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

# 2024-01-01T00:00:00 UTC, the time the seed's examples show.
START = 1704067200.0
ADMIN_PASSWORD = "admin-password-for-tests"  # the bootstrap admin's
PASSWORD = "password-for-tests"  # every other test user's

ENVELOPE_KEYS = ["message", "status", "code", "data", "trace_id"]
ERROR_KEYS = ["message", "status", "code", "error", "trace_id"]
TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\Z")


def ok_data(response) -> Any:
    """The `data` of a success envelope, after checking the envelope itself."""
    body = response.get_json()
    assert response.status_code == 200, body
    assert list(body) == ENVELOPE_KEYS
    assert body["message"] == "success" and body["status"] == "success" and body["code"] == 200
    assert body["trace_id"] == response.headers["X-Trace-ID"]
    return body["data"]


def error_text(response, code: int) -> str:
    """The `error` text of an error envelope whose code and HTTP status are `code`."""
    body = response.get_json()
    assert response.status_code == code, body
    assert list(body) == ERROR_KEYS, body
    assert body["message"] == "error" and body["status"] == "error" and body["code"] == code
    assert body["trace_id"] == response.headers["X-Trace-ID"]
    assert "Traceback" not in body["error"]
    return body["error"]


# Routes anyone may call. Every other route must refuse a request with no token.
PUBLIC_PATHS = {"/api/user/login", "/healthz", "/readyz", "/metrics", "/openapi.json", "/"}
PUBLIC_PREFIXES = ("/static", "/dashboard", "/docs")


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route, path parameters filled in."""
    from config import Settings
    from main import create_app

    settings = Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4)
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    app = create_app(settings, redis_client=redis, clock=lambda: START)
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "node-001", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return sorted(routes)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; return its value or fail naming `what`."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# The seed's requests, verbatim.
SEED_REGISTER = {
    "node_id": "node-001",
    "node_type": "worker",
    "node_address": "192.168.1.100",
    "node_port": 8000,
    "node_status": "online",
    "node_info": {"running": 0, "waiting": 0, "kv_cache": 0},
    "remark": "GPU节点1",
    "timeout": 60,
}
SEED_UPDATE = {
    "node_type": "worker",
    "node_address": "192.168.1.100",
    "node_port": 8001,
    "node_status": "online",
    "node_info": {"running": 2, "waiting": 1, "kv_cache": 1024},
    "remark": "GPU节点1-更新",
    "timeout": 120,
}


def require_binary(name: str) -> str:
    """The path of a system program a test needs. Locally a missing one skips
    the test; in CI (CI=true) it fails it, so a test never passes by not running."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is not installed: run `make system-deps` (.ci/system-packages.txt)")
    pytest.skip(f"{name} is not installed (make system-deps)")

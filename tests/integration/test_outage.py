"""With its Redis gone the service answers 503 with Retry-After, fast and
without a traceback; when Redis comes back it recovers without a restart."""

from __future__ import annotations

import time

import pytest

from server.store import run_embedded
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

# The longest a client may wait for its 503 while Redis is down.
ANSWER_WITHIN = 5.0


@pytest.fixture
def own_store(tmp_path):
    """A store of this test's own: it gets killed."""
    with run_embedded(tmp_path / "store") as store:
        yield store


def test_store_down_gives_503_then_recovers(start_service, own_store):
    service = start_service(own_store.url)
    token = service.login()
    node = {"node_id": "node-001", "node_status": "online", "timeout": 3600, "remark": "GPU节点1"}
    service.api("POST", "/api/node/node/register", token=token, body=node)

    own_store.process.kill()
    own_store.process.wait()

    requests = [
        ("GET", "/api/node/node/all", None),
        ("GET", "/api/node/node/get_node/node-001", None),
        ("PUT", "/api/node/node/update/node-001", {"node_info": {"running": 1}}),
        ("POST", "/api/node/node/register", {"node_id": "node-002"}),
        ("POST", "/api/user/login", {"username": "admin", "password": "whatever-it-is"}),
        ("GET", "/readyz", None),
    ]
    for method, path, body in requests:
        started = time.monotonic()
        answer = service.request(method, path, token=token, body=body, timeout=ANSWER_WITHIN + 5)
        elapsed = time.monotonic() - started
        assert answer.status == 503, (path, answer.status, answer.text)
        assert elapsed < ANSWER_WITHIN, (path, elapsed)
        assert int(answer.headers["Retry-After"]) >= 1
        assert "Traceback" not in answer.text and "redis" not in answer.text.lower()
        if path.startswith("/api/"):
            assert answer.json["code"] == 503 and answer.json["status"] == "error"
    assert service.request("GET", "/healthz").status == 200

    own_store.start(port=own_store.port, password=own_store.password)

    def recovered() -> bool:
        return service.request("GET", "/api/node/node/get_node/node-001", token=token).status == 200

    wait_for(recovered, 10, "the service to recover once the store is back")
    assert service.alive()
    assert service.request("GET", "/readyz").status == 200
    data = service.request("GET", "/api/node/node/get_node/node-001", token=token).data
    assert data["remark"] == "GPU节点1"
    assert "Traceback" not in service.log()

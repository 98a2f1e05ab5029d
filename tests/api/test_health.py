"""/metrics: open by default as scrapers expect, or limited to networks or to
token holders; and a node's series leave with the node."""

from __future__ import annotations

import time

import pytest

from main import create_app
from model.node import Node, NodeStatus


def test_metrics_are_open_by_default(client):
    answer = client.get("/metrics")
    assert answer.status_code == 200 and b"nvllm_storage_up" in answer.data


@pytest.mark.parametrize(("allow", "remote", "status"), [
    (("10.0.0.0/8",), "10.1.2.3", 200),
    (("10.0.0.0/8",), "192.168.1.1", 403),
    (("10.0.0.0/8", "127.0.0.1/32"), "127.0.0.1", 200),
    (("fd00::/8",), "fd00::1", 200),
    (("127.0.0.0/8",), "::ffff:127.0.0.1", 200),
])
def test_metrics_can_be_limited_to_networks(settings, redis, clock, allow, remote, status):
    app = create_app(settings.replace(metrics_allow=allow), redis_client=redis, clock=clock)
    answer = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": remote})
    assert answer.status_code == status
    if status == 403:
        assert "NVLLM_METRICS_ALLOW" in answer.json["error"] and b"nvllm_" not in answer.data


def test_metrics_can_require_a_token_of_any_role(settings, redis, clock):
    from service.user import create_user

    app = create_app(settings.replace(metrics_token=True), redis_client=redis, clock=clock)
    stores = app.extensions["nvllm"]
    user = create_user(stores.users, {"username": "scraper", "password": "scraper-password", "role": "user"},
                       now=time.time(), hash_n=2**4)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    token = stores.tokens.issue(user, 3600)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_purged_nodes_series_disappear(app, stores, client):
    now = time.time()
    node = Node("gpu-host-7.internal", node_address="127.0.0.1", node_port=1, node_status=NodeStatus.ONLINE,
                create_time=now, update_time=now)
    stores.nodes.save(node)
    fleet = app.extensions["nvllm"].proxy.fleet
    fleet.refresh()
    app.extensions["nvllm"].metrics.observe_upstream({"node": node.node_id, "outcome": "ok"})
    assert b'nvllm_upstream_requests_total{node="gpu-host-7.internal",outcome="ok"} 1.0' in client.get(
        "/metrics").data
    stores.nodes.delete(node.node_id)
    fleet.refresh()
    assert b"gpu-host-7.internal" not in client.get("/metrics").data

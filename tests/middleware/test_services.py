"""The app's one registry: every part a view or the server needs, typed, in
app.extensions["nvllm"] and nowhere else."""

from __future__ import annotations

from dao.node import NodeStore
from middleware.services import Services, app_services, services
from service.metrics import BalancerMetrics
from service.netpolicy import NetworkPolicy
from service.proxy import Proxy, UserSlots
from service.token import TokenService


def test_the_factory_registers_every_part_once(app, redis):
    built = app_services(app)
    assert isinstance(built, Services)
    assert [name for name in app.extensions if name.startswith("nvllm") or name == "redis"] == ["nvllm"]
    assert built.redis is redis and isinstance(built.nodes, NodeStore) and isinstance(built.tokens, TokenService)
    assert isinstance(built.proxy, Proxy) and isinstance(built.metrics, BalancerMetrics)
    assert isinstance(built.netpolicy, NetworkPolicy) and isinstance(built.user_slots, UserSlots)
    assert built.proxy.fleet.netpolicy is built.netpolicy
    assert built.prober is None  # polling starts with the background work, which tests leave off


def test_views_reach_the_same_registry(app):
    with app.test_request_context("/"):
        assert services() is app_services(app)


def test_readyz_asks_the_store(client, server):
    assert client.get("/readyz").status_code == 200
    server.connected = False
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.headers["Retry-After"]


def test_readyz_answers_503_once_the_server_began_to_stop(app, client):
    assert client.get("/readyz").status_code == 200
    app_services(app).lifecycle.drain()  # what the server's worker does on SIGTERM
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert "shutting down" in answer.get_json()["error"]
    assert client.get("/healthz").status_code == 200  # the process is still up

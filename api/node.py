"""Node routes, at the seed's paths under /api/node/node/."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from api import json_body, ok
from middleware.auth import require_role
from middleware.services import services
from model.node import NODE_FILTERS, SELECT_QUERY, Actor, NodeLimits
from model.user import Role
from service import node as nodes
from service.netpolicy import NetworkPolicy
from service.routing import RouteRequest

bp = Blueprint("node", __name__, url_prefix="/api/node/node")


def _now() -> float:
    return services().clock()


def _retention() -> int:
    return current_app.config["NVLLM"].node_retention


def _actor() -> Actor:
    return Actor(g.user.username, admin=g.user.role is Role.ADMIN)


def _netpolicy() -> NetworkPolicy:
    return services().netpolicy


def _limits() -> NodeLimits:
    settings = current_app.config["NVLLM"]
    return NodeLimits(settings.max_nodes, settings.max_nodes_per_account)


def _sees_addresses() -> bool:
    """Addresses and ports are for the roles that run nodes, not for users."""
    return g.user.role in (Role.ADMIN, Role.WORKER)


@bp.post("/register")
@require_role("worker")
def register() -> Response:
    node = nodes.register(
        services().nodes, json_body(), now=_now(), actor=_actor(), netpolicy=_netpolicy(),
        limits=_limits(), retention=_retention(),
    )
    return ok(node.to_dict(_now()))


@bp.put("/update/<node_id>")
@require_role("worker")
def update(node_id: str) -> Response:
    now = _now()
    node = nodes.update(
        services().nodes, node_id, json_body(), now=now, actor=_actor(), netpolicy=_netpolicy(),
        retention=_retention(),
    )
    return ok(node.to_dict(now))


@bp.delete("/delete/<node_id>")
@require_role("worker")
def delete(node_id: str) -> Response:
    nodes.delete(services().nodes, node_id, actor=_actor())
    return ok({"node_id": node_id, "deleted": True})


@bp.get("/get_node/<node_id>")
@require_role("user")
def get_node(node_id: str) -> Response:
    now = _now()
    node = nodes.get(services().nodes, node_id, now=now, retention=_retention())
    return ok(node.to_dict(now, include_address=_sees_addresses()))


@bp.get("/status/<node_id>")
@require_role("user")
def status(node_id: str) -> Response:
    stores = services()
    failing = stores.proxy.fleet.is_failing(node_id)
    data = nodes.status(
        stores.nodes, stores.inflight, node_id, now=_now(), retention=_retention(), failing=failing,
        include_address=_sees_addresses(), include_owner=g.user.role is Role.ADMIN,
    )
    return ok(data)


@bp.get("/select")
@require_role("user")
def select() -> Response:
    """The node the balancer would pick now for ?model= (503 when none)."""
    query = SELECT_QUERY.check(None, request.args.to_dict())
    model = query.get("model") or None
    # An alias selects as the model it stands for, as on /v1.
    model = services().aliases.resolve(model) or model
    decision = services().proxy.select(RouteRequest(model=model))
    data = decision.state.node.to_dict(_now(), include_address=_sees_addresses())
    if _sees_addresses():
        data["url"] = decision.state.node.url
    data["reason"] = decision.reason
    return ok(data)


@bp.get("/all")
@require_role("user")
def all_nodes() -> Response:
    query = NODE_FILTERS.check(None, request.args.to_dict())
    now = _now()
    found = nodes.list_nodes(
        services().nodes,
        now=now,
        retention=_retention(),
        status=query.get("status"),
        model=query.get("model") or None,
        node_type=query.get("type") or None,
    )
    addresses = _sees_addresses()
    return ok([n.to_dict(now, include_address=addresses) for n in found])

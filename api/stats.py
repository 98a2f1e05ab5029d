"""The fleet's live state and request statistics, for the dashboard."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g

from api import ok
from middleware.auth import require_role
from middleware.services import services
from model.user import Role
from service import node as nodes
from service import stats

bp = Blueprint("stats", __name__, url_prefix="/api/node")


@bp.get("/stats")
@require_role("user")
def fleet_stats() -> Response:
    """Every node with its live state and the last minute's request statistics,
    every model and alias, fleet totals. Read from Redis, so every worker and
    instance answers the same (aliases: this instance's copy, at most
    NVLLM_FLEET_REFRESH old). The user role sees no node addresses, and of
    the aliases only those GET /v1/models lists."""
    parts = services()
    now = parts.clock()
    found = nodes.list_nodes(parts.nodes, now=now, retention=current_app.config["NVLLM"].node_retention)
    operator = g.user.role in (Role.ADMIN, Role.WORKER)
    return ok(stats.snapshot(
        found, parts.stats_store, parts.inflight, now=now, include_address=operator,
        aliases=parts.aliases.aliases().values(), include_hidden=operator,
    ))

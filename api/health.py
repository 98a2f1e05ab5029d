"""Probes for orchestrators; no token needed."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from dao.errors import UNREACHABLE
from middleware.redis_client import get_redis
from model.errors import StorageUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis answers; 503 otherwise."""
    try:
        get_redis().ping()
    except UNREACHABLE as exc:
        raise StorageUnavailable(retry_after=2) from exc
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of this nvllm process (not of the nodes)."""
    body = current_app.extensions["nvllm.metrics"].render()
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")

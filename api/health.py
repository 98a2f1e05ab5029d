"""Probes for orchestrators; no token needed."""

from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, current_app, jsonify, request

from middleware.auth import authenticate
from middleware.services import services
from model.errors import Forbidden, Unavailable
from model.user import Role

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Redis answers and the instance is not stopping; 503 otherwise."""
    if services().lifecycle.draining:
        raise Unavailable("shutting down: send new requests to another instance")
    services().storage.ping()
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of this nvllm process (not of the nodes). Open unless
    NVLLM_METRICS_ALLOW lists networks or NVLLM_METRICS_TOKEN asks for a token."""
    settings = current_app.config["NVLLM"]
    if settings.metrics_allow and not _in_networks(request.remote_addr, settings.metrics_allow):
        raise Forbidden("/metrics is not open to this address (NVLLM_METRICS_ALLOW)")
    if settings.metrics_token:
        authenticate(Role.USER)
    body = services().metrics.render()
    return Response(body, mimetype="text/plain; version=0.0.4; charset=utf-8")


def _in_networks(address: str | None, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net) for net in networks)

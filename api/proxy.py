"""The OpenAI-compatible /v1 routes, forwarded to the fleet."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from middleware.auth import require_role
from middleware.trace import current_trace_id, log_request
from model.errors import BadRequest, UpstreamFailed
from service.balancer import route_request
from service.proxy import NodeFailed, Proxy

bp = Blueprint("proxy", __name__, url_prefix="/v1")


def get_proxy() -> Proxy:
    return current_app.extensions["nvllm.proxy"]


@bp.get("/models")
@require_role("user")
def models() -> Response:
    """The union of the models of routable nodes, in OpenAI's list shape."""
    names = sorted({m for s in get_proxy().fleet.routable() for m in s.node.models})
    created = int(time.time())
    return jsonify(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": created, "owned_by": "nvllm"} for m in names],
        }
    )


@bp.post("/<path:subpath>")
@require_role("user")
def forward(subpath: str) -> Response:
    started = time.perf_counter()
    body = request.get_data(cache=False)
    try:
        payload = json.loads(body) if body else {}
    # RecursionError: nesting deep enough to exhaust the parser, e.g. "[[[[...".
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body must be valid JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    proxy = get_proxy()
    try:
        answer = proxy.forward(
            "/v1/" + subpath,
            body,
            route_request(payload),
            dict(request.headers),
            stream=payload.get("stream") is True,
            trace_id=current_trace_id(),
        )
    except NodeFailed as exc:
        raise UpstreamFailed(exc.attempts, exc.cause) from None

    def relay():
        try:
            yield from answer.body
        finally:
            log_request(answer.status, (time.perf_counter() - started) * 1000,
                        node=answer.node_id, attempts=answer.attempts)

    response = Response(
        stream_with_context(relay()), status=answer.status, headers=answer.headers, direct_passthrough=True
    )
    response.headers["X-NVLLM-Node"] = answer.node_id
    response.headers["X-NVLLM-Route"] = answer.reason
    return response

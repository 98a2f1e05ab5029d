"""The OpenAI-compatible /v1 routes, forwarded to the fleet."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from flask import (
    Blueprint,
    Response,
    g,
    jsonify,
    request,
    stream_with_context,
)
from werkzeug.exceptions import ClientDisconnected

from middleware.auth import require_role
from middleware.services import services
from middleware.trace import add_log_fields, current_trace_id, log_request
from model.errors import BadRequest, UpstreamFailed
from service.adapters import model_cards
from service.alias import AliasBook, with_model
from service.paths import checked_path, checked_query
from service.proxy import BodyCut, NodeFailed, Proxy, UserSlots
from service.routing import route_request

bp = Blueprint("proxy", __name__, url_prefix="/v1")


def get_proxy() -> Proxy:
    return services().proxy


def get_slots() -> UserSlots:
    return services().user_slots


def get_aliases() -> AliasBook:
    return services().aliases


@bp.get("/models")
@require_role("user")
def models() -> Response:
    """The union of the models and adapters of routable nodes, plus listed
    aliases, in OpenAI's list shape with vLLM's lineage (`root`, `parent`)."""
    cards = model_cards(get_proxy().fleet.routable(), get_aliases().aliases(), int(time.time()))
    return jsonify({"object": "list", "data": cards})


# merge_slashes off: werkzeug would otherwise redirect `//` away before the
# path check sees it.
@bp.post("/<path:subpath>", merge_slashes=False)
@require_role("user")
def forward(subpath: str) -> Response:
    started = time.perf_counter()
    path = checked_path(request.path, request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"))
    query = checked_query(request.query_string.decode("latin-1"))
    slot = get_slots().acquire(g.user.username)
    counted = services().metrics.track_in_flight()

    def release() -> None:
        slot.release()
        counted()

    try:
        response = _forward(path + (f"?{query}" if query else ""), started, release)
    except BaseException:
        release()
        raise
    return response


def _forward(path: str, started: float, release: Callable[[], None]) -> Response:
    body = _read_body()
    try:
        payload = json.loads(body) if body else {}
    # RecursionError: nesting deep enough to exhaust the parser, e.g. "[[[[...".
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body must be valid JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    served = get_aliases().resolve(payload.get("model"))
    if served is not None:
        payload["model"] = served
        body = with_model(payload, served)
    model = payload.get("model")  # as sent to the node: an alias resolved
    add_log_fields(model=model[:256] if isinstance(model, str) else None)
    proxy = get_proxy()
    try:
        answer = proxy.forward(
            path,
            body,
            route_request(payload, request.headers.get("X-Session-ID")),
            dict(request.headers),
            stream=payload.get("stream") is True,
            trace_id=current_trace_id(),
        )
    except NodeFailed as exc:
        raise UpstreamFailed(exc.attempts, exc.cause) from None

    def relay():
        try:
            yield from answer.body
        except BodyCut:
            _close_client_connection()
        finally:
            release()
            report = answer.report or {}
            log_request(answer.status, (time.perf_counter() - started) * 1000, node=answer.node_id,
                        attempts=answer.attempts, ttft=report.get("ttft"), output_tokens=report.get("output_tokens"))

    response = Response(
        stream_with_context(relay()), status=answer.status, headers=answer.headers, direct_passthrough=True
    )
    response.headers["X-NVLLM-Node"] = answer.node_id
    response.headers["X-NVLLM-Route"] = answer.reason
    return response


def _read_body() -> bytes:
    """The whole request body. The server cuts a client that sends it too
    slowly (NVLLM_BODY_TIMEOUT), which reads here as a body that ended early."""
    incomplete = BadRequest("request body: not received in full (incomplete, or sent too slowly)")
    try:
        body = request.get_data(cache=False)
    except (ClientDisconnected, OSError):
        raise incomplete from None
    # gunicorn ends a cut body without an error; its length tells.
    if request.content_length is not None and len(body) < request.content_length:
        raise incomplete
    return body


def _close_client_connection() -> None:
    """The node's answer ended early after bytes reached the client: close the
    client's connection rather than end the body cleanly, so the client sees
    a cut answer, never a short one that looks whole."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        raise BodyCut()  # any WSGI server drops the connection of an app failing mid-body
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

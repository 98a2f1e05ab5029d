"""The model routes (OpenAI-compatible /v1, Anthropic's /v1/messages, vLLM's own
tokenize, rerank, score, ...), forwarded to the fleet as service/routes.py lists them."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace

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
from service.alias import AliasBook, with_served_model
from service.paths import checked_path, checked_query
from service.proxy import BodyCut, NodeFailed, Proxy, UserSlots
from service.responses import ResponseAffinity
from service.routes import PASSTHROUGH_METHODS, root_paths
from service.shape import shape_request

bp = Blueprint("proxy", __name__, url_prefix="/v1")


def get_proxy() -> Proxy:
    return services().proxy


def get_slots() -> UserSlots:
    return services().user_slots


def get_affinity() -> ResponseAffinity:
    return services().affinity


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
# path check sees it. Which path takes which method is service/routes.py's
# to say (405 with Allow), so every method reaches the view.
@bp.route("/<path:subpath>", methods=sorted(PASSTHROUGH_METHODS), merge_slashes=False)
@require_role("user", api_key_header=True)
def forward(subpath: str) -> Response:
    """Any other path under /v1, with any of these methods, passes through to a
    routable node (the body's `model` picks the nodes when it is JSON); a path
    under /v1/responses/{id}/ goes to the node holding that response. vLLM's
    control endpoints (/v1/load_lora_adapter, ...) are refused with a 403."""
    return _proxy_view()


@require_role("user", api_key_header=True)
def _root_route() -> Response:
    """One of vLLM's own model routes outside /v1, forwarded as the /v1 routes
    are: routed by the body's model and load. The token may come in
    x-api-key too; neither header reaches the node."""
    return _proxy_view()


# vLLM's routes outside /v1 (tokenize, rerank, score, ...), one rule each.
root_bp = Blueprint("proxy_root", __name__)
for _path, _methods in root_paths():
    root_bp.add_url_rule(_path, endpoint=_path.strip("/").replace("/", "_"), methods=sorted(_methods),
                         merge_slashes=False, view_func=_root_route)


def _proxy_view() -> Response:
    started = time.perf_counter()
    path = checked_path(request.path, request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI"))
    query = checked_query(request.query_string.decode("latin-1"))
    slot = get_slots().acquire(g.user.username)
    counted = services().metrics.track_in_flight()

    def release() -> None:
        slot.release()
        counted()

    try:
        response = _forward(path, query, started, release)
    except BaseException:
        release()
        raise
    return response


def _forward(path: str, query: str, started: float, release: Callable[[], None]) -> Response:
    shaped = shape_request(request.method, path, query, request.content_type, _read_body(), request.headers)
    route, body = shaped.route, shaped.body
    # An alias is routed as the model it stands for, and the node gets that name
    # (a JSON body re-encoded, an upload's form field rewritten in place).
    served = get_aliases().resolve(shaped.fields.get("model"))
    if served is not None:
        body = with_served_model(shaped, served)
        if route.model is not None:  # None: pinned to a stored response's node, whatever it serves
            route = replace(route, model=served)
    model = served or shaped.fields.get("model")  # as sent to the node: an alias resolved
    add_log_fields(model=model[:256] if isinstance(model, str) else None)
    proxy = get_proxy()
    affinity = get_affinity()
    if shaped.response_id is not None:
        route = replace(route, pinned_node=affinity.node_for(shaped.response_id, proxy.fleet, services().clock()))
    try:
        answer = proxy.forward(
            shaped.target,
            body,
            route,
            dict(request.headers),
            stream=shaped.stream,
            trace_id=current_trace_id(),
            method=shaped.method,
            tokens=(shaped.token_event, shaped.first_token_event),
        )
    except NodeFailed as exc:
        raise UpstreamFailed(exc.attempts, exc.cause) from None
    answer_body = answer.body
    if shaped.creates_response and answer.status == 200:
        answer_body = affinity.tap(answer_body, answer.node_id, shaped.stream)

    def relay():
        try:
            yield from answer_body
        except BodyCut:
            _close_client_connection()
        finally:
            # The tap may stop early (client gone): the node's answer must close too.
            answer.body.close()
            release()
            report = answer.report or {}
            log_request(answer.status, (time.perf_counter() - started) * 1000, node=answer.node_id,
                        attempts=answer.attempts, ttft=report.get("ttft"), output_tokens=report.get("output_tokens"))

    response = Response(
        stream_with_context(relay()), status=answer.status, headers=answer.headers, direct_passthrough=True
    )
    response.headers["X-NVLLM-Node"] = answer.node_id
    pinned = f"pinned:{shaped.response_id} " if shaped.response_id else ""
    response.headers["X-NVLLM-Route"] = pinned + answer.reason
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

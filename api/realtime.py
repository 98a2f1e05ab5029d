"""GET /v1/realtime: the realtime WebSocket, passed through to a node serving
the model named in the query string (`?model=`)."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, urlencode

from flask import Blueprint, Response, g, request

from api.proxy import get_aliases, get_proxy, get_slots
from middleware.auth import require_role
from middleware.trace import current_trace_id
from model.errors import BadRequest, NvllmError, UpstreamFailed
from service import realtime
from service.paths import checked_query
from service.proxy import NodeFailed

bp = Blueprint("realtime", __name__)
log = logging.getLogger("nvllm.realtime")


class UpgradeRequired(NvllmError):
    code = 426
    message = "this route speaks WebSocket only: send an Upgrade: websocket request"

    @property
    def headers(self) -> dict[str, str]:
        return {"Upgrade": "websocket", "Connection": "Upgrade"}


class NotSupportedHere(NvllmError):
    code = 501
    message = "WebSocket needs nvllm's own server (python main.py)"


class Upgraded(Response):
    """Stands for a connection the view has already answered and relayed:
    the server must write nothing more on it, only close it. gunicorn closes a
    connection on StopIteration, werkzeug's server on a ConnectionError."""

    def __call__(self, environ, start_response):  # type: ignore[override]
        if "gunicorn.socket" in environ:
            raise StopIteration()
        raise ConnectionError("WebSocket session over")


@bp.get("/v1/realtime")
@require_role("user")
def plain_request() -> Response:
    raise UpgradeRequired()


# websocket=True: werkzeug matches an Upgrade: websocket request only to such a rule.
@bp.get("/v1/realtime", websocket=True)
@require_role("user")
def realtime_session() -> Response:
    started = time.perf_counter()
    headers = {k.lower(): v for k, v in request.headers.items()}
    if headers.get("sec-websocket-version") != "13" or not headers.get("sec-websocket-key"):
        raise BadRequest("a WebSocket handshake needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key")
    client = _client_socket()
    query, model = _query()
    slot = get_slots().acquire(g.user.username)
    proxy = get_proxy()
    try:
        try:
            session = realtime.open_session(proxy, model, query, headers, current_trace_id())
        except NodeFailed as exc:
            raise UpstreamFailed(exc.attempts, exc.cause) from None
        except realtime.HandshakeRefused as exc:
            error = NvllmError(f"the node refused the WebSocket upgrade (HTTP {exc.status})")
            error.code = exc.status
            raise error from None
        try:
            extra = {"X-NVLLM-Node": session.state.node_id, "X-NVLLM-Route": session.reason,
                     "X-Trace-ID": current_trace_id()}
            client.sendall(session.client_head(realtime.accept_key(headers["sec-websocket-key"]), extra))
            closed_by = realtime.relay(client, session)
        finally:
            realtime.finish(proxy, session)
    finally:
        slot.release()
    log.info("realtime session on %s closed by the %s after %.1fs",
                             session.state.node_id, closed_by, time.perf_counter() - started)
    return Upgraded(status=101)


def _client_socket():
    """The client's connection, to relay on after the handshake. The
    production server wraps it with request deadlines, which must not cut a
    session: `upgraded()` hands over the bare socket."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        raise NotSupportedHere()
    return sock.upgraded() if hasattr(sock, "upgraded") else sock


def _query() -> tuple[str, str | None]:
    """The query string for the node (with an alias resolved to its model), and the model."""
    pairs = parse_qsl(checked_query(request.query_string.decode("latin-1")), keep_blank_values=True)
    model = next((v for k, v in pairs if k == "model"), None) or None
    served = get_aliases().resolve(model)
    if served is not None:
        pairs = [(k, served if k == "model" else v) for k, v in pairs]
        model = served
    return urlencode(pairs), model

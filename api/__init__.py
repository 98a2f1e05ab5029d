"""HTTP routes: one blueprint per resource, registered by the app factory."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, jsonify

from middleware.trace import current_trace_id
from model.base import success
from model.errors import PayloadTooLarge, ValidationError

# The seed's node API carries small JSON documents; the /v1 proxy has its own
# limit (NVLLM_MAX_PROXY_BODY) for long prompts.
API_MAX_BODY = 64 * 1024


def register_blueprints(app: Flask) -> None:
    from api.adapter import bp as adapter_bp
    from api.alias import bp as alias_bp
    from api.dashboard import bp as dashboard_bp
    from api.docs import bp as docs_bp
    from api.health import bp as health_bp
    from api.node import bp as node_bp
    from api.proxy import bp as proxy_bp
    from api.proxy import root_bp as proxy_root_bp
    from api.realtime import bp as realtime_bp
    from api.stats import bp as stats_bp
    from api.user import bp as user_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(user_bp)
    app.register_blueprint(node_bp)
    app.register_blueprint(stats_bp)
    app.register_blueprint(realtime_bp)
    app.register_blueprint(proxy_bp)
    app.register_blueprint(proxy_root_bp)
    app.register_blueprint(adapter_bp)
    app.register_blueprint(alias_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(dashboard_bp)


def ok(data: Any) -> Response:
    """The success envelope."""
    return jsonify(success(data, current_trace_id()))


def json_body() -> Any:
    """The request's JSON (an empty body counts as {}). Raises ValidationError
    for a body that is not JSON, whatever the Content-Type says, and
    PayloadTooLarge for one over API_MAX_BODY."""
    from flask import request

    raw = request.get_data(cache=True)
    if request.content_length is None and len(raw) >= API_MAX_BODY:
        # A body sent without Content-Length (chunked) is cut off silently at
        # the limit; what filled it is taken as over it, never parsed as cut.
        raise PayloadTooLarge()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    # RecursionError: nesting deep enough to exhaust the parser, e.g. "[[[[...".
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValidationError("body", "must be valid JSON") from None

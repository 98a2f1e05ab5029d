"""Trace ids: accept a sane X-Trace-ID or make one; echo it; log with it."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, has_request_context, request

# \Z, not $: $ also matches before a trailing newline.
TRACE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
# A log field's value written as it is; anything else (a model name a client
# chose, with a space or a newline) is quoted, so it cannot forge a field or a line.
PLAIN_VALUE = re.compile(r"[\w.:/@+-]{1,256}\Z")
HEADER = "X-Trace-ID"

access_log = logging.getLogger("nvllm.access")


def current_trace_id() -> str:
    """The request's trace id; '-' outside a request."""
    if has_request_context():
        return getattr(g, "trace_id", None) or _accept_or_make()
    return "-"


def _accept_or_make() -> str:
    offered = request.headers.get(HEADER, "")
    trace_id = offered if TRACE_ID_PATTERN.match(offered) else uuid.uuid4().hex
    g.trace_id = trace_id
    return trace_id


class TraceIdFilter(logging.Filter):
    """Adds `trace_id` to every record, so every line of a request carries it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        return True


def init_trace(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        _accept_or_make()

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers[HEADER] = current_trace_id()
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        # Streams are logged when they end (api/proxy.py), not when they start.
        if not response.is_streamed:
            log_request(response.status_code, elapsed_ms)
        return response


def add_log_fields(**fields: object) -> None:
    """Fields for the request's access-log line, whichever way it ends (an
    error answered by a handler included)."""
    g.log_fields = {**g.get("log_fields", {}), **fields}


def log_request(status: int, elapsed_ms: float, **extra: object) -> None:
    """The one access-log line of a request, and its metrics."""
    extra = {**g.get("log_fields", {}), **extra}
    # None before the app's registry has its metrics (the factory's own steps).
    metrics = getattr(current_app.extensions.get("nvllm"), "metrics", None)
    if metrics is not None:
        metrics.observe_request(request.endpoint or "unmatched", status, elapsed_ms / 1000,
                                path=request.path, model=extra.get("model"))
    fields = " ".join(f"{k}={_text(v)}" for k, v in extra.items())
    access_log.info(
        "%s %s %d %.1fms%s",
        request.method,
        request.path,
        status,
        elapsed_ms,
        f" {fields}" if fields else "",
        extra={"http": {"method": request.method, "path": request.path, "status": status,
                        "ms": round(elapsed_ms, 1), **extra}},
    )


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text if PLAIN_VALUE.match(text) else json.dumps(text[:256], ensure_ascii=False)

"""The one place that turns errors into responses: envelope on /api, OpenAI
shape on /v1, and never a traceback or an exception's text for a client."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from middleware.trace import current_trace_id
from model.base import anthropic_error, error, openai_error
from model.errors import NvllmError, StorageUnavailable
from service import routes

log = logging.getLogger("nvllm.errors")


def _body(code: int, text: str) -> dict:
    if routes.is_anthropic(request.path):
        return anthropic_error(code, text)
    if routes.is_forwarded(request.path):
        return openai_error(code, text)
    return error(code, text, current_trace_id())


def _respond(code: int, text: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(_body(code, text))
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(NvllmError)
    def nvllm_error(exc: NvllmError) -> Response:
        if isinstance(exc, StorageUnavailable):
            log.warning("storage unavailable: %s", type(exc.__cause__).__name__)
        return _respond(exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Keep werkzeug's status and headers (Allow on 405); replace the body.
        response = exc.get_response()
        text = {
            404: "not found",
            405: f"method {request.method} not allowed",
            413: "request body too large",
        }.get(exc.code or 500, exc.name.lower())
        response.data = jsonify(_body(exc.code or 500, text)).get_data()
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return _respond(500, "internal server error")

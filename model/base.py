"""The response envelope of every /api route: built here and nowhere else."""

from __future__ import annotations

from typing import Any


def success(data: Any, trace_id: str) -> dict[str, Any]:
    return {
        "message": "success",
        "status": "success",
        "code": 200,
        "data": data,
        "trace_id": trace_id,
    }


def error(code: int, text: str, trace_id: str) -> dict[str, Any]:
    return {
        "message": "error",
        "status": "error",
        "code": code,
        "error": text,
        "trace_id": trace_id,
    }


def openai_error(code: int, text: str) -> dict[str, Any]:
    """The OpenAI error shape, so OpenAI SDKs report /v1 errors well."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }
    return {"error": {"message": text, "type": kinds.get(code, "server_error"), "code": code}}


def anthropic_error(code: int, text: str) -> dict[str, Any]:
    """The Anthropic error shape, so the Anthropic SDK reports /v1/messages errors well."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "overloaded_error",
    }
    return {"type": "error", "error": {"type": kinds.get(code, "api_error"), "message": text}}

"""The envelope and the error tree."""

from __future__ import annotations

import pytest

from model import errors
from model.base import error, openai_error, success


def test_success_envelope_in_the_seeds_order():
    body = success({"x": 1}, "t-1")
    assert list(body.items()) == [
        ("message", "success"), ("status", "success"), ("code", 200), ("data", {"x": 1}), ("trace_id", "t-1"),
    ]


def test_error_envelope_in_the_seeds_order():
    body = error(404, "node 'x' not found", "t-2")
    assert list(body.items()) == [
        ("message", "error"), ("status", "error"), ("code", 404), ("error", "node 'x' not found"), ("trace_id", "t-2"),
    ]


@pytest.mark.parametrize(
    ("code", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (429, "rate_limit_error"), (503, "server_error")],
)
def test_openai_error_shape(code, kind):
    assert openai_error(code, "text") == {"error": {"message": "text", "type": kind, "code": code}}


@pytest.mark.parametrize(
    ("exc", "code", "headers"),
    [
        (errors.NvllmError(), 500, {}),
        (errors.ValidationError("node_port", "must be an integer"), 400, {}),
        (errors.Unauthorized(), 401, {"WWW-Authenticate": "Bearer"}),
        (errors.Forbidden(), 403, {}),
        (errors.NodeNotFound("n"), 404, {}),
        (errors.UserNotFound("u"), 404, {}),
        (errors.Conflict(), 409, {}),
        (errors.PayloadTooLarge(), 413, {}),
        (errors.TooManyRequests(retry_after=30), 429, {"Retry-After": "30"}),
        (errors.StorageUnavailable(retry_after=0), 503, {"Retry-After": "1"}),
        (errors.NoRoutableNode("m"), 503, {"Retry-After": "1"}),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_each_error_carries_its_code_and_headers(exc, code, headers):
    assert isinstance(exc, errors.NvllmError)
    assert exc.code == code
    assert exc.headers == headers
    assert exc.message


def test_a_validation_error_names_its_field():
    exc = errors.ValidationError("node_info.running", "must be an integer")
    assert exc.message == "node_info.running: must be an integer"
    assert (exc.field, exc.reason) == ("node_info.running", "must be an integer")

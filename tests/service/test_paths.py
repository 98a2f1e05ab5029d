"""checked_path: a client's path reaches a node only when every segment is plain."""

from __future__ import annotations

import pytest

from model.errors import BadRequest
from service.paths import checked_path, checked_query


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/models", "/v1/audio/transcriptions", "/v1/a-b_c.d~e:f@g"]
)
def test_plain_paths_pass_unchanged(path):
    assert checked_path(path, path) == path


@pytest.mark.parametrize(
    ("path", "raw", "problem"),
    [
        ("/v1/../admin", "/v1/../admin", "'..'"),
        ("/v1/./chat/completions", "/v1/./chat/completions", "'.'"),
        ("/v1/../metrics?q=1", "/v1/..%2Fmetrics%3Fq=1", "percent"),
        ("/v1/../x", "/v1/%2e%2e/x", "percent"),
        ("/v1/chat/completions", "/v1/chat%2Fcompletions", "percent"),
        ("/v1/a#b", "/v1/a%23b", "percent"),
        ("/v1/a\\b", "/v1/a%5Cb", "percent"),
        ("/v1//chat/completions", "/v1//chat/completions", "empty"),
        ("/tokenize", "//tokenize", "empty"),  # a server that read `//tokenize` as a host and a path
        ("/v1/chat/completions/", "/v1/chat/completions/", "empty"),
        ("/v1/a\\..\\b", "/v1/a\\..\\b", "not allowed"),
        ("/v1/a?b", None, "not allowed"),
        ("/v1/a#b", None, "not allowed"),
        ("/v1/a\x00b", None, "not allowed"),
        ("/v1/a\r\nHost: x", None, "not allowed"),
        ("/v1/a b", None, "not allowed"),
        ("/v1/ünï", None, "not allowed"),
    ],
)
def test_paths_that_could_escape_or_smuggle_are_refused(path, raw, problem):
    with pytest.raises(BadRequest) as caught:
        checked_path(path, raw)
    assert caught.value.message.startswith("path: ") and problem in caught.value.message


def test_an_absolute_form_request_target_is_checked_by_its_path():
    assert checked_path("/v1/models", "http://nvllm.example/v1/models?x=%2F") == "/v1/models"
    with pytest.raises(BadRequest):
        checked_path("/v1/../x", "http://nvllm.example/v1/%2e%2e/x")


def test_a_query_stays_a_query():
    assert checked_query("a=1&b=%2F..%2F") == "a=1&b=%2F..%2F"
    assert checked_query("a=1#frag/../x") == "a=1%23frag%2F..%2Fx"
    assert checked_query("") == ""

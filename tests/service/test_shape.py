"""Request shapes: what routing reads of JSON, multipart and bodiless requests,
and the route table that says which path is forwarded how."""

from __future__ import annotations

import io

import pytest
from werkzeug.formparser import parse_form_data
from werkzeug.test import create_environ

from model.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from service import routes
from service.shape import (
    DEFAULT_OUT_TOKENS,
    NO_GENERATION_TOKENS,
    form_fields,
    prefix_blocks,
    prompt_text,
    shape_request,
    with_form_field,
)

JSON = "application/json"


def shape(path: str, body: bytes = b"", *, method: str = "POST", content_type: str | None = JSON,
          query: str = "", headers: dict[str, str] | None = None):
    return shape_request(method, path, query, content_type, body, headers or {})


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0und") -> bytes:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# --- JSON ---


def test_a_chat_request_gives_model_prompt_and_tokens():
    shaped = shape("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
                   b'"max_tokens": 7, "stream": true}')
    assert shaped.route.model == "m" and shaped.route.out_tokens == 7 and shaped.stream
    assert shaped.route.prompt_chars == len("user:hi\n")
    assert shaped.body.startswith(b'{"model"') and shaped.target == "/v1/chat/completions"
    assert shaped.response_id is None and not shaped.creates_response and not shaped.anthropic
    assert shaped.is_json and shaped.fields["max_tokens"] == 7


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
def test_a_json_body_that_is_not_an_object_is_a_400(body):
    with pytest.raises(BadRequest, match="request body must be"):
        shape("/v1/completions", body)


def test_a_body_of_another_type_goes_as_it_came_routed_by_nothing():
    shaped = shape("/v1/files", b"\x00\x01binary", content_type="application/octet-stream")
    assert shaped.route.model is None and shaped.body == b"\x00\x01binary"


def test_routes_that_generate_nothing_hold_a_slot_for_one_token():
    for path in ("/v1/embeddings", "/tokenize", "/rerank", "/score", "/pooling", "/classify"):
        assert shape(path, b'{"model": "m", "input": "x"}').route.out_tokens == NO_GENERATION_TOKENS
    assert shape("/v1/completions", b'{"model": "m"}').route.out_tokens == DEFAULT_OUT_TOKENS


@pytest.mark.parametrize(("body", "tokens"), [
    ({"max_output_tokens": 40}, 40),  # the Responses API
    ({"max_tokens": 30}, 30),  # Anthropic, chat
    ({"max_completion_tokens": 20, "max_tokens": 30}, 20),
    ({"max_tokens": 10**9}, 8192),
    ({"max_tokens": True}, DEFAULT_OUT_TOKENS),
])
def test_out_tokens_by_each_apis_name(body, tokens):
    import json

    assert shape("/v1/responses", json.dumps({"model": "m", **body}).encode()).route.out_tokens == tokens


def test_prompt_text_reads_anthropic_system_and_blocks():
    body = {"system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]}
    assert prompt_text(body) == "system:be brief\nuser:hi\n"


def test_prompt_text_reads_responses_instructions_and_input_items():
    assert prompt_text({"instructions": "rules", "input": "hello"}) == "system:rules\nhello"
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]},
                       {"role": "assistant", "content": "b"}]}
    assert prompt_text(items) == "user:a\nassistant:b\n"


def test_prompt_text_of_rerank_and_score():
    assert prompt_text({"query": "q", "documents": ["d"]}) == "q"
    assert prompt_text({"text_1": ["left"], "text_2": ["right"]}) == "left"


def test_the_same_conversation_gives_the_same_blocks_whatever_the_api():
    long = "x" * 600
    chat = shape("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "' + long.encode() + b'"}]}')
    messages = shape("/v1/messages", b'{"messages": [{"role": "user", "content": "' + long.encode() + b'"}]}')
    assert chat.route.blocks == messages.route.blocks == prefix_blocks(f"user:{long}\n")


@pytest.mark.parametrize(("fields", "headers", "session"), [
    ({}, {"X-Session-ID": "s1"}, "session:s1"),
    ({"prompt_cache_key": "k"}, {"X-Session-ID": "s1"}, "cache:k"),
    ({"user": "u"}, {}, "user:u"),
    ({"safety_identifier": "h"}, {}, "user:h"),
    ({"metadata": {"user_id": "a-u"}}, {}, "user:a-u"),
    ({"metadata": {"user_id": "a-u"}}, {"X-Session-ID": "s1"}, "session:s1"),
    ({"metadata": "a-u", "user": 5}, {}, None),
])
def test_session_hints(fields, headers, session):
    import json

    assert shape("/v1/chat/completions", json.dumps(fields).encode(), headers=headers).route.session == session


# --- the Responses API ---


def test_previous_response_id_pins_and_frees_the_model():
    shaped = shape("/v1/responses", b'{"model": "m", "input": "x", "previous_response_id": "resp_ab12"}')
    assert shaped.response_id == "resp_ab12" and shaped.creates_response
    assert shaped.route.model is None  # the node holding the response answers, whatever it serves


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel"),
    ("GET", "/v1/responses/resp_1/input_items"), ("DELETE", "/v1/responses/resp_1"),
])
def test_a_response_id_in_the_path_pins(method, path):
    shaped = shape(path, method=method, content_type=None)
    assert shaped.response_id == "resp_1" and not shaped.creates_response
    assert shaped.body is None if method in ("GET", "DELETE") else shaped.body == b""


@pytest.mark.parametrize("body", [b'{"previous_response_id": "a:b"}', b'{"previous_response_id": 5}',
                                  b'{"previous_response_id": ""}'])
def test_a_malformed_previous_response_id_is_a_400(body):
    with pytest.raises(BadRequest, match="previous_response_id: "):
        shape("/v1/responses", body)


def test_a_retrieve_may_stream():
    assert shape("/v1/responses/resp_1", method="GET", content_type=None, query="stream=true").stream
    assert not shape("/v1/responses/resp_1", method="GET", content_type=None, query="starting_after=2").stream


# --- multipart ---


def test_multipart_gives_the_model_and_stream_fields_and_leaves_the_file():
    audio = b"RIFF\r\n--b0und-ish\r\n\r\n" + bytes(range(256)) * 40
    body = multipart(("file", "a.wav", audio), ("model", None, b"whisper"), ("stream", None, b"true"))
    shaped = shape("/v1/audio/transcriptions", body, content_type="multipart/form-data; boundary=b0und")
    assert shaped.route.model == "whisper" and shaped.stream
    assert shaped.fields == {"model": "whisper", "stream": "true"} and not shaped.is_json
    assert shaped.body == body  # re-sent whole on a retry


def test_a_file_part_named_model_is_not_taken_for_the_field():
    body = multipart(("model", "model.bin", b"not-a-name"))
    assert form_fields(body, b"b0und", frozenset({"model"})) == {}


def test_form_fields_take_quoted_boundaries():
    body = multipart(("file", "a.wav", b"x"), ("model", None, b"m1"), boundary="a b")
    shaped = shape("/v1/audio/translations", body, content_type='multipart/form-data; boundary="a b"')
    assert shaped.route.model == "m1" and shaped.boundary == b"a b"


@pytest.mark.parametrize("name", ["model", "stream"])
def test_a_routed_form_field_sent_twice_is_a_400(name):
    # Servers differ on which value wins: routing by one must not let the node read the other.
    body = multipart((name, None, b"m1"), ("file", "a.wav", b"x"), (name, None, b"m2"))
    with pytest.raises(BadRequest, match=f"more than one '{name}' field"):
        shape("/v1/audio/transcriptions", body, content_type="multipart/form-data; boundary=b0und")


def parse_form(body: bytes, boundary: str = "b0und"):
    """The form as werkzeug (another parser than nvllm's) reads it."""
    environ = create_environ(method="POST", input_stream=io.BytesIO(body), content_length=len(body),
                             content_type=f"multipart/form-data; boundary={boundary}")
    _stream, form, files = parse_form_data(environ)
    return form, files


def test_the_model_field_is_rewritten_and_every_other_byte_kept():
    audio = (b"RIFF\r\n--b0und-ish\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt\r\n"
             + bytes(range(256)) * 40)
    body = multipart(("file", "a.wav", audio), ("model", None, b"gpt-4o-transcribe"), ("language", None, b"en"))
    served = "Qwen/Qwen2-Audio-7B é"
    rewritten = with_form_field(body, b"b0und", "model", served)
    before, after = body.split(b"gpt-4o-transcribe")
    assert rewritten == before + served.encode() + after
    form, files = parse_form(rewritten)
    assert form.to_dict(flat=False) == {"model": [served], "language": ["en"]}
    assert files["file"].read() == audio and files["file"].filename == "a.wav"
    shaped = shape("/v1/audio/transcriptions", rewritten, content_type="multipart/form-data; boundary=b0und")
    assert shaped.route.model == served


def test_a_boundary_inside_a_longer_line_does_not_end_a_part():
    # Only `--b0und` then CRLF (or `--`) ends a part, as the node's parser reads it.
    audio = b"\r\n--b0und-x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsmuggled"
    body = multipart(("file", "a.wav", audio), ("model", None, b"m"))
    assert form_fields(body, b"b0und", frozenset({"model"})) == {"model": "m"}
    padded = body.replace(b"--b0und\r\nContent-Disposition: form-data; name=\"model\"",
                          b"--b0und \t\r\nContent-Disposition: form-data; name=\"model\"")
    assert form_fields(padded, b"b0und", frozenset({"model"})) == {"model": "m"}


def test_a_form_without_the_field_comes_back_as_it_came():
    body = multipart(("model", "model.bin", b"weights"), ("stream", None, b"true"))
    assert with_form_field(body, b"b0und", "model", "m") == body


@pytest.mark.parametrize(("body", "content_type", "problem"), [
    (b"--b\r\n", "multipart/form-data", "names no boundary"),
    (b"no boundary here", "multipart/form-data; boundary=b", "no part starts"),
    (b"--b\r\nContent-Disposition: form-data; name=model", "multipart/form-data; boundary=b", "headers do not end"),
    (b"--b\r\nContent-Disposition: form-data; name=model\r\n\r\nm", "multipart/form-data; boundary=b",
     "does not end"),
])
def test_a_badly_framed_multipart_body_is_a_400(body, content_type, problem):
    with pytest.raises(BadRequest, match=problem):
        shape("/v1/audio/transcriptions", body, content_type=content_type)


# --- the route table ---


def test_every_route_of_the_issue_is_in_the_table():
    table = {(m, r.path) for r in routes.ROUTES for m in r.methods}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                 "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/messages", "/v1/messages/count_tokens",
                 "/v1/rerank", "/rerank", "/v2/rerank", "/v2/embed", "/score", "/v1/score", "/classify", "/pooling",
                 "/tokenize", "/detokenize", "/invocations", "/v1/responses/{response_id}/cancel"):
        assert ("POST", path) in table, path
    assert ("GET", "/v1/responses/{response_id}") in table
    assert ("GET", "/v1/responses/{response_id}/input_items") in table


def test_a_table_route_refuses_other_methods_naming_its_own():
    with pytest.raises(MethodNotAllowed) as raised:
        routes.resolve("GET", "/v1/chat/completions")
    assert raised.value.headers == {"Allow": "POST"}


def test_any_other_v1_path_passes_through():
    route = routes.resolve("DELETE", "/v1/files/file-1")
    assert route.methods == routes.PASSTHROUGH_METHODS and route.generates


def test_control_endpoints_are_refused_and_unknown_root_paths_are_not_routes():
    with pytest.raises(Forbidden, match="control endpoint"):
        routes.resolve("POST", "/v1/load_lora_adapter")
    for path in routes.CONTROL_ROOT:
        with pytest.raises(NotFound):
            routes.resolve("POST", path)
        assert path not in {p for p, _ in routes.root_paths()}


def test_error_shapes_by_path():
    assert routes.is_anthropic("/v1/messages") and routes.is_anthropic("/v1/messages/count_tokens")
    assert not routes.is_anthropic("/v1/messagesx")
    assert routes.is_forwarded("/tokenize") and routes.is_forwarded("/v1/x") and not routes.is_forwarded("/api/x")

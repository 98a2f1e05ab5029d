"""The /v1 proxy as the OpenAI Python SDK sees it: answers, streams, the
model list, and errors raised as the SDK's own exception classes."""

from __future__ import annotations

import time

import openai
import pytest

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def node(nvllm, start_fake):
    fake = start_fake(["fake-model"])
    nvllm.register("n1", fake.port, models=["fake-model"])
    return fake


def test_chat_completion(nvllm, node):
    raw = nvllm.sdk().chat.completions.with_raw_response.create(model="fake-model", messages=CHAT, max_tokens=5)
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens == 5
    assert raw.headers["X-NVLLM-Node"] == "n1"
    assert raw.headers["X-NVLLM-Route"].startswith("load ")
    assert raw.headers["X-Trace-ID"]
    assert node.stats()["completed"] == 1


def test_chat_completion_stream(nvllm, node):
    stream = nvllm.sdk().chat.completions.create(
        model="fake-model", messages=CHAT, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert len([d for d in deltas if d.content]) == 8
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completion_and_its_stream(nvllm, node):
    client = nvllm.sdk()
    answer = client.completions.create(model="fake-model", prompt="Once upon a time", max_tokens=4)
    assert answer.object == "text_completion" and answer.choices[0].text
    texts = [c.choices[0].text for c in client.completions.create(
        model="fake-model", prompt="Once upon a time", max_tokens=4, stream=True)]
    assert len(texts) == 4 and "".join(texts) == answer.choices[0].text


def test_embeddings(nvllm, node):
    answer = nvllm.sdk().embeddings.create(model="fake-model", input=["one", "two"])
    assert [e.index for e in answer.data] == [0, 1]
    assert len(answer.data[0].embedding) == 64


def test_stream_is_relayed_chunk_by_chunk(nvllm, start_fake):
    # 20 tokens at 50 ms each: a buffering proxy would deliver them all at ~1 s.
    fake = start_fake(["fake-model"], step_time=0.05)
    nvllm.register("slow", fake.port)
    started = time.monotonic()
    arrivals = []
    for _chunk in nvllm.sdk().completions.create(model="fake-model", prompt="x", max_tokens=20, stream=True):
        arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 20
    assert arrivals[0] < arrivals[-1] / 2
    assert arrivals[-1] - arrivals[0] > 0.5  # they came spread out, as generated


def test_models_lists_the_union_over_routable_nodes(nvllm, start_fake):
    from model.node import NodeStatus

    nvllm.register("a", start_fake(["m-a"]).port, models=["m-a", "shared"])
    nvllm.register("b", start_fake(["m-b"]).port, models=["m-b", "shared"])
    nvllm.register("c", start_fake(["m-c"]).port, models=["m-c"], node_status=NodeStatus.DRAINING)
    nvllm.register("d", start_fake(["m-d"]).port, models=["m-d"], node_status=NodeStatus.OFFLINE)
    nvllm.register("any", start_fake().port)  # serves anything, lists nothing
    models = nvllm.sdk().models.list()
    assert [m.id for m in models.data] == ["m-a", "m-b", "shared"]
    assert all(m.object == "model" for m in models.data)


def test_no_routable_node_is_a_503_naming_the_model(nvllm, node):
    with pytest.raises(openai.InternalServerError) as raised:
        nvllm.sdk().chat.completions.create(model="llama-405b", messages=CHAT)
    error = raised.value
    assert error.status_code == 503
    assert error.type == "server_error"
    assert error.body["code"] == 503  # an int, as vLLM sends it (the SDK shows it as a str)
    assert "'llama-405b'" in error.message
    assert error.response.headers["Retry-After"]
    assert node.stats()["requests_received"] == 0


def test_no_node_at_all_is_a_503(nvllm):
    with pytest.raises(openai.APIStatusError) as raised:
        nvllm.sdk().completions.create(model="fake-model", prompt="x", stream=True)
    assert raised.value.status_code == 503


@pytest.mark.parametrize("token", [None, "not-a-jwt"])
def test_a_missing_or_bad_token_is_a_401_in_openai_shape(nvllm, node, token):
    client = nvllm.sdk(token)
    # openai.omit: the SDK sends no Authorization header at all.
    sent = {"Authorization": openai.omit} if token is None else {}
    with pytest.raises(openai.AuthenticationError) as raised:
        client.chat.completions.create(model="fake-model", messages=CHAT, extra_headers=sent)
    assert raised.value.status_code == 401
    assert raised.value.type == "authentication_error"
    assert raised.value.body == {"message": raised.value.body["message"], "type": "authentication_error",
                                 "code": 401}
    assert raised.value.response.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        client.models.list(extra_headers=sent)
    assert node.stats()["requests_received"] == 0


def test_a_nodes_own_error_reaches_the_client_as_is(nvllm, node):
    # The node lists no models, so it is picked, and answers 404 for a model it lacks.
    nvllm.register("n1", node.port)
    with pytest.raises(openai.NotFoundError) as raised:
        nvllm.sdk().chat.completions.create(model="missing", messages=CHAT)
    assert raised.value.response.headers["X-NVLLM-Node"] == "n1"


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b"[" * 100_000, 400)],
)
def test_a_body_that_is_not_a_json_object_is_a_400_in_openai_shape(nvllm, node, body, status):
    answer = nvllm.http.request(
        "POST", nvllm.url + "/v1/chat/completions", body=body,
        headers={"Authorization": f"Bearer {nvllm.token}", "Content-Type": "application/json"},
    )
    assert answer.status == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == status
    assert node.stats()["requests_received"] == 0


def test_a_wrong_method_is_a_405_in_openai_shape(nvllm, node):
    answer = nvllm.get("/v1/chat/completions")
    assert answer.status == 405
    assert "POST" in answer.headers["Allow"]
    assert answer.json()["error"]["code"] == 405


def test_a_body_over_the_limit_is_a_413_in_openai_shape(start_nvllm, start_fake):
    live = start_nvllm(max_proxy_body=4096)
    live.register("n1", start_fake().port)
    with pytest.raises(openai.APIStatusError) as raised:
        live.sdk().completions.create(model="fake-model", prompt="x" * 8192, max_tokens=1)
    assert raised.value.status_code == 413
    assert raised.value.body["type"] == "invalid_request_error"

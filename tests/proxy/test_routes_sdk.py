"""Every route nvllm forwards, as the OpenAI and Anthropic SDKs call them, over
fake vLLM nodes: audio uploads, the Responses API chained across a fleet
(each follow-up must reach the node holding its response), Anthropic's
Messages API, vLLM's own tokenize/rerank/score/pooling routes, and retries
before the first byte for every body shape."""

from __future__ import annotations

import io
import json
import zlib

import anthropic
import openai
import pytest

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

AUDIO = bytes(range(256)) * 250  # 64,000 bytes: two seconds at 16 kHz, 16 bit


def upload(name: str = "speech.wav") -> tuple[str, io.BytesIO, str]:
    return name, io.BytesIO(AUDIO), "audio/wav"


@pytest.fixture
def fleet(nvllm, start_fake):
    """Three nodes, each with its own Responses store, as vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1."""
    fakes = {f"n{i}": start_fake(["fake-model"], responses_store=True) for i in (1, 2, 3)}
    for node_id, fake in fakes.items():
        nvllm.register(node_id, fake.port, models=["fake-model"])
    return fakes


# --- audio ---


def test_a_transcription_upload_reaches_a_node_whole(nvllm, fleet):
    raw = nvllm.sdk().audio.transcriptions.with_raw_response.create(model="fake-model", file=upload())
    assert raw.parse().text
    served = fleet[raw.headers["X-NVLLM-Node"]]
    assert served.server.apis.uploads == [(len(AUDIO), zlib.crc32(AUDIO))]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_a_translation_and_a_streamed_transcription(nvllm, fleet):
    client = nvllm.sdk()
    assert client.audio.translations.create(model="fake-model", file=upload()).text
    events = list(client.audio.transcriptions.create(model="fake-model", file=upload(), stream=True))
    assert len(events) == 4  # two seconds of audio, two words a second


def test_an_upload_is_re_sent_whole_to_the_next_node(start_nvllm, start_fake):
    # round_robin tries the nodes in id order: "a" first, which fails.
    live = start_nvllm(routing="round_robin")
    failing, healthy = start_fake(), start_fake()
    failing.set_fault("error500")
    live.register("a", failing.port)
    live.register("b", healthy.port)
    raw = live.sdk().audio.transcriptions.with_raw_response.create(model="fake-model", file=upload())
    assert raw.parse().text and raw.headers["X-NVLLM-Node"] == "b"
    assert failing.stats()["rejected"] == 1
    assert healthy.server.apis.uploads == [(len(AUDIO), zlib.crc32(AUDIO))]


def test_a_multipart_body_without_a_model_field_goes_to_any_node(nvllm, start_fake):
    fake = start_fake()
    nvllm.register("n1", fake.port, models=["fake-model"])
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + AUDIO
            + b"\r\n--XyZ--\r\n")
    answer = nvllm.http.request("POST", nvllm.url + "/v1/audio/transcriptions", body=body, headers={
        "Authorization": f"Bearer {nvllm.token}", "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert answer.status == 200, answer.data
    assert fake.server.apis.uploads == [(len(AUDIO), zlib.crc32(AUDIO))]


def test_a_multipart_body_without_its_boundary_is_a_400(nvllm, start_fake):
    fake = start_fake()
    nvllm.register("n1", fake.port)
    answer = nvllm.http.request("POST", nvllm.url + "/v1/audio/transcriptions", body=b"--XyZ\r\n", headers={
        "Authorization": f"Bearer {nvllm.token}", "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert answer.status == 400
    assert answer.json()["error"]["message"].startswith("multipart/form-data body:")
    assert fake.server.apis.uploads == []


# --- the Responses API ---


def test_a_responses_chain_follows_its_node_across_the_fleet(start_nvllm, fleet, nvllm):
    # round_robin would send each request to the next node: only affinity keeps a chain on its node.
    other = start_nvllm(routing="round_robin")
    for node_id, fake in fleet.items():
        other.register(node_id, fake.port, models=["fake-model"])
    clients = [nvllm.sdk(), other.sdk()]
    chains = []
    for start in range(3):
        raw = clients[0].responses.with_raw_response.create(model="fake-model", input=f"chain {start}",
                                                              max_output_tokens=3)
        chains.append((raw.parse().id, raw.headers["X-NVLLM-Node"]))
    for turn in range(4):
        for i, (previous, node) in enumerate(chains):
            client = clients[(turn + i) % 2]  # either instance: they share what they remember
            raw = client.responses.with_raw_response.create(
                model="fake-model", input=f"turn {turn}", previous_response_id=previous, max_output_tokens=3)
            answer = raw.parse()
            assert answer.status == "completed" and answer.previous_response_id == previous
            assert raw.headers["X-NVLLM-Node"] == node
            assert raw.headers["X-NVLLM-Route"].startswith(f"pinned:{previous} ")
            chains[i] = (answer.id, node)
    for response_id, node in chains:
        assert response_id in fleet[node].server.apis.responses
        assert all(response_id not in f.server.apis.responses for n, f in fleet.items() if n != node)


def test_a_streamed_response_is_remembered_from_its_created_event(nvllm, fleet):
    client = nvllm.sdk()
    events = list(client.responses.create(model="fake-model", input="hello", stream=True, max_output_tokens=4))
    assert events[0].type == "response.created"
    assert [e.type for e in events].count("response.output_text.delta") == 4
    response_id = events[0].response.id
    follow = client.responses.create(model="fake-model", input="more", previous_response_id=response_id,
                                     max_output_tokens=2, stream=True)
    assert [e.type for e in follow][-1] == "response.completed"


def test_retrieve_input_items_and_cancel_reach_the_node_holding_the_response(nvllm, fleet):
    client = nvllm.sdk()
    raw = client.responses.with_raw_response.create(model="fake-model", input="remember me", max_output_tokens=2)
    created, node = raw.parse(), raw.headers["X-NVLLM-Node"]
    for _ in range(3):
        fetched = client.responses.with_raw_response.retrieve(created.id)
        assert fetched.parse().id == created.id and fetched.headers["X-NVLLM-Node"] == node
    items = client.responses.input_items.list(created.id)
    assert [part.text for part in items.data[0].content] == ["remember me"]
    # Only the node holding it knows it is synchronous (the others would say "not found").
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        client.responses.cancel(created.id)


def test_a_background_response_is_cancelled_on_its_node(nvllm, fleet):
    client = nvllm.sdk()
    queued = client.responses.create(model="fake-model", input="long", background=True, max_output_tokens=5000)
    assert queued.status == "queued"
    assert client.responses.cancel(queued.id).status == "cancelled"
    assert client.responses.retrieve(queued.id).status == "cancelled"


def test_a_response_nvllm_never_saw_is_a_404_naming_it(nvllm, fleet):
    with pytest.raises(openai.NotFoundError) as raised:
        nvllm.sdk().responses.create(model="fake-model", input="x", previous_response_id="resp_0123abcd")
    assert "'resp_0123abcd'" in raised.value.message
    assert raised.value.body["type"] == "not_found_error"
    assert all(f.stats()["requests_received"] == 0 for f in fleet.values())


def test_a_response_whose_node_is_gone_is_a_404_naming_it_and_the_node(nvllm, fleet):
    client = nvllm.sdk()
    raw = client.responses.with_raw_response.create(model="fake-model", input="x", max_output_tokens=1)
    response_id, node = raw.parse().id, raw.headers["X-NVLLM-Node"]
    nvllm.app.extensions["nvllm"].nodes.delete(node)
    nvllm.fleet.refresh()
    for call in (lambda: client.responses.retrieve(response_id),
                 lambda: client.responses.create(model="fake-model", input="y", previous_response_id=response_id)):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert f"'{response_id}'" in raised.value.message and f"'{node}'" in raised.value.message


def test_a_malformed_response_id_is_a_400(nvllm, fleet):
    answer = nvllm.post("/v1/responses", {"model": "fake-model", "input": "x", "previous_response_id": "a:b*"})
    assert answer.status == 400
    assert answer.json()["error"]["message"].startswith("previous_response_id:")


def test_with_the_store_off_a_node_forgets_as_vllm_does(nvllm, start_fake):
    fake = start_fake(responses_store=False)
    nvllm.register("n1", fake.port)
    client = nvllm.sdk()
    created = client.responses.create(model="fake-model", input="x", max_output_tokens=1)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.responses.retrieve(created.id)  # nvllm knows the node; the node kept nothing


# --- Anthropic's Messages API ---


@pytest.fixture
def claude(nvllm, start_fake):
    fake = start_fake(["fake-model"])
    nvllm.register("n1", fake.port, models=["fake-model"])
    # The SDK sends its api_key as x-api-key: an nvllm token works there.
    return anthropic.Anthropic(base_url=nvllm.url, api_key=nvllm.token, max_retries=0, timeout=10.0)


def test_anthropic_messages(claude):
    message = claude.messages.create(model="fake-model", max_tokens=5, system="be brief",
                                     messages=[{"role": "user", "content": "Hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text and message.usage.output_tokens == 5


def test_anthropic_messages_streamed(claude):
    with claude.messages.stream(model="fake-model", max_tokens=6,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) == 6 and final.stop_reason == "max_tokens"


def test_anthropic_count_tokens(claude):
    counted = claude.messages.count_tokens(model="fake-model", messages=[{"role": "user", "content": "a b c"}])
    assert counted.input_tokens > 3


def test_anthropic_errors_come_in_anthropic_shape(nvllm, claude):
    bad = anthropic.Anthropic(base_url=nvllm.url, api_key="not-a-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        bad.messages.create(model="fake-model", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert raised.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": raised.value.body["error"]["message"]}}
    with pytest.raises(anthropic.InternalServerError) as raised:
        claude.messages.create(model="no-such-model", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 503 and raised.value.body["error"]["type"] == "overloaded_error"


# --- model aliases on every JSON route ---


def test_an_alias_is_the_served_model_on_the_messages_and_responses_routes(nvllm, fleet):
    stores = nvllm.app.extensions["nvllm"]
    admin = stores.tokens.issue(stores.users.load("admin"), 3600)
    assert nvllm.post("/api/alias/set", {"alias": "claude-x", "model": "fake-model"}, token=admin).status == 200
    # The fake answers 404 for a model it does not serve: each body reached it with the served name.
    claude = anthropic.Anthropic(base_url=nvllm.url, api_key=nvllm.token, max_retries=0, timeout=10.0)
    message = claude.messages.create(model="claude-x", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "fake-model"
    client = nvllm.sdk()
    raw = client.responses.with_raw_response.create(model="claude-x", input="first", max_output_tokens=2)
    first, node = raw.parse(), raw.headers["X-NVLLM-Node"]
    raw = client.responses.with_raw_response.create(model="claude-x", input="next", previous_response_id=first.id,
                                                    max_output_tokens=2)
    assert raw.parse().model == "fake-model" and raw.headers["X-NVLLM-Node"] == node


def test_an_upload_naming_an_alias_reaches_the_node_as_the_served_model(nvllm, start_fake):
    whisper = start_fake(["openai/whisper-large-v3"])
    other = start_fake(["fake-model"])
    nvllm.register("asr", whisper.port, models=["openai/whisper-large-v3"])
    nvllm.register("llm", other.port, models=["fake-model"])
    stores = nvllm.app.extensions["nvllm"]
    admin = stores.tokens.issue(stores.users.load("admin"), 3600)
    assert nvllm.post("/api/alias/set", {"alias": "whisper-1", "model": "openai/whisper-large-v3", "listed": False},
                      token=admin).status == 200
    client = nvllm.sdk()
    # The fake answers 404 for a model it does not serve: the form reached it with the served name.
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=upload())
    assert raw.parse().text and raw.headers["X-NVLLM-Node"] == "asr"
    assert whisper.server.apis.uploads == [(len(AUDIO), zlib.crc32(AUDIO))]
    assert whisper.stats()["requests_received"] == 1 and other.stats()["requests_received"] == 0
    with client.audio.transcriptions.with_streaming_response.create(model="whisper-1", file=upload(),
                                                                    stream=True) as events:
        chunks = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: {")]
    assert chunks and {chunk["model"] for chunk in chunks} == {"openai/whisper-large-v3"}


def test_x_api_key_is_not_accepted_on_the_admin_api(nvllm):
    answer = nvllm.http.request("GET", nvllm.url + "/api/node/node/all", headers={"x-api-key": nvllm.token})
    assert answer.status == 401


# --- vLLM's own routes ---


@pytest.fixture
def node(nvllm, start_fake):
    fake = start_fake(["fake-model"])
    nvllm.register("n1", fake.port, models=["fake-model"])
    return fake


def test_embeddings_through_the_sdk(nvllm, node):
    answer = nvllm.sdk().embeddings.create(model="fake-model", input="one")
    assert len(answer.data[0].embedding) == 64


@pytest.mark.parametrize(("path", "body", "check"), [
    ("/tokenize", {"prompt": "a b c"}, lambda a: a["count"] == 4 and len(a["tokens"]) == 4),
    ("/detokenize", {"tokens": [1, 2]}, lambda a: isinstance(a["prompt"], str)),
    ("/rerank", {"query": "red fox", "documents": ["a red fox", "blue sea"]},
     lambda a: [r["index"] for r in a["results"]] == [0, 1]),
    ("/v1/rerank", {"query": "q", "documents": ["d"]}, lambda a: len(a["results"]) == 1),
    ("/v2/rerank", {"query": "q", "documents": ["d", "e"], "top_n": 1}, lambda a: len(a["results"]) == 1),
    ("/v2/embed", {"texts": ["x", "y"]}, lambda a: len(a["embeddings"]["float"]) == 2),
    ("/score", {"text_1": "a", "text_2": ["a", "b"]}, lambda a: [d["index"] for d in a["data"]] == [0, 1]),
    ("/v1/score", {"text_1": "a", "text_2": "b"}, lambda a: a["data"][0]["object"] == "score"),
    ("/pooling", {"input": "x"}, lambda a: a["data"][0]["object"] == "pooling"),
    ("/classify", {"input": ["x", "y"]}, lambda a: len(a["data"]) == 2 and a["data"][0]["num_classes"] == 2),
    ("/invocations", {"prompt": "x", "max_tokens": 2}, lambda a: a["object"] == "text_completion"),
])
def test_vllm_routes_are_forwarded_by_model(nvllm, node, start_fake, path, body, check):
    other = start_fake(["other-model"])
    nvllm.register("n2", other.port, models=["other-model"])
    answer = nvllm.post(path, {"model": "fake-model", **body})
    assert answer.status == 200, answer.data
    assert check(answer.json())
    assert answer.headers["X-NVLLM-Node"] == "n1"


def test_a_root_route_takes_only_its_methods(nvllm, node):
    answer = nvllm.get("/tokenize")
    assert answer.status == 405 and "POST" in answer.headers["Allow"]
    assert answer.json()["error"]["code"] == 405


def test_a_root_route_needs_a_token(nvllm, node):
    answer = nvllm.http.request("POST", nvllm.url + "/tokenize", json={"prompt": "x"})
    assert answer.status == 401 and answer.json()["error"]["type"] == "authentication_error"
    assert node.stats()["requests_received"] == 0


# --- pass-through and refusals ---


def test_any_other_v1_path_and_method_passes_through_and_is_retried(start_nvllm, start_fake):
    live = start_nvllm(routing="round_robin")
    failing, healthy = start_fake(), start_fake()
    failing.set_fault("error500")
    live.register("a", failing.port)
    live.register("b", healthy.port)
    for method in ("GET", "DELETE"):  # NVLLM_EJECT_AFTER=2 in these tests: "a" is tried by both
        answer = live.http.request(method, live.url + "/v1/files/file-1?limit=2",
                                   headers={"Authorization": f"Bearer {live.token}"})
        # The fake has no such route: its own 404 shows the request reached it.
        assert answer.status == 404 and answer.headers["X-NVLLM-Node"] == "b", method
    assert live.fleet.is_failing("a")  # both first went to "a", and were retried on "b"
    headers = {"Authorization": f"Bearer {live.token}", "Content-Type": "application/octet-stream"}
    put = live.http.request("PUT", live.url + "/v1/files/file-1", body=b"\x00raw", headers=headers)
    assert put.status == 404 and put.headers["X-NVLLM-Node"] == "b"


def test_a_json_body_is_re_sent_whole_to_the_next_node(start_nvllm, start_fake):
    live = start_nvllm(routing="round_robin")
    failing, healthy = start_fake(), start_fake()
    failing.set_fault("error500")
    live.register("a", failing.port)
    live.register("b", healthy.port)
    answer = live.post("/v1/embeddings", {"model": "fake-model", "input": "x" * 5000})
    assert answer.status == 200 and answer.headers["X-NVLLM-Node"] == "b"
    assert failing.stats()["rejected"] == 1 and healthy.stats()["completed"] == 1


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_control_endpoints_under_v1_are_refused(nvllm, node, path):
    answer = nvllm.post(path, {"lora_name": "x", "lora_path": "/tmp/x"})
    assert answer.status == 403 and "control endpoint" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/pause", "/sleep", "/collective_rpc", "/reset_prefix_cache", "/start_profile"])
def test_control_endpoints_outside_v1_do_not_exist(nvllm, node, path):
    assert nvllm.post(path, {}).status == 404


def test_x_api_key_never_reaches_a_node(nvllm):
    from tests.proxy.recorder import Recorder, serving

    with serving(Recorder()) as recorder:
        nvllm.register("rec", recorder.port)
        answer = nvllm.http.request("POST", nvllm.url + "/v1/messages", body=json.dumps({"model": "m"}),
                                    headers={"x-api-key": nvllm.token, "Content-Type": "application/json"})
        assert answer.status == 200
    assert recorder.seen and all("x-api-key" not in seen and "authorization" not in seen for seen in recorder.seen)

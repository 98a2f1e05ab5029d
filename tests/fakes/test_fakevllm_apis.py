"""The fake vLLM server's other routes, called directly: the Responses store
(off unless enabled, per process), audio uploads and their formats."""

from __future__ import annotations

import pytest

from fakevllm import FakeVLLM
from tests.fakes.test_fakevllm import MODEL, call


@pytest.fixture
def start():
    started: list[FakeVLLM] = []

    def make(**options) -> FakeVLLM:
        fake = FakeVLLM(models=[MODEL], step_time=0.002, prefill_time_per_token=0.0, **options).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


def create(fake: FakeVLLM, **body):
    return call(fake, "POST", "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2, **body})


def test_the_store_is_off_unless_enabled(start, monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_RESPONSES_API_STORE", raising=False)
    fake = start()
    answer = create(fake)
    assert answer.status == 200 and answer.json()["status"] == "completed"
    assert call(fake, "GET", f"/v1/responses/{answer.json()['id']}").status == 404
    refused = create(fake, background=True)
    assert refused.status == 400 and "VLLM_ENABLE_RESPONSES_API_STORE" in refused.json()["error"]["message"]


def test_the_environment_turns_the_store_on_as_in_vllm(start, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_RESPONSES_API_STORE", "1")
    fake = start()
    response_id = create(fake).json()["id"]
    assert call(fake, "GET", f"/v1/responses/{response_id}").json()["id"] == response_id


def test_the_store_is_per_process_and_lost_on_a_restart(start):
    one, two = start(responses_store=True), start(responses_store=True)
    response_id = create(one).json()["id"]
    follow = create(two, previous_response_id=response_id)
    assert follow.status == 404
    assert follow.json()["error"]["message"] == f"Response with id '{response_id}' not found."
    assert create(one, previous_response_id=response_id).status == 200
    one.stop()
    one.start()  # a restart: vLLM's store lived in the old process's memory
    assert call(one, "GET", f"/v1/responses/{response_id}").status == 404


def test_a_follow_up_sees_the_conversation_so_far(start):
    fake = start(responses_store=True)
    first = create(fake, input="one two three")
    second = create(fake, input="four", previous_response_id=first.json()["id"])
    assert second.json()["usage"]["input_tokens"] > first.json()["usage"]["input_tokens"]


def test_audio_formats(start):
    import http.client

    fake = start()
    boundary = "zz"

    def post(fmt: str):
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
                .encode() + b"\x00" * 64000 + f"\r\n--{boundary}\r\nContent-Disposition: form-data; "
                f"name=\"response_format\"\r\n\r\n{fmt}\r\n--{boundary}--\r\n".encode())
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        conn.request("POST", "/v1/audio/transcriptions", body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        return reply.status, reply.getheader("Content-Type"), data

    status, kind, data = post("text")
    assert status == 200 and kind.startswith("text/plain") and len(data.split()) == 4
    status, kind, data = post("verbose_json")
    assert status == 200 and b'"duration":2.0' in data and b'"usage":{"type":"duration","seconds":2}' in data
    assert call(fake, "POST", "/v1/audio/transcriptions", {"model": MODEL}).status == 400

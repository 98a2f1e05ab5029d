"""What one client may hold of a /v1 instance: requests in flight per user,
and the size of a body (JSON, or a multipart upload with its own limit)."""

from __future__ import annotations

import json
import time

import pytest

from service.user import create_user
from tests.helpers import PASSWORD, wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake nodes


def token_for(live, username: str) -> str:
    stores = live.app.extensions["nvllm"]
    user = create_user(stores.users, {"username": username, "password": PASSWORD, "role": "user"},
                       now=time.time(), hash_n=2**4)
    return stores.tokens.issue(user, 3600)


def test_a_user_has_at_most_the_cap_in_flight(start_nvllm, start_fake):
    live = start_nvllm(max_inflight_per_user=2)
    fake = start_fake(step_time=0.02)
    live.register("n1", fake.port)
    held = [live.open_stream({"max_tokens": 500}) for _ in range(2)]
    refused = live.post("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 1})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    error = json.loads(refused.data)["error"]
    assert "in flight" in error["message"] and error["code"] == 429
    # Another user is not held back by this one.
    other = live.post("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 1},
                      token=token_for(live, "other"))
    assert other.status == 200
    held[0].release_conn()
    held[0].close()
    slots = live.app.extensions["nvllm"].user_slots
    wait_for(lambda: slots.in_flight("user0") == 1, 2, "the closed stream's slot to be freed")
    assert live.post("/v1/completions", {"model": "fake-model", "prompt": "x", "max_tokens": 1}).status == 200
    held[1].close()
    wait_for(lambda: slots.in_flight("user0") == 0, 2, "every slot to be freed")


def test_refused_and_failed_requests_free_their_slot(start_nvllm):
    live = start_nvllm(max_inflight_per_user=1)
    for _ in range(3):  # no node at all: 503, and the slot comes back each time
        assert live.post("/v1/completions", {"model": "fake-model", "prompt": "x"}).status == 503
    assert live.app.extensions["nvllm"].user_slots.in_flight("user0") == 0


def test_multipart_uploads_have_their_own_larger_limit(start_nvllm):
    live = start_nvllm(max_proxy_body=4096, max_upload_body=16384)
    json_body = json.dumps({"model": "m", "prompt": "x" * 8000}).encode()
    assert live.http.request("POST", live.url + "/v1/completions", body=json_body,
                             headers={"Authorization": f"Bearer {live.token}",
                                      "Content-Type": "application/json"}).status == 413
    upload = {"model": "m", "file": ("a.wav", b"\0" * 8000, "audio/wav")}
    fits = live.http.request("POST", live.url + "/v1/audio/transcriptions", fields=upload,
                             headers={"Authorization": f"Bearer {live.token}"})
    assert fits.status != 413  # within the upload limit (multipart is not routed yet: 400)
    upload["file"] = ("a.wav", b"\0" * 20000, "audio/wav")
    too_big = live.http.request("POST", live.url + "/v1/audio/transcriptions", fields=upload,
                                headers={"Authorization": f"Bearer {live.token}"})
    assert too_big.status == 413

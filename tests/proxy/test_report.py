"""What the proxy reports of each attempt (model, first-token time, output
tokens), and the dashboard's statistics built from those reports by two
instances on one Redis."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers


def recorded(live) -> list[dict]:
    """Every report the proxy makes from now on, beside the usual hook."""
    proxy = live.app.extensions["nvllm"].proxy
    reports: list[dict] = []
    original = proxy._on_done

    def keep(done: dict) -> None:
        reports.append(done)
        original(done)

    proxy._on_done = keep
    return reports


def test_reports_carry_model_first_token_time_and_output_tokens(nvllm, start_fake):
    fake = start_fake(["fake-model"], step_time=0.01)
    nvllm.register("node-a", fake.port, models=["fake-model"])
    reports = recorded(nvllm)
    client = nvllm.sdk()
    chat = [{"role": "user", "content": "hello"}]

    assert len(list(client.chat.completions.create(model="fake-model", messages=chat, max_tokens=7,
                                                   stream=True))) >= 7
    usage = list(client.chat.completions.create(model="fake-model", messages=chat, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True}))
    assert usage[-1].usage.completion_tokens == 5
    list(client.completions.create(model="fake-model", prompt="hi", max_tokens=4, stream=True))
    whole = client.chat.completions.create(model="fake-model", messages=chat, max_tokens=6)
    assert whole.usage.completion_tokens == 6
    wait_for(lambda: len(reports) == 4, 2, "four reports")

    chat_stream, usage_stream, text_stream, not_streamed = reports
    assert chat_stream["model"] == "fake-model" and chat_stream["node"] == "node-a"
    assert chat_stream["output_tokens"] == 7  # counted: role and [DONE] events are no tokens
    assert 0 < chat_stream["ttft"] < chat_stream["seconds"]
    assert usage_stream["output_tokens"] == 5  # from the usage chunk
    assert text_stream["output_tokens"] == 4 and text_stream["ttft"] > 0  # no role event in a text stream
    assert not_streamed["output_tokens"] == 6  # from the answer's usage
    assert not_streamed["ttft"] is None  # a whole answer shows no first token


def test_two_instances_show_the_same_statistics(start_nvllm, start_fake):
    """Traffic through either instance counts once, and either instance's
    /api/node/stats shows all of it."""
    first, second = start_nvllm(), start_nvllm()
    fakes = [start_fake(["fake-model"]) for _ in range(2)]
    for i, fake in enumerate(fakes):
        first.register(f"node-{i}", fake.port, models=["fake-model"])
    second.fleet.refresh()
    sent = 0
    for live in (first, second):
        for _ in range(5):
            live.sdk().completions.create(model="fake-model", prompt="hi", max_tokens=3)
            sent += 1

    def totals(live) -> dict:
        answer = live.get("/api/node/stats")
        assert answer.status == 200, answer.data
        return answer.json()["data"]["totals"]

    # The current bucket counts once it is complete: at most 2 s, plus a flush.
    wait_for(lambda: totals(first)["stats"]["requests_1m"] == sent, 5, "both instances' requests")
    assert totals(second)["stats"] == totals(first)["stats"]
    assert totals(first)["stats"]["output_tokens_1m"] == 3 * sent
    assert totals(first)["instances"] == 2

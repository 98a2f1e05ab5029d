"""Output tokens counted as an answer passes, and routing reasons as kinds."""

from __future__ import annotations

import json

import pytest

from service.answer import AnswerMeter
from service.reasons import reason_category


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
DONE = b"data: [DONE]\n\n"


def tokens(*texts: str) -> list[bytes]:
    return [sse({"choices": [{"delta": {"content": t}}]}) for t in texts]


@pytest.mark.parametrize("cut", [None, "completion_", '"completion_tokens": 1'])
def test_a_whole_answer_counts_what_its_usage_says(cut):
    text = "completion_tokens: 99 is what the model wrote " * 2000  # a long answer, quoting the field
    body = json.dumps({"choices": [{"text": text}], "usage": {"prompt_tokens": 3, "completion_tokens": 12},
                       "prompt_logprobs": None}).encode()
    meter = AnswerMeter()
    at = body.rindex(cut.encode()) + len(cut) if cut else 65536  # a read may end anywhere, the usage too
    for part in (body[:at], body[at:]):
        meter.feed(part)
    assert meter.output_tokens(None) == 12


def test_a_whole_answer_without_usage_counts_none():
    meter = AnswerMeter()
    meter.feed(b'{"data": [{"embedding": [0.1]}]}')
    assert meter.output_tokens(None) == 0


def test_a_chat_stream_without_usage_counts_its_token_events():
    chunks = [ROLE, *tokens("a", '"role"', "c"), DONE]
    meter = AnswerMeter()
    for chunk in chunks:
        meter.feed(chunk)
    assert meter.output_tokens(events=len(chunks)) == 3  # a token's text "role" is not the role event


def test_a_completion_stream_has_no_role_event():
    chunks = [sse({"choices": [{"text": t}]}) for t in "abcd"] + [DONE]
    meter = AnswerMeter()
    for chunk in chunks:
        meter.feed(chunk)
    assert meter.output_tokens(events=len(chunks)) == 4


def test_a_stream_with_usage_counts_the_last_usage():
    usage = [sse({"choices": [], "usage": {"completion_tokens": n}}) for n in (1, 2, 9)]
    meter = AnswerMeter()
    for chunk in [ROLE, *usage, DONE]:
        meter.feed(chunk)
    assert meter.output_tokens(events=5) == 9


@pytest.mark.parametrize(("kind", "attempt", "label"), [
    ("load", 1, "load"),
    ("affinity", 1, "prefix_affinity"),
    ("session", 1, "session"),
    ("affinity", 2, "fallback"),
    ("round_robin", 1, "round_robin"),
    ("least_inflight", 1, "least_inflight"),
    ("random", 3, "fallback"),
])
def test_a_decisions_kind_is_its_label_unless_it_is_a_fallback(kind, attempt, label):
    assert reason_category(kind, attempt) == label

"""What routing reads of a request: its prompt text and the prefix blocks
that stand for it."""

from __future__ import annotations

import pytest

from service.routing.request import BLOCK_CHARS, MAX_BLOCKS
from service.shape import prefix_blocks, prompt_text, route_request
from tests.service.routing.helpers import prompt


def test_prompt_text_of_chat_messages():
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            "not a message",
            {"role": "assistant", "content": None},
        ]
    }
    assert prompt_text(body) == "system:be brief\nuser:hi there\nassistant:\n"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"prompt": "once upon"}, "once upon"),
        ({"prompt": ["first", "second"]}, "first"),
        ({"prompt": [1, 2, 3]}, ""),  # token ids: nothing to hash as text
        ({"input": "embed me"}, "embed me"),
        ({"input": ["a", "b"]}, "a"),
        ({"input": []}, ""),
        ({"model": "m"}, ""),
    ],
)
def test_prompt_text_of_completions_and_embeddings(body, text):
    assert prompt_text(body) == text


def test_prefix_blocks_cover_whole_blocks_only():
    assert prefix_blocks("") == []
    assert prefix_blocks("x" * (BLOCK_CHARS - 1)) == []
    assert len(prefix_blocks("x" * (BLOCK_CHARS * 3 + 10))) == 3


def test_prefix_blocks_are_capped():
    assert len(prefix_blocks("x" * BLOCK_CHARS * (MAX_BLOCKS + 5))) == MAX_BLOCKS


def test_prefix_blocks_chain_so_a_block_stands_for_everything_before_it():
    a = prefix_blocks(prompt("a", 2) + prompt("c", 1))
    b = prefix_blocks(prompt("b", 2) + prompt("c", 1))
    same = prefix_blocks(prompt("a", 2) + prompt("d", 1))
    assert a[:2] == same[:2] and a[2] != same[2]
    assert a[2] != b[2]  # the same third block after different prefixes
    assert len(set(a)) == 3


def test_prefix_blocks_take_any_unicode():
    assert len(prefix_blocks("节点\ud800" * BLOCK_CHARS)) == 3


def test_route_request_reads_model_and_prompt():
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * BLOCK_CHARS * 2}]}
    request = route_request(body)
    assert request.model == "m"
    assert request.blocks == prefix_blocks(prompt_text(body))
    assert route_request({"model": 42}).model is None

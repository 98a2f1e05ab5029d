"""The prefix index and the conversations resident on each node."""

from __future__ import annotations

from service.routing.prefix import Conversations, PrefixIndex
from service.routing.request import BLOCK_CHARS
from service.shape import prefix_blocks
from tests.service.routing.helpers import prompt


def test_prefix_index_forgets_least_recently_used_blocks():
    index = PrefixIndex(capacity=3)
    blocks = prefix_blocks(prompt("q", 4))
    index.record(blocks[:2], "a")
    index.record(blocks[2:4], "b")  # evicts blocks[0]
    assert index.longest_match(blocks[:1], {"a", "b"}) == (None, 0)
    assert index.longest_match(blocks[:2], {"a", "b"}) == ("a", 2)
    assert index.longest_match(blocks, {"a", "b"}) == ("b", 4)
    assert index.longest_match(blocks, {"a"}) == ("a", 2)


def turns(*lengths: int) -> list[list[bytes]]:
    """The prefix blocks of one conversation's turns, each resending the
    history: a prompt of `lengths[k]` blocks at turn k."""
    text = prompt("conversation ", max(lengths))
    return [prefix_blocks(text[: BLOCK_CHARS * n]) for n in lengths]


def test_a_conversation_is_resident_once_it_has_continued():
    talk = Conversations(linger=10)
    first, second, third = turns(2, 4, 6)
    assert talk.continued(first) is None
    talk.record("a", first, None, now=0)
    assert talk.resident("a", 0) == 0  # a one-off prompt, as far as anyone knows
    assert talk.continued(second) == first[-1]
    talk.record("a", second, first[-1], now=1)
    assert talk.resident("a", 1) == 1
    talk.record("b", third, talk.continued(third), now=2)  # the conversation moved to b
    assert (talk.resident("a", 2), talk.resident("b", 2)) == (0, 1)
    assert talk.resident("b", 12.5) == 0  # quiet for longer than the linger: gone


def test_one_off_prompts_never_count_as_residents():
    talk = Conversations()
    for i in range(50):
        talk.record("a", prefix_blocks(prompt(f"prompt {i} ", 3)), None, now=i * 0.1)
    assert talk.resident("a", 5.0) == 0


def test_conversations_forget_the_oldest_tips_beyond_capacity():
    talk = Conversations(capacity=3)
    for i in range(5):
        blocks = prefix_blocks(prompt(f"c{i} ", 2))
        talk.record("a", blocks, None, now=0)
        talk.record("a", blocks + prefix_blocks(prompt(f"c{i} ", 3))[2:], blocks[-1], now=0)
    assert talk.resident("a", 0) == 3


def test_a_prompt_that_starts_like_earlier_ones_is_resident_at_once():
    talk = Conversations(linger=10)
    talk.record("a", [b"system", b"question 1"], None, now=0, shared=True)  # a shared system prompt
    talk.record("a", [b"system", b"question 2"], None, now=0, shared=True)
    assert talk.resident("a", 0) == 2
    talk.record("a", [b"system", b"question 1", b"answer 1"], b"question 1", now=1)  # continued: still one
    assert talk.resident("a", 1) == 2

"""Two workers' policies, each mirrored to the other (service/routing/mirror.py),
route as one process would: a conversation one worker placed is found by the
other, the other's requests count in each node's load and slots, and a
sibling gone takes its requests with it. The link is a direct call here; the
socket is tests/service/test_siblings.py's."""

from __future__ import annotations

import json

import pytest

from service.routing.load import LoadPolicy
from service.routing.mirror import PROGRESS_EVERY, MirroredPolicy
from service.routing.request import RouteRequest
from service.shape import prefix_blocks
from tests.helpers import START
from tests.service.routing.helpers import prompt, state


class Worker:
    """One worker: its policy, its view of the nodes, and its sibling counts."""

    def __init__(self, name: str, nodes: list[str]) -> None:
        self.name = name
        self.states = {n: state(n) for n in nodes}
        self.inner = LoadPolicy()
        self.outbox: list[list] = []
        self.policy = MirroredPolicy(self.inner, publish=self.outbox.append, lookup=self.states.get,
                                     count=self.count, clock=lambda: START + 100)
        self.tickets = iter(range(1, 10_000))

    def count(self, node_id: str, delta: int) -> None:
        self.states[node_id].sibling_inflight += delta

    def deliver_to(self, other: Worker) -> None:
        # Through JSON, as the link carries them.
        for event in self.outbox:
            other.policy.apply(self.name, json.loads(json.dumps(event)))
        self.outbox.clear()

    def route(self, request: RouteRequest, now: float, *, finish: bool = False) -> tuple[int, str]:
        decision = self.policy.choose(list(self.states.values()), request, now)
        ticket = next(self.tickets)
        self.policy.sent(ticket, decision, request, stream=True, now=now)
        self.states[decision.node_id].local_inflight += 1
        self.policy.answered(ticket, now)
        if finish:
            self.end(ticket, decision.node_id, now + 1)
        return ticket, decision.node_id

    def end(self, ticket: int, node_id: str, now: float) -> None:
        self.policy.done(ticket, now)
        self.states[node_id].local_inflight -= 1


def chat(seed: str, turns: int) -> RouteRequest:
    text = prompt(seed, 2 + 2 * turns)
    return RouteRequest(blocks=prefix_blocks(text), prompt_chars=len(text), out_tokens=64)


NODES = ["a", "b", "c", "d"]


def test_a_conversation_placed_by_one_worker_is_found_by_the_other():
    one, two = Worker("w1", NODES), Worker("w2", NODES)
    placed = {}
    for i in range(12):
        _, placed[i] = one.route(chat(f"conv{i}-", 1), START, finish=True)
    one.deliver_to(two)
    for i in range(12):
        _, node = two.route(chat(f"conv{i}-", 2), START + 2, finish=True)
        assert node == placed[i], f"conversation {i} moved from {placed[i]} to {node}"


def test_without_the_mirror_the_other_worker_knows_nothing_of_it():
    # The same scripted traffic, the events never delivered: the second worker
    # places the follow-ups on its own, and some leave their node.
    one, two = Worker("w1", NODES), Worker("w2", NODES)
    placed = {i: one.route(chat(f"conv{i}-", 1), START, finish=True)[1] for i in range(12)}
    one.outbox.clear()
    moved = sum(two.route(chat(f"conv{i}-", 2), START + 2, finish=True)[1] != placed[i] for i in range(12))
    assert moved > 0


def test_the_siblings_requests_count_in_the_load_and_end_with_them():
    one, two = Worker("w1", NODES), Worker("w2", NODES)
    tickets = [one.route(RouteRequest(prompt_chars=400, out_tokens=200), START) for _ in range(8)]
    one.deliver_to(two)
    assert sum(s.sibling_inflight for s in two.states.values()) == 8
    for node_id in NODES:
        flights = two.inner.model.node(node_id).flights
        assert len(flights) == two.states[node_id].sibling_inflight
        assert all(f.out_tokens == 200 and f.answered for f in flights.values())
    for ticket, node_id in tickets:
        one.end(ticket, node_id, START + 1)
    one.deliver_to(two)
    assert sum(s.sibling_inflight for s in two.states.values()) == 0
    assert all(not two.inner.model.node(n).flights for n in NODES)


def test_progress_goes_out_every_few_tokens_and_first_tokens_teach_the_sibling():
    one, two = Worker("w1", NODES), Worker("w2", NODES)
    ticket, node_id = one.route(RouteRequest(prompt_chars=400, out_tokens=200), START)
    one.policy.first_token(ticket, START + 0.2)
    for tokens in range(1, 101):
        one.policy.progress(ticket, tokens, START + 0.2 + 0.01 * tokens)
    progress = [e for e in one.outbox if e[0] == "p"]
    assert len(progress) == 100 // PROGRESS_EVERY
    one.deliver_to(two)
    (flight,) = two.inner.model.node(node_id).flights.values()
    assert flight.first_at == pytest.approx(START + 0.2)
    assert flight.tokens == PROGRESS_EVERY * (100 // PROGRESS_EVERY)
    one.end(ticket, node_id, START + 1.3)
    one.deliver_to(two)
    assert not two.inner.model.node(node_id).flights
    # What the sibling measured is what the worker that relayed it did.
    assert two.inner.model.node(node_id).token_time == pytest.approx(0.01, rel=0.05)
    assert two.inner.model.node(node_id).token_time == pytest.approx(one.inner.model.node(node_id).token_time)


def test_a_sibling_gone_takes_its_requests_with_it():
    one, two = Worker("w1", NODES), Worker("w2", NODES)
    for _ in range(5):
        one.route(RouteRequest(prompt_chars=400, out_tokens=200), START)
    one.deliver_to(two)
    assert sum(s.sibling_inflight for s in two.states.values()) == 5
    two.policy.sibling_gone("w1")
    assert sum(s.sibling_inflight for s in two.states.values()) == 0
    assert all(not two.inner.model.node(n).flights for n in NODES)


def test_events_for_unknown_requests_or_nodes_are_ignored():
    two = Worker("w2", NODES)
    two.policy.apply("w1", ["d", 7, START])  # sent before the link came up
    two.policy.apply("w1", ["s", 8, "gone-node", START, True, None, [], 10, 16, None, None])
    two.policy.apply("w1", ["d", 8, START + 1])
    assert sum(s.sibling_inflight for s in two.states.values()) == 0


@pytest.mark.parametrize("event", [[], ["s", 1], ["s", "x"], ["zz", 1, START], ["s", 1, "a", START, True, None,
                                                                              ["not hex"], 1, 1, None, None]])
def test_a_malformed_event_is_a_value_error(event):
    two = Worker("w2", NODES)
    two.policy.apply("w1", ["s", 1, "a", START, True, None, [], 10, 16, None, None])
    with pytest.raises(ValueError):
        two.policy.apply("w1", event)

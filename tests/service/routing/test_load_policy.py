"""The load policy: the cost of each node, prefix affinity, conversations,
near-tie spreading; and the simple policies."""

from __future__ import annotations

import random

import pytest

from service.routing import make_policy
from service.routing.least_inflight import LeastInflightPolicy
from service.routing.load import TTFT_WEIGHT, LoadPolicy
from service.routing.load_model import FALLBACK_PREFILL_STEPS, FALLBACK_TOKEN_TIME
from service.routing.random_choice import RandomPolicy
from service.routing.request import BLOCK_CHARS, RouteRequest
from service.routing.round_robin import RoundRobinPolicy
from service.shape import prefix_blocks, route_request
from tests.service.routing.helpers import measured, prompt, send, state, streaming

NOW = 1000.0


def choose(policy, candidates, request=None):
    return policy.choose(candidates, request or RouteRequest(out_tokens=100), NOW)


def estimate(policy, candidates, request=None):
    return policy.estimates(candidates, request or RouteRequest(out_tokens=100), NOW)


# --- the cost ---


def test_an_idle_node_costs_its_generation_time():
    policy = LoadPolicy()
    found = estimate(policy, [measured(policy, state("a"), 0.02), measured(policy, state("b"), 0.01)])
    assert found["a"].ttft == 0 and found["a"].end == pytest.approx(2.0)
    assert found["a"].cost == pytest.approx(2.0) and found["b"].cost == pytest.approx(1.0)


def test_a_full_node_costs_its_wait_for_a_slot_many_times_over():
    policy = LoadPolicy()
    policy.report("a", 8, 1, None, NOW)
    policy.report("b", 8, 1, None, NOW)
    a, b = measured(policy, state("a", inflight=8), 0.01), measured(policy, state("b", inflight=7), 0.01)
    policy.model.mean_out = 256.0
    found = estimate(policy, [a, b])
    assert found["a"].ttft == pytest.approx(2.56 / 9) and found["a"].queued
    assert found["b"].ttft == 0 and not found["b"].queued
    assert found["a"].cost == pytest.approx(2.56 / 9 * (1 + TTFT_WEIGHT) + 1.0)


def test_the_load_policy_avoids_a_node_whose_slots_free_late():
    policy = LoadPolicy()
    for node_id in ("late", "soon"):
        policy.report(node_id, 8, 1, None, NOW)
    late, soon = measured(policy, state("late"), 0.01), measured(policy, state("soon"), 0.01)
    streaming(policy, late, NOW, *[(256, 6)] * 8)
    streaming(policy, soon, NOW, *[(256, 6)] * 7, (256, 250))
    assert choose(policy, [late, soon], RouteRequest(out_tokens=50)).node_id == "soon"


def test_an_unseen_fleet_spreads_instead_of_piling_onto_the_fastest_node():
    """No node has shown its batch size: each takes one, then the next request
    weighs the first's release against an idle node."""
    policy = LoadPolicy()
    fast, slow = measured(policy, state("fast"), 0.01), measured(policy, state("slow"), 0.012)
    first = send(policy, [fast, slow], RouteRequest(out_tokens=200), NOW)[1]
    assert first.node_id == "fast"
    assert send(policy, [fast, slow], RouteRequest(out_tokens=200), NOW)[1].node_id == "slow"


def test_prompt_length_is_prefill_time_on_each_node():
    policy = LoadPolicy()
    request = RouteRequest(prompt_chars=4000, out_tokens=10)  # 1000 tokens
    found = estimate(policy, [measured(policy, state("fast"), 0.01), measured(policy, state("slow"), 0.025)],
                     request)
    assert found["fast"].ttft == pytest.approx(0.01 * FALLBACK_PREFILL_STEPS * 1000)
    assert found["slow"].ttft == pytest.approx(0.025 * FALLBACK_PREFILL_STEPS * 1000)


def test_prefill_sent_to_a_node_steers_the_next_request_elsewhere():
    policy = LoadPolicy()
    a, b = measured(policy, state("a"), 0.01), measured(policy, state("b"), 0.01)
    _, took = send(policy, [a, b], RouteRequest(prompt_chars=40_000, out_tokens=10), NOW)  # 1 s of prefill
    other = "b" if took.node_id == "a" else "a"
    took.local_inflight = 0  # only the backlog differs
    assert choose(policy, [a, b], RouteRequest(out_tokens=10)).node_id == other


def test_no_node_measured_means_equal_speeds():
    policy = LoadPolicy()
    found = estimate(policy, [state("a"), state("b")])
    assert found["a"].cost == found["b"].cost == pytest.approx(FALLBACK_TOKEN_TIME * 100)


@pytest.mark.parametrize(("kv", "penalty"), [(None, 1.0), (0.0, 1.0), (0.9, 1.0), (0.95, 1.5), (1.0, 2.0)])
def test_kv_penalty_starts_above_ninety_percent(kv, penalty):
    policy = LoadPolicy()
    assert estimate(policy, [measured(policy, state("a", kv=kv), 0.01)])["a"].cost == pytest.approx(penalty)


def test_load_policy_picks_the_cheapest_and_says_why():
    policy = LoadPolicy()
    decision = choose(policy, [measured(policy, state("a"), 0.02), measured(policy, state("b"), 0.01)])
    assert decision.node_id == "b"
    assert decision.reason == "load ttft=0.000s end=1.00s" and decision.kind == "load"
    assert decision.estimate.end == pytest.approx(1.0)


def test_long_answers_go_to_fast_nodes_short_ones_fill_slow_nodes():
    policy = LoadPolicy()
    policy.report("fast", 8, 1, None, NOW)
    policy.model.mean_out = 256.0
    fast = measured(policy, state("fast", inflight=9), 0.01)  # 2 waiting for a slot: 0.64 s to start
    slow = measured(policy, state("slow"), 0.025)
    assert choose(policy, [fast, slow], RouteRequest(out_tokens=2000)).node_id == "fast"
    assert choose(policy, [fast, slow], RouteRequest(out_tokens=16)).node_id == "slow"


def test_choosing_changes_nothing_until_the_node_takes_the_request():
    policy = LoadPolicy()
    request = RouteRequest(blocks=prefix_blocks(prompt("p", 3)), prompt_chars=3 * BLOCK_CHARS)
    a = state("a")
    decision = choose(policy, [a], request)
    policy.sent(1, decision, request, stream=True, now=NOW)
    policy.failed(1, NOW)  # retried elsewhere
    policy.done(1, NOW)
    assert policy.prefixes.longest_match(request.blocks, {"a"}) == (None, 0)


# --- prefix affinity ---


def routed(policy: LoadPolicy, node, request: RouteRequest) -> None:
    """The node served the request (whatever the policy would have chosen)."""
    from service.routing.policy import Decision

    decision = Decision(node, "test", "test", memo=policy.choose([node], request, NOW).memo)
    policy.sent(99, decision, request, stream=False, now=NOW)
    policy.answered(99, NOW)
    policy.done(99, NOW)


def test_affinity_sends_a_shared_prefix_back_to_its_node():
    policy = LoadPolicy(affinity_slack=0.5)
    request = RouteRequest(blocks=prefix_blocks(prompt("x", 4)))
    a, b = measured(policy, state("a"), 0.02), measured(policy, state("b"), 0.01)
    routed(policy, a, request)
    assert choose(policy, [a, b], request).node_id == "b"  # a costs twice b: not within 1.5x
    measured(policy, a, 0.01)
    decision = choose(policy, [a, b], request)
    assert decision.node_id == "a" and decision.kind == "affinity"
    assert decision.reason.startswith("load affinity=4 ")


@pytest.mark.parametrize(("affine_speed", "held"), [(1.0, True), (1.5, True), (1.6, False)])
def test_affinity_holds_only_within_the_slack(affine_speed, held):
    policy = LoadPolicy(affinity_slack=0.5)
    request = RouteRequest(blocks=prefix_blocks(prompt("y", 2)))
    affine, other = measured(policy, state("affine"), 0.01 * affine_speed), measured(policy, state("other"), 0.01)
    routed(policy, affine, request)
    assert (choose(policy, [affine, other], request).node_id == "affine") is held


def test_affinity_prefers_the_longest_matching_chain():
    policy = LoadPolicy()
    shared = prompt("s", 2)
    a, b, c = state("a"), state("b"), state("c")
    routed(policy, a, RouteRequest(blocks=prefix_blocks(shared)))
    routed(policy, b, RouteRequest(blocks=prefix_blocks(shared + prompt("t", 2))))
    longer_still = RouteRequest(blocks=prefix_blocks(shared + prompt("t", 2) + prompt("u", 1)))
    decision = choose(policy, [a, b, c], longer_still)
    assert decision.node_id == "b" and "affinity=4" in decision.reason


def test_affinity_ignores_an_owner_that_is_not_a_candidate():
    policy = LoadPolicy()
    request = RouteRequest(blocks=prefix_blocks(prompt("z", 3)))
    routed(policy, state("gone"), request)
    decision = choose(policy, [measured(policy, state("a"), 0.02), measured(policy, state("b"), 0.01)], request)
    assert decision.node_id == "b" and "affinity" not in decision.reason


# --- near ties ---


def test_near_ties_are_broken_by_rendezvous_and_instances_agree():
    request = RouteRequest(blocks=prefix_blocks(prompt("r", 2)))

    def fleet(policy):
        return [measured(policy, state(i), t) for i, t in (("a", 1.0), ("b", 1.05), ("c", 1.09))]

    first = LoadPolicy()
    chosen = choose(first, fleet(first), request).node_id
    for _ in range(5):  # a fresh policy is another instance deciding from the same view
        other = LoadPolicy()
        assert choose(other, list(reversed(fleet(other))), request).node_id == chosen


def test_near_ties_spread_different_prompts_over_the_tied_nodes():
    candidates = [state("a"), state("b"), state("c")]
    chosen = {choose(LoadPolicy(), candidates, RouteRequest(blocks=prefix_blocks(f"prompt {i} " * 60))).node_id
              for i in range(60)}
    assert chosen == {"a", "b", "c"}


def test_near_ties_spread_prompts_that_share_a_system_prompt():
    candidates = [state("a"), state("b"), state("c")]
    system = prompt("You are a helpful assistant. ", 4)
    chosen = {choose(LoadPolicy(), candidates, route_request({"prompt": system + f"question {i} " * 30})).node_id
              for i in range(60)}
    assert chosen == {"a", "b", "c"}


def test_a_node_more_than_ten_percent_dearer_is_never_a_tie():
    for i in range(40):
        policy = LoadPolicy()
        request = RouteRequest(blocks=prefix_blocks(f"{i} " * BLOCK_CHARS))
        nodes = [measured(policy, state("a"), 1.0), measured(policy, state("b"), 1.11)]
        assert choose(policy, nodes, request).node_id == "a"


def test_near_ties_without_a_prompt_are_spread_at_random():
    random.seed(7)
    candidates = [state("a"), state("b")]
    assert {choose(LoadPolicy(), candidates, RouteRequest()).node_id for _ in range(50)} == {"a", "b"}


# --- conversations ---


def test_a_new_conversation_keeps_off_a_node_full_of_resident_ones():
    policy = LoadPolicy()
    policy.report("crowded", 8, 1, None, NOW)
    policy.report("roomy", 8, 1, None, NOW)
    crowded, roomy = measured(policy, state("crowded"), 0.01), measured(policy, state("roomy"), 0.012)
    for i in range(8):  # eight conversations live on `crowded`, all waiting for their users now
        first = [b"system", f"question {i}".encode()]
        policy.conversations.record("crowded", first, None, NOW)
        policy.conversations.record("crowded", [*first, f"answer {i}".encode()], first[-1], NOW)
    assert policy.conversations.resident("crowded", NOW) == 8
    fresh = RouteRequest(blocks=prefix_blocks(prompt("new ", 2)), prompt_chars=2 * BLOCK_CHARS, out_tokens=100)
    assert choose(policy, [crowded, roomy], fresh).node_id == "roomy"
    # The same nodes for a request that continues a conversation: only what is in flight counts.
    policy.conversations.record("crowded", fresh.blocks, None, NOW)
    follow_up = RouteRequest(blocks=fresh.blocks + [b"y" * 8], prompt_chars=3 * BLOCK_CHARS, out_tokens=100)
    assert choose(policy, [crowded, roomy], follow_up).node_id == "crowded"


def test_the_load_policy_marks_prompts_that_start_like_earlier_ones():
    policy = LoadPolicy()
    nodes = [state("a")]
    system = prompt("system ", 2)
    send(policy, nodes, route_request({"prompt": system + prompt("question 1 ", 1)}), NOW)
    assert policy.conversations.resident("a", NOW) == 0
    send(policy, nodes, route_request({"prompt": system + prompt("question 2 ", 1)}), NOW)
    assert policy.conversations.resident("a", NOW) == 1


# --- the simple policies ---


def test_round_robin_cycles_in_node_id_order():
    policy = RoundRobinPolicy()
    candidates = [state("c"), state("a"), state("b")]
    assert [choose(policy, candidates).node_id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert choose(policy, candidates).reason == "round_robin"


def test_least_inflight_picks_the_fewest_and_spreads_ties():
    policy = LeastInflightPolicy()
    candidates = [state("a", inflight=2), state("b", inflight=1), state("c", inflight=1)]
    assert {choose(policy, candidates).node_id for _ in range(40)} == {"b", "c"}
    assert choose(policy, candidates).reason == "least_inflight inflight=1"


def test_random_picks_only_candidates():
    assert {choose(RandomPolicy(), [state("a"), state("b")]).node_id for _ in range(60)} == {"a", "b"}


@pytest.mark.parametrize(
    ("name", "kind"),
    [("load", LoadPolicy), ("round_robin", RoundRobinPolicy), ("random", RandomPolicy),
     ("least_inflight", LeastInflightPolicy)],
)
def test_make_policy_by_name(name, kind):
    policy = make_policy(name)
    assert isinstance(policy, kind) and policy.name == name


def test_make_policy_passes_the_affinity_slack():
    assert make_policy("load", affinity_slack=2.0).affinity_slack == 2.0


# --- client-named sessions ---


def test_a_named_session_returns_to_its_node_when_its_prompt_does_not():
    policy = LoadPolicy()
    a, b = measured(policy, state("a"), 0.01), measured(policy, state("b"), 0.0105)
    first = route_request({"prompt": "short turn", "prompt_cache_key": "chat-1"})
    _, took = send(policy, [a, b], first, NOW)
    took.local_inflight = 0
    # A prompt shorter than a block has no prefix to match: the key finds the node.
    for turn in range(5):
        decision = choose(policy, [a, b], route_request({"prompt": f"turn {turn}", "prompt_cache_key": "chat-1"}))
        assert decision.node_id == took.node_id and decision.kind == "session"


def test_a_session_is_held_only_within_the_slack():
    policy = LoadPolicy(affinity_slack=0.15)
    a, b = measured(policy, state("a"), 0.01), measured(policy, state("b"), 0.01)
    request = route_request({"prompt": "x", "user": "alice"})
    decision = policy.choose([a], request, NOW)
    policy.sent(1, decision, request, stream=True, now=NOW)
    policy.answered(1, NOW)
    measured(policy, a, 0.02)  # alice's node is twice as slow now
    assert choose(policy, [a, b], request).node_id == "b"


@pytest.mark.parametrize(
    ("body", "header", "hint"),
    [({"prompt_cache_key": "k", "user": "u"}, "s", "cache:k"), ({"user": "u"}, "s", "session:s"),
     ({"user": "u"}, None, "user:u"), ({"user": 7}, None, None), ({}, "", None)],
)
def test_the_most_specific_session_hint_wins(body, header, hint):
    assert route_request(body, header).session == hint

"""Routing policies: the load cost, prefix affinity, near-tie spreading, the
simple policies, prompt hashing, and which nodes Proxy.select may pick."""

from __future__ import annotations

import random

import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from model.errors import NoRoutableNode
from model.node import Node, NodeInfo, NodeStatus
from service.balancer import (
    BLOCK_CHARS,
    DEFAULT_TOKEN_TIME,
    MAX_BLOCKS,
    PREFILL_STEPS_PER_TOKEN,
    TTFT_WEIGHT,
    Conversations,
    LeastInflightPolicy,
    LoadPolicy,
    PrefixIndex,
    RandomPolicy,
    RoundRobinPolicy,
    RouteRequest,
    make_policy,
)
from service.fleet import Fleet, NodeState, Sent
from service.proxy import Proxy, UpstreamConfig
from service.shape import prefix_blocks, prompt_text, route_request
from tests.helpers import START


def state(
    node_id: str,
    *,
    inflight: int = 0,
    running: int = 0,
    waiting: int = 0,
    kv: float | None = None,
    token_time: float | None = None,
    models: list[str] | None = None,
) -> NodeState:
    node = Node(
        node_id,
        node_status=NodeStatus.ONLINE,
        node_info=NodeInfo(running=running, waiting=waiting),
        models=models or [],
        update_time=START,
    )
    s = NodeState(node, local_inflight=inflight, kv_usage=kv, token_time=token_time)
    s.take_report(node)
    return s


def prompt(seed: str, blocks: int) -> str:
    """Text of exactly `blocks` whole prefix blocks, distinct per seed."""
    return (seed * BLOCK_CHARS * blocks)[: BLOCK_CHARS * blocks]


# --- the load cost ---


def estimate(candidates, request=None, policy=None):
    return (policy or LoadPolicy()).estimates(candidates, request or RouteRequest(out_tokens=100))


def test_an_idle_node_costs_its_generation_time():
    found = estimate([state("a", token_time=0.02), state("b", token_time=0.01)])
    assert found["a"].ttft == 0 and found["a"].end == pytest.approx(2.0)
    assert found["a"].cost == pytest.approx(2.0) and found["b"].cost == pytest.approx(1.0)


def test_requests_beyond_the_slots_wait_their_turn():
    # 8 slots (the default) all taken by requests nvllm knows nothing of: they
    # are somewhere in an average answer (256 tokens until measured), the
    # first to end after 256 / 9 tokens.
    found = estimate([state("a", token_time=0.01, inflight=8), state("b", token_time=0.01, inflight=7)])
    assert found["a"].ttft == pytest.approx(2.56 / 9)
    assert found["b"].ttft == 0
    assert found["a"].cost == pytest.approx(2.56 / 9 * (1 + TTFT_WEIGHT) + 1.0)


def streaming(node: NodeState, now: float, *answers: tuple[int, int]) -> None:
    """Our streams on `node`: (max_tokens, tokens streamed so far) each."""
    for ticket, (out, done) in enumerate(answers):
        node.sent[ticket] = Sent(now - 1.0, out, first_at=now - 0.5, tokens=done)
        node.local_inflight += 1


def test_a_full_node_frees_a_slot_when_its_shortest_answer_ends(clock):
    node = state("a", token_time=0.01)
    streaming(node, clock(), *[(200, 10)] * 7, (50, 40))  # 8 slots taken; one answer has 10 tokens left
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(0.10)
    node.sent[7] = Sent(clock() - 1.0, 200, first_at=clock() - 0.5, tokens=10)  # now all have 190 left
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(1.90)


def test_queued_requests_ahead_take_the_first_slots_to_free(clock):
    node = state("a", token_time=0.01)
    streaming(node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(8)])  # free after 10, 20, ... 80 tokens
    node.local_inflight += 2  # two requests queued ahead of the next
    # They take the slots freed after 10 and 20 tokens; the next gets the third.
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(0.30)
    node.local_inflight += 8  # ten queued: eight take the eight slots, the next two wait for
    # the first two of them to finish their average answer (from 0.1 and 0.2 s), the next one
    # for the third (from 0.3 s).
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(0.30 + 1.0)


def test_a_whole_answer_is_assumed_to_run_since_it_was_sent(clock):
    node = state("a", token_time=0.01)
    for ticket in range(8):
        node.sent[ticket] = Sent(clock() - 0.3, 100, first_at=clock() - 0.3)  # 30 of 100 tokens by now
        node.local_inflight += 1
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(0.70)


def test_more_running_than_slots_means_the_slot_count_is_stale(clock):
    node = state("a", token_time=0.01)
    streaming(node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(10)])  # 10 running, 8 slots assumed
    assert node.slot_wait(clock(), 0.01, 100) == 0.0  # the node has shown more slots: one more fits
    node.local_inflight += 2  # two more, not started: one takes the 11th slot, one the first to free
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(0.20)  # the next: the second to free


def test_the_load_policy_avoids_a_node_whose_slots_free_late(clock):
    policy = LoadPolicy(clock=clock)
    late, soon = state("late", token_time=0.01), state("soon", token_time=0.01)
    streaming(late, clock(), *[(256, 6)] * 8)
    streaming(soon, clock(), *[(256, 6)] * 7, (256, 250))
    assert policy.choose([late, soon], RouteRequest(out_tokens=50)).state.node_id == "soon"


def test_slots_are_learned_from_a_report_with_a_queue():
    busy = state("a", token_time=0.01, running=4, waiting=2)
    assert busy.slots == 4
    assert state("b", running=20).slots == 20  # seen running 20 with no queue: at least 20


def test_prompt_length_is_prefill_time_on_each_node():
    request = RouteRequest(prompt_chars=4000, out_tokens=10)  # 1000 tokens
    found = estimate([state("fast", token_time=0.01), state("slow", token_time=0.025)], request)
    assert found["fast"].ttft == pytest.approx(0.01 * PREFILL_STEPS_PER_TOKEN * 1000)
    assert found["slow"].ttft == pytest.approx(0.025 * PREFILL_STEPS_PER_TOKEN * 1000)


def test_prefill_sent_to_a_node_is_a_backlog_that_drains(clock):
    policy = LoadPolicy(clock=clock)
    a, b = state("a", token_time=0.01), state("b", token_time=0.01)
    long_prompt = RouteRequest(blocks=[], prompt_chars=40_000, out_tokens=10)  # 10,000 tokens: 1 s
    decision = policy.choose([a, b], long_prompt)
    policy.routed(decision.state, long_prompt)
    assert decision.state.prefill_backlog(clock()) == pytest.approx(1.0)
    other = "b" if decision.state.node_id == "a" else "a"
    assert policy.choose([a, b], RouteRequest(out_tokens=10)).state.node_id == other
    clock.advance(0.4)
    assert decision.state.prefill_backlog(clock()) == pytest.approx(0.6)
    clock.advance(1)
    assert decision.state.prefill_backlog(clock()) == 0


def test_unmeasured_node_gets_the_fleet_median_speed():
    found = estimate([state("a", token_time=0.01), state("b", token_time=0.03), state("c", token_time=0.05),
                      state("new")])
    assert found["new"].end == pytest.approx(0.03 * 100)


def test_no_node_measured_means_equal_speeds():
    found = estimate([state("a"), state("b")])
    assert found["a"].cost == found["b"].cost == pytest.approx(DEFAULT_TOKEN_TIME * 100)


@pytest.mark.parametrize(
    ("kv", "penalty"), [(None, 1.0), (0.0, 1.0), (0.9, 1.0), (0.95, 1.5), (1.0, 2.0)]
)
def test_kv_penalty_starts_above_ninety_percent(kv, penalty):
    assert estimate([state("a", token_time=0.01, kv=kv)])["a"].cost == pytest.approx(1.0 * penalty)


def test_load_policy_picks_the_cheapest_and_says_why():
    decision = LoadPolicy().choose([state("a", token_time=0.02), state("b", token_time=0.01)],
                                   RouteRequest(out_tokens=100))
    assert decision.state.node_id == "b"
    assert decision.reason == "load ttft=0.000s end=1.00s"


def test_long_answers_go_to_fast_nodes_short_ones_fill_slow_nodes():
    fast = state("fast", token_time=0.01, inflight=9)  # 2 waiting for a slot: 0.64 s to start
    slow = state("slow", token_time=0.025)
    policy = LoadPolicy()
    assert policy.choose([fast, slow], RouteRequest(out_tokens=2000)).state.node_id == "fast"
    assert policy.choose([fast, slow], RouteRequest(out_tokens=16)).state.node_id == "slow"


# --- prefix affinity ---


def test_affinity_sends_a_shared_prefix_back_to_its_node():
    policy = LoadPolicy(affinity_slack=0.5)
    request = RouteRequest(blocks=prefix_blocks(prompt("x", 4)))
    a, b = state("a", token_time=0.02), state("b", token_time=0.01)
    policy.routed(a, request)
    decision = policy.choose([a, b], request)  # a costs twice b: not within 1.5x
    assert decision.state.node_id == "b"
    a.token_time, b.token_time = 0.01, 0.01
    decision = policy.choose([a, b], request)
    assert decision.state.node_id == "a"
    assert decision.reason.startswith("load affinity=4 ")


@pytest.mark.parametrize(("affine_speed", "held"), [(1.0, True), (1.5, True), (1.6, False)])
def test_affinity_holds_only_within_the_slack(affine_speed, held):
    policy = LoadPolicy(affinity_slack=0.5)
    request = RouteRequest(blocks=prefix_blocks(prompt("y", 2)))
    # The affine node costs 1, 1.5 (held: at most 1.5 x the cheapest) or 1.6
    # times the other (not held).
    affine, other = state("affine", token_time=0.01 * affine_speed), state("other", token_time=0.01)
    policy.routed(affine, request)
    chosen = policy.choose([affine, other], request).state.node_id
    assert (chosen == "affine") is held


def test_affinity_prefers_the_longest_matching_chain():
    policy = LoadPolicy()
    shared = prompt("s", 2)
    short = RouteRequest(blocks=prefix_blocks(shared))
    long = RouteRequest(blocks=prefix_blocks(shared + prompt("t", 2)))
    a, b, c = state("a"), state("b"), state("c")
    policy.routed(a, short)
    policy.routed(b, long)
    longer_still = RouteRequest(blocks=prefix_blocks(shared + prompt("t", 2) + prompt("u", 1)))
    decision = policy.choose([a, b, c], longer_still)
    assert decision.state.node_id == "b"
    assert "affinity=4" in decision.reason


def test_affinity_ignores_an_owner_that_is_not_a_candidate():
    policy = LoadPolicy()
    request = RouteRequest(blocks=prefix_blocks(prompt("z", 3)))
    policy.routed(state("gone"), request)
    decision = policy.choose([state("a", token_time=0.02), state("b", token_time=0.01)], request)
    assert decision.state.node_id == "b"
    assert "affinity" not in decision.reason


def test_prefix_index_forgets_least_recently_used_blocks():
    index = PrefixIndex(capacity=3)
    blocks = prefix_blocks(prompt("q", 4))
    index.record(blocks[:2], "a")
    index.record(blocks[2:4], "b")  # evicts blocks[0]
    assert index.longest_match(blocks[:1], {"a", "b"}) == (None, 0)
    assert index.longest_match(blocks[:2], {"a", "b"}) == ("a", 2)
    assert index.longest_match(blocks, {"a", "b"}) == ("b", 4)
    assert index.longest_match(blocks, {"a"}) == ("a", 2)


# --- near ties ---


def test_near_ties_are_broken_by_rendezvous_and_instances_agree():
    request = RouteRequest(blocks=prefix_blocks(prompt("r", 2)))
    candidates = [state("a", token_time=1.0), state("b", token_time=1.05), state("c", token_time=1.09)]
    first = LoadPolicy().choose(candidates, request).state.node_id
    for _ in range(5):  # a fresh policy is another instance deciding from the same view
        assert LoadPolicy().choose(list(reversed(candidates)), request).state.node_id == first


def test_near_ties_spread_different_prompts_over_the_tied_nodes():
    candidates = [state("a"), state("b"), state("c")]
    chosen = {
        LoadPolicy().choose(candidates, RouteRequest(blocks=prefix_blocks(f"prompt {i} " * 60))).state.node_id
        for i in range(60)
    }
    assert chosen == {"a", "b", "c"}


def test_near_ties_spread_prompts_that_share_a_system_prompt():
    candidates = [state("a"), state("b"), state("c")]
    system = prompt("You are a helpful assistant. ", 4)
    chosen = {
        LoadPolicy().choose(candidates, route_request({"prompt": system + f"question {i} " * 30})).state.node_id
        for i in range(60)
    }
    assert chosen == {"a", "b", "c"}


def test_a_node_more_than_ten_percent_dearer_is_never_a_tie():
    for i in range(40):
        request = RouteRequest(blocks=prefix_blocks(f"{i} " * BLOCK_CHARS))
        decision = LoadPolicy().choose([state("a", token_time=1.0), state("b", token_time=1.11)], request)
        assert decision.state.node_id == "a"


def test_near_ties_without_a_prompt_are_spread_at_random():
    random.seed(7)
    candidates = [state("a"), state("b")]
    chosen = {LoadPolicy().choose(candidates, RouteRequest()).state.node_id for _ in range(50)}
    assert chosen == {"a", "b"}


# --- what a prompt hashes to ---


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


# --- the simple policies ---


def test_round_robin_cycles_in_node_id_order():
    policy = RoundRobinPolicy()
    candidates = [state("c"), state("a"), state("b")]
    picks = [policy.choose(candidates, RouteRequest()).state.node_id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    assert policy.choose(candidates, RouteRequest()).reason == "round_robin"


def test_least_inflight_picks_the_fewest_and_spreads_ties():
    policy = LeastInflightPolicy()
    candidates = [state("a", inflight=2), state("b", inflight=1), state("c", inflight=1)]
    chosen = {policy.choose(candidates, RouteRequest()).state.node_id for _ in range(40)}
    assert chosen == {"b", "c"}
    assert policy.choose(candidates, RouteRequest()).reason == "least_inflight inflight=1"


def test_random_picks_only_candidates():
    policy = RandomPolicy()
    chosen = {policy.choose([state("a"), state("b")], RouteRequest()).state.node_id for _ in range(60)}
    assert chosen == {"a", "b"}


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


# --- which nodes Proxy.select may pick ---


@pytest.fixture
def node_store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


@pytest.fixture
def fleet(redis, node_store, clock):
    # The refresher thread waits an hour before its first tick: the test drives
    # refresh() itself.
    fleet = Fleet(node_store, InflightStore(redis, Keys("nvllm")), refresh_interval=3600,
                  eject_after=2, clock=clock)
    yield fleet
    fleet.close()


def save(store: NodeStore, node_id: str, now: float, **fields) -> Node:
    fields.setdefault("node_status", NodeStatus.ONLINE)
    return store.save(Node(node_id, node_address="127.0.0.1", create_time=now, update_time=now, **fields))


def picks(proxy: Proxy, model: str | None, tries: int = 40) -> set[str]:
    return {proxy.select(RouteRequest(model=model)).state.node_id for _ in range(tries)}


def test_select_keeps_to_nodes_serving_the_model_or_declaring_none(node_store, fleet, clock):
    save(node_store, "a", clock(), models=["m1"])
    save(node_store, "b", clock(), models=["m2", "m1"])
    save(node_store, "any", clock())
    fleet.refresh()
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert picks(proxy, "m1") == {"a", "b", "any"}
    assert picks(proxy, "m2") == {"b", "any"}
    assert picks(proxy, "other") == {"any"}
    assert picks(proxy, None) == {"a", "b", "any"}


def test_select_with_no_node_for_the_model_names_it(node_store, fleet, clock):
    save(node_store, "a", clock(), models=["m1"])
    fleet.refresh()
    proxy = Proxy(fleet, LoadPolicy(), UpstreamConfig())
    with pytest.raises(NoRoutableNode) as raised:
        proxy.select(RouteRequest(model="llama-70b"))
    assert raised.value.code == 503
    assert "'llama-70b'" in raised.value.message


def test_select_honours_exclude(node_store, fleet, clock):
    save(node_store, "a", clock())
    save(node_store, "b", clock())
    fleet.refresh()
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert {proxy.select(RouteRequest(), frozenset({"a"})).state.node_id for _ in range(20)} == {"b"}
    with pytest.raises(NoRoutableNode):
        proxy.select(RouteRequest(), frozenset({"a", "b"}))


def test_only_live_online_healthy_nodes_are_routable(node_store, fleet, clock):
    now = clock()
    save(node_store, "ok", now)
    save(node_store, "draining", now, node_status=NodeStatus.DRAINING)
    save(node_store, "offline", now, node_status=NodeStatus.OFFLINE)
    save(node_store, "expired", now - 61, timeout=60)
    save(node_store, "probe-failing", now, probe_failing=True)
    save(node_store, "ejected", now)
    fleet.refresh()
    for _ in range(2):
        fleet.record_failure(fleet.get("ejected"), "HTTP 500")
    proxy = Proxy(fleet, RandomPolicy(), UpstreamConfig())
    assert {s.node_id for s in fleet.routable()} == {"ok"}
    assert picks(proxy, None) == {"ok"}


def test_a_node_expires_between_refreshes(node_store, fleet, clock):
    save(node_store, "a", clock(), timeout=10)
    fleet.refresh()
    assert [s.node_id for s in fleet.routable()] == ["a"]
    clock.advance(11)
    assert fleet.routable() == []


def test_a_stream_still_waiting_to_start_is_a_floor_on_the_next_wait(clock):
    policy = LoadPolicy(clock=clock)
    stuck, free = state("stuck", token_time=0.01), state("free", token_time=0.02)
    stuck.starting[1] = clock() - 0.8  # sent 0.8 s ago, no first token yet
    found = policy.estimates([stuck, free], RouteRequest(out_tokens=10))
    assert found["stuck"].ttft == pytest.approx(0.8)
    assert policy.choose([stuck, free], RouteRequest(out_tokens=10)).state.node_id == "free"


def test_first_tokens_later_than_expected_raise_the_estimate_and_fade(clock):
    policy = LoadPolicy(clock=clock)
    late, fine = state("late", token_time=0.01), state("fine", token_time=0.01)
    for _ in range(10):
        late.add_first_token(expected=0.05, seen=0.45, now=clock())  # 0.4 s later than expected, again and again
    assert late.first_token_late(clock()) == pytest.approx(0.4 * (1 - 0.8**10))
    request = RouteRequest(out_tokens=10)
    assert policy.estimates([late, fine], request)["late"].ttft == pytest.approx(0.4 * (1 - 0.8**10))
    assert policy.choose([late, fine], request).state.node_id == "fine"
    clock.advance(3.0)  # one half-life without news
    assert late.first_token_late(clock()) == pytest.approx(0.2 * (1 - 0.8**10))
    clock.advance(60.0)
    assert late.first_token_late(clock()) < 1e-6


def test_first_tokens_sooner_than_expected_lower_the_estimate_but_not_below_zero(clock):
    node = state("a", token_time=0.01)
    node.add_first_token(expected=0.5, seen=0.1, now=clock())
    assert node.first_token_late(clock()) == pytest.approx(-0.08)
    request = RouteRequest(prompt_chars=4000, out_tokens=10)  # 1000 tokens: 0.1 s of prefill expected
    assert LoadPolicy(clock=clock).estimates([node], request)["a"].ttft == pytest.approx(0.02)
    assert LoadPolicy(clock=clock).estimates([node], RouteRequest(out_tokens=10))["a"].ttft == 0.0


# --- conversations resident on a node ---


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


def test_a_new_conversation_keeps_off_a_node_full_of_resident_ones(clock):
    policy = LoadPolicy(clock=clock)
    crowded, roomy = state("crowded", token_time=0.01), state("roomy", token_time=0.012)
    for i in range(8):  # eight conversations live on `crowded`, all waiting for their users now
        first = [b"system", f"question {i}".encode()]
        policy.conversations.record("crowded", first, None, clock())
        policy.conversations.record("crowded", [*first, f"answer {i}".encode()], first[-1], clock())
    assert policy.conversations.resident("crowded", clock()) == 8
    fresh = RouteRequest(blocks=prefix_blocks(prompt("new ", 2)), prompt_chars=2 * BLOCK_CHARS, out_tokens=100)
    assert policy.choose([crowded, roomy], fresh).state.node_id == "roomy"
    # The same nodes for a request that continues a conversation: only what is in flight counts.
    policy.conversations.record("crowded", fresh.blocks, None, clock())
    follow_up = RouteRequest(blocks=fresh.blocks + [b"y" * 8], prompt_chars=3 * BLOCK_CHARS, out_tokens=100)
    assert policy.choose([crowded, roomy], follow_up).state.node_id == "crowded"


def test_a_prompt_that_starts_like_earlier_ones_is_resident_at_once():
    talk = Conversations(linger=10)
    talk.record("a", [b"system", b"question 1"], None, now=0, shared=True)  # a shared system prompt
    talk.record("a", [b"system", b"question 2"], None, now=0, shared=True)
    assert talk.resident("a", 0) == 2
    talk.record("a", [b"system", b"question 1", b"answer 1"], b"question 1", now=1)  # continued: still one
    assert talk.resident("a", 1) == 2


def test_the_load_policy_marks_prompts_that_start_like_earlier_ones(clock):
    policy = LoadPolicy(clock=clock)
    nodes = [state("a", token_time=0.01)]
    system = prompt("system ", 2)
    first = route_request({"prompt": system + prompt("question 1 ", 1)})
    policy.routed(policy.choose(nodes, first).state, first)
    assert not first.shared and policy.conversations.resident("a", clock()) == 0
    second = route_request({"prompt": system + prompt("question 2 ", 1)})
    policy.routed(policy.choose(nodes, second).state, second)
    assert second.shared and policy.conversations.resident("a", clock()) == 1


def test_a_long_queue_is_estimated_at_the_average_rate(clock):
    from service.fleet import MAX_QUEUE_STEPS

    node = state("a", token_time=0.01)
    streaming(node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(8)])
    node.local_inflight += 1000  # a thousand queued: each slot frees every 1/8 of an average answer
    assert node.slot_wait(clock(), 0.01, 100) == pytest.approx(1001 * 1.0 / 8)
    node.local_inflight = 8 + MAX_QUEUE_STEPS - 1  # as many as are simulated one by one
    assert node.slot_wait(clock(), 0.01, 100) < MAX_QUEUE_STEPS * 1.0 / 8 + 1.0

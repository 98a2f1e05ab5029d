"""The load model, driven by scripted events on a fake clock: what it learns
of each node, and when it expects a slot to free."""

from __future__ import annotations

import pytest

from service.routing.load import LoadPolicy
from service.routing.load_model import (
    ENDS_REBUILD_AFTER,
    FALLBACK_PREFILL_STEPS,
    FALLBACK_TOKEN_TIME,
    MAX_QUEUE_STEPS,
    MIN_PREFILL_SAMPLE,
    QUEUE_EVIDENCE_STEPS,
    LoadModel,
    NodeLoad,
)
from tests.service.routing.helpers import state, streaming


def full(policy: LoadPolicy, node_id: str, slots: int) -> NodeLoad:
    """The node's reports once showed a queue behind `slots` running."""
    policy.report(node_id, slots, 1, None, 0.0)
    return policy.model.node(node_id)


# --- batch slots, learned ---


def test_slots_are_learned_from_a_report_with_a_queue():
    model = LoadModel()
    model.report("a", 4, 2)
    assert model.node("a").slots == 4


def test_before_any_queue_a_node_takes_one_more_than_it_was_seen_running():
    model = LoadModel()
    assert model.node("new").slots == 1  # nothing seen: one request at a time, until it shows more
    model.report("b", 20, 0)
    assert model.node("b").slots == 21  # ran 20 with no queue: at least that many, one more to try


def test_our_own_streams_running_at_once_raise_the_bound(clock):
    policy = LoadPolicy()
    node = state("a")
    streaming(policy, node, clock(), *[(100, 5)] * 12)
    assert policy.model.node("a").slots == 13


def test_a_node_running_more_than_its_last_queue_showed_has_more_slots_now():
    model = LoadModel()
    model.report("a", 8, 3)
    model.report("a", 30, 0)
    assert model.node("a").slots == 30


def test_a_large_batch_is_found_by_use_not_assumed(clock):
    """A node of 256 slots under a rising load: the bound follows it up, and
    no estimate ever shows a phantom queue on it beyond one slot's release."""
    policy = LoadPolicy()
    node = state("big")
    for running in range(1, 200):
        streaming(policy, node, clock(), (1000, 10))
        assert policy.model.node("big").slots == running + 1


# --- when a full node frees a slot ---


def test_requests_beyond_the_slots_wait_their_turn(clock):
    # 8 slots all taken by requests nvllm knows nothing of: they are somewhere
    # in an average answer, the first to end after mean_out / 9 tokens.
    policy = LoadPolicy()
    a, b = full(policy, "a", 8), full(policy, "b", 8)
    assert a.slot_wait(clock(), 0.01, 256, load=8) == pytest.approx(2.56 / 9)
    assert b.slot_wait(clock(), 0.01, 256, load=7) == 0


def test_a_full_node_frees_a_slot_when_its_shortest_answer_ends(clock):
    policy = LoadPolicy()
    node = state("a")
    n = full(policy, "a", 8)
    tickets = streaming(policy, node, clock(), *[(200, 10)] * 7, (50, 40))  # one answer has 10 tokens left
    assert n.slot_wait(clock(), 0.01, 100, node.load) == pytest.approx(0.10)
    policy.done(tickets[-1], clock())
    node.local_inflight -= 1
    # It ended; its successor has 190 left, like the others. The projected
    # ends are recomputed from the streams' progress after ENDS_REBUILD_AFTER.
    later = ENDS_REBUILD_AFTER + 0.01
    clock.advance(later)
    streaming(policy, node, clock(), (200, 10))
    assert n.slot_wait(clock(), 0.01, 100, node.load) == pytest.approx(1.90 - later)


def test_between_recomputations_a_stream_keeping_the_pace_ends_when_projected(clock):
    policy = LoadPolicy()
    node = state("a")
    n = full(policy, "a", 2)
    first, _ = streaming(policy, node, clock(), (100, 10), (100, 50))  # 0.9 s and 0.5 s left at 10 ms a token
    assert n.slot_wait(clock(), 0.01, 100, node.load) == pytest.approx(0.5)
    clock.advance(0.05)
    policy.progress(first, 15, clock())  # five more tokens in 50 ms: on time, its end stays
    assert n.slot_wait(clock(), 0.01, 100, node.load) == pytest.approx(0.45)
    assert n.slot_wait(clock(), 0.01, 100, node.load + 1) == pytest.approx(0.85)  # the second to free
    policy.done(first, clock())
    node.local_inflight -= 1
    # One slot of two is ours: the other is spread over an average answer.
    assert n.slot_wait(clock(), 0.01, 100, node.load + 1) == pytest.approx(min(0.45, 1.0 / 2))
    # A new token time: every projection is recomputed with it.
    assert n.slot_wait(clock(), 0.02, 100, node.load + 1) == pytest.approx(min(50 * 0.02 - 0.05, 2.0 / 2))


def test_queued_requests_ahead_take_the_first_slots_to_free(clock):
    policy = LoadPolicy()
    node = state("a")
    n = full(policy, "a", 8)
    streaming(policy, node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(8)])  # free after 10, 20, ...
    # Two queued ahead take the slots freed after 10 and 20 tokens; the next gets the third.
    assert n.slot_wait(clock(), 0.01, 100, node.load + 2) == pytest.approx(0.30)
    # Ten queued: eight take the eight slots, the next two wait for the first two of them to finish
    # their average answer (from 0.1 and 0.2 s), the next one for the third (from 0.3 s).
    assert n.slot_wait(clock(), 0.01, 100, node.load + 10) == pytest.approx(0.30 + 1.0)


def test_a_whole_answer_is_assumed_to_run_since_the_node_took_it(clock):
    policy = LoadPolicy()
    n = full(policy, "a", 8)
    for ticket in range(8):
        policy.model.sent(ticket, "a", out_tokens=100, stream=False, expected_ttft=None, prefill=0.0,
                          queued=False, uncached=0.0, now=clock() - 0.3)
        policy.model.answered(ticket, clock() - 0.3)  # 30 of 100 tokens by now
    assert n.slot_wait(clock(), 0.01, 100, 8) == pytest.approx(0.70)


def test_more_running_than_slots_means_the_slot_count_is_stale(clock):
    policy = LoadPolicy()
    node = state("a")
    n = full(policy, "a", 8)
    n.most_running = 0
    streaming(policy, node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(10)])  # 10 running
    n.saturated_at = 8  # a queue once formed at 8
    assert n.slot_wait(clock(), 0.01, 100, 10) == 0.0  # the node has shown more slots: one more fits
    # Two more, not started: one takes the 11th slot, one the first to free; the next the second.
    assert n.slot_wait(clock(), 0.01, 100, 12) == pytest.approx(0.20)


def test_a_long_queue_is_estimated_at_the_average_rate(clock):
    policy = LoadPolicy()
    node = state("a")
    n = full(policy, "a", 8)
    streaming(policy, node, clock(), *[(100, 100 - 10 * (i + 1)) for i in range(8)])
    # A thousand queued: each slot frees every 1/8 of an average answer.
    assert n.slot_wait(clock(), 0.01, 100, 1008) == pytest.approx(1001 * 1.0 / 8)
    assert n.slot_wait(clock(), 0.01, 100, 8 + MAX_QUEUE_STEPS - 1) < MAX_QUEUE_STEPS * 1.0 / 8 + 1.0


# --- speeds, learned from the node's own tokens ---


def test_token_time_is_measured_on_the_tokens_after_the_first(clock):
    model = LoadModel()
    model.sent(1, "a", out_tokens=100, stream=True, expected_ttft=None, prefill=0.0, queued=False, uncached=0.0,
               now=clock())
    model.answered(1, clock())
    model.progress(1, 1, clock() + 0.5)
    model.first_token(1, clock() + 0.5)  # the prefill took 0.5 s: not a token's time
    model.progress(1, 11, clock() + 0.7)  # ten more in 0.2 s
    model.done(1, clock() + 0.7)
    assert model.node("a").token_time == pytest.approx(0.02)
    assert model.node("a").flights == {}


def test_no_node_measured_means_the_neutral_token_time_and_then_the_median():
    model = LoadModel()
    assert model.default_token_time(["a", "b"]) == FALLBACK_TOKEN_TIME
    for node_id, t in (("a", 0.01), ("b", 0.03), ("c", 0.05)):
        model.node(node_id).token_time = t
    assert model.default_token_time(["a", "b", "c", "new"]) == pytest.approx(0.03)


def test_prefill_speed_is_measured_on_first_tokens_that_did_not_queue(clock):
    model = LoadModel()
    model.node("a").token_time = 0.01
    tokens = 4 * MIN_PREFILL_SAMPLE
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=0.0, prefill=0.0, queued=False, uncached=tokens,
               now=clock())
    model.first_token(1, clock() + 0.01 + tokens * 0.001)  # one step, then 1 ms per prompt token
    assert model.node("a").prefill_time == pytest.approx(0.001)
    e = model.expect("a", load=0, uncached=1000, out_tokens=10, default_token_time=0.01, now=clock() + 5)
    assert e.prefill == pytest.approx(1.0)


def started_streams(model: LoadModel, node_id: str, count: int, now: float) -> None:
    for ticket in range(100, 100 + count):
        model.sent(ticket, node_id, out_tokens=500, stream=True, expected_ttft=0.02, prefill=0.0, queued=False,
                   uncached=0.0, now=now)
        model.answered(ticket, now)
        model.first_token(ticket, now + 0.02)


def test_a_first_token_that_waited_for_a_slot_shows_the_batch_was_full(clock):
    # No report has shown a queue; nvllm's own streams show where the batch fills.
    model = LoadModel()
    n = model.node("a")
    n.token_time = 0.01
    started_streams(model, "a", 6, clock())
    assert n.slots == 7  # one more than it was seen running
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=0.05, prefill=0.0, queued=False, uncached=0.0,
               now=clock())
    model.first_token(1, clock() + 0.05 + (QUEUE_EVIDENCE_STEPS + 1) * 0.01)
    assert n.saturated_at == 6 and n.slots == 6


def test_a_first_token_on_time_with_more_running_raises_the_slots(clock):
    model = LoadModel()
    n = model.node("a")
    n.token_time = 0.01
    n.saturated_at = 4  # a queue once formed at 4
    started_streams(model, "a", 6, clock())
    assert n.saturated_at == 6  # each started at once, one more running each time
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=0.05, prefill=0.0, queued=False, uncached=0.0,
               now=clock())
    model.first_token(1, clock() + 0.05 + (QUEUE_EVIDENCE_STEPS - 1) * 0.01)  # late, but not by a slot's wait
    assert n.saturated_at == 7


def test_a_node_not_measured_yet_gets_the_fleets_median_prefill(clock):
    model = LoadModel()
    for node_id, p in (("a", 0.001), ("b", 0.002), ("c", 0.004)):
        model.node(node_id).prefill_time = p
    median = model.default_prefill_time(["a", "b", "c", "new"])
    assert median == pytest.approx(0.002)
    e = model.expect("new", load=0, uncached=1000, out_tokens=10, default_token_time=0.05,
                     default_prefill_time=median, now=clock())
    assert e.prefill == pytest.approx(2.0)  # not 0.01 x 0.05 s x 1000 = 0.5 s, nor anything far from its peers
    assert model.default_prefill_time(["new"]) is None


def test_a_first_token_that_waited_for_a_slot_says_nothing_of_the_prefill(clock):
    model = LoadModel()
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=1.0, prefill=0.0, queued=True, uncached=1000,
               now=clock())
    model.first_token(1, clock() + 2.0)
    assert model.node("a").prefill_time is None
    e = model.expect("a", load=0, uncached=1000, out_tokens=10, default_token_time=0.01, now=clock() + 100)
    assert e.prefill == pytest.approx(0.01 * FALLBACK_PREFILL_STEPS * 1000)


def test_a_failed_attempt_teaches_nothing_and_frees_its_slot(clock):
    model = LoadModel()
    model.sent(1, "a", out_tokens=100, stream=True, expected_ttft=0.1, prefill=0.5, queued=False, uncached=0.0,
               now=clock())
    model.failed(1, clock() + 1)
    model.done(1, clock() + 1)
    n = model.node("a")
    assert n.flights == {} and n.starting == {} and n.prefill_backlog(clock() + 1) == 0
    assert n.token_time is None and n.ttft_error == 0


def test_prefill_is_a_backlog_once_the_node_takes_the_request(clock):
    model = LoadModel()
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=1.0, prefill=1.0, queued=False, uncached=0.0,
               now=clock())
    assert model.node("a").prefill_backlog(clock()) == 0  # not the node's until it takes it
    model.answered(1, clock())
    assert model.node("a").prefill_backlog(clock()) == pytest.approx(1.0)
    assert model.node("a").prefill_backlog(clock() + 0.4) == pytest.approx(0.6)
    assert model.node("a").prefill_backlog(clock() + 2) == 0


def test_a_stream_still_waiting_to_start_is_a_floor_on_the_next_wait(clock):
    model = LoadModel()
    model.sent(1, "stuck", out_tokens=10, stream=True, expected_ttft=None, prefill=0.0, queued=False,
               uncached=0.0, now=clock() - 0.8)
    e = model.expect("stuck", load=1, uncached=0, out_tokens=10, default_token_time=0.01, now=clock())
    assert e.ttft == pytest.approx(0.8) and e.queued


def test_first_tokens_later_than_expected_raise_the_estimate_and_fade(clock):
    n = NodeLoad()
    for _ in range(10):
        n.add_first_token(expected=0.05, seen=0.45, now=clock())  # 0.4 s later than expected, again and again
    assert n.first_token_late(clock()) == pytest.approx(0.4 * (1 - 0.8**10))
    clock.advance(3.0)  # one half-life without news
    assert n.first_token_late(clock()) == pytest.approx(0.2 * (1 - 0.8**10))
    clock.advance(60.0)
    assert n.first_token_late(clock()) < 1e-6


def test_first_tokens_sooner_than_expected_lower_the_estimate_but_not_below_zero(clock):
    model = LoadModel()
    n = model.node("a")
    n.token_time = 0.01
    n.add_first_token(expected=0.5, seen=0.1, now=clock())
    assert n.first_token_late(clock()) == pytest.approx(-0.08)
    e = model.expect("a", load=0, uncached=1000, out_tokens=10, default_token_time=0.01, now=clock())
    assert e.ttft == pytest.approx(0.02)  # 0.1 s of prefill expected, less 0.08
    assert model.expect("a", load=0, uncached=0, out_tokens=10, default_token_time=0.01, now=clock()).ttft == 0


def test_a_node_gone_from_the_fleet_is_forgotten():
    model = LoadModel()
    model.report("a", 4, 2)
    model.sent(1, "a", out_tokens=10, stream=True, expected_ttft=None, prefill=0.0, queued=False, uncached=0.0,
               now=0.0)
    model.forget("a")
    model.done(1, 1.0)  # a late end of a forgotten node's request is harmless
    assert "a" not in model.nodes


def test_the_slot_wait_equals_a_full_simulation_of_every_release(clock):
    """What slot_wait reads (the first ends in order, a shortcut when no
    slot frees twice) against the plain simulation: every release of every
    slot, the queue ahead taking them one by one."""
    import heapq
    import random

    rng = random.Random(7)
    for case in range(300):
        policy = LoadPolicy()
        node = state(f"n{case}")
        slots = rng.randint(1, 40)
        n = full(policy, node.node_id, slots)
        answers = [(rng.randint(20, 400), 0) for _ in range(rng.randint(0, slots))]
        answers = [(out, rng.randint(1, out)) for out, _ in answers]
        streaming(policy, node, clock(), *answers)
        t, mean_out = rng.choice([0.005, 0.01, 0.03]), rng.choice([30.0, 100.0, 400.0])
        load = node.load + rng.randint(0, 70)
        ends = sorted(max(0.0, f.projected_end(t) - clock()) for f in n.flights.values() if f.first_at is not None)
        unknown = max(0, slots - len(ends))
        releases = ends + [mean_out * t * (i + 1) / (unknown + 1) for i in range(unknown)]
        ahead = load + 1 - slots
        if ahead <= 0:
            expected = 0.0
        elif ahead > MAX_QUEUE_STEPS:
            expected = ahead * mean_out * t / slots
        else:
            heapq.heapify(releases)
            for _ in range(ahead - 1):
                heapq.heapreplace(releases, releases[0] + mean_out * t)
            expected = releases[0]
        assert n.slot_wait(clock(), t, mean_out, load) == pytest.approx(expected), case

"""What routing learns about each node, and when a request sent there now would
get its first and its last token.

Everything here is learned from what the node reports (running and waiting
counts, KV-cache usage) and from what this instance sees of its own requests
(when their first tokens come, how fast their tokens follow). Before a node
has shown a quantity, a neutral fallback stands in, named below; none of them
is a guess at a particular fleet.

All times are seconds on the proxy's clock, passed in with every event, so
tests drive the model with a fake clock and scripted events.
"""

from __future__ import annotations

import bisect
import heapq
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

# Neutral fallbacks, each replaced by what the node shows:
# - seconds per generated token, until any node was measured (then the fleet's median);
FALLBACK_TOKEN_TIME = 0.02
# - one prompt token's prefill in decode steps, until the node's first tokens
#   measured its prefill (vLLM on current GPUs: 0.005-0.01);
FALLBACK_PREFILL_STEPS = 0.01
# - batch slots: one more than the most the node was seen running, until a
#   queue showed its limit. Each time it takes one more without a queue the
#   bound grows, so a large batch is found by using it, never assumed.
EWMA_WEIGHT = 0.2  # weight of a new sample in every moving average here
TTFT_ERROR_HALF_LIFE = 3.0  # seconds: an old surprise fades, so a node it penalized gets traffic again
MAX_QUEUE_STEPS = 64  # slot releases simulated at most, per estimate
MIN_PREFILL_SAMPLE = 64  # prompt tokens: shorter prompts say more about a step than about prefill
# A first token later than estimated by this many of the node's decode steps
# waited for a batch slot: prefill jitter is a step or two, while the first of
# a full batch's slots frees only as its shortest answer ends.
QUEUE_EVIDENCE_STEPS = 8
MEAN_OUT_WEIGHT = 0.05
# The projected ends of a node's running requests are kept in order, and
# recomputed from their progress at most this often (and when the node's
# token time moves by more than ENDS_RETIME): between, a request that keeps
# the node's pace ends when projected, so a decision reads the first few
# instead of walking all of them.
ENDS_REBUILD_AFTER = 0.1  # seconds
ENDS_RETIME = 0.05  # relative change of the token time


@dataclass
class Flight:
    """One of this instance's requests to a node, from sent to done."""

    node_id: str
    sent_at: float
    out_tokens: int  # max_tokens: it holds its batch slot at most this long
    stream: bool
    expected_ttft: float | None  # what the estimate said when the node was chosen
    prefill: float  # seconds of prefill the estimate said it adds to the node
    uncached: float  # its prompt tokens the node had not cached, by nvllm's index
    queued: bool  # the estimate expected it to wait for a slot
    running_at_send: int = 0  # ours holding a slot on the node when it was sent
    answered: bool = False
    first_at: float | None = None  # when its first token came (a whole answer: when answered)
    tokens: int = 0  # tokens relayed so far
    last_at: float = 0.0  # when the last of them came
    tokens_at_first: int = 0

    end_key: tuple[float, int] | None = None  # its place in NodeLoad.ends, once it holds a slot

    def projected_end(self, token_time: float) -> float:
        """When its slot frees if the node keeps its pace: its max_tokens less
        what was streamed, from the last token (a whole answer: generating
        since it was taken). An upper bound: an answer may stop early."""
        if self.tokens:
            return self.last_at + (self.out_tokens - self.tokens) * token_time
        assert self.first_at is not None
        return self.first_at + self.out_tokens * token_time


@dataclass
class NodeLoad:
    """What routing has learned of one node."""

    flights: dict[int, Flight] = field(default_factory=dict)  # by ticket, in send order
    # Streams still waiting for their first token, by ticket, in send order:
    # how long the oldest has waited is a floor for the next one's wait.
    starting: dict[int, float] = field(default_factory=dict)
    saturated_at: int = 0  # what it ran when a queue last formed: its capacity
    most_running: int = 0  # the most it was seen running
    token_time: float | None = None  # seconds per streamed token (EWMA)
    prefill_time: float | None = None  # seconds per uncached prompt token (EWMA)
    prefill_debt: float = 0.0
    prefill_debt_at: float = 0.0
    # How much later than expected first tokens came lately (EWMA, seconds;
    # negative: sooner), and when last measured.
    ttft_error: float = 0.0
    ttft_error_at: float = 0.0
    # (projected end, ticket) of each of ours holding a slot, in order, and
    # the token time and the moment they were computed at.
    ends: list[tuple[float, int]] = field(default_factory=list)
    ends_token_time: float | None = None
    ends_at: float = 0.0

    @property
    def slots(self) -> int:
        """How many requests the node runs at once before queueing: what it ran
        when a queue last formed; before any queue, one more than the most it
        was seen running (the fallback that grows as it is used)."""
        return self.saturated_at or self.most_running + 1

    @property
    def started(self) -> int:
        """Ours that hold a batch slot now."""
        return len(self.flights) - len(self.starting)

    def take_counts(self, running: int, waiting: int) -> None:
        if waiting > 0 and running > 0:
            self.saturated_at = running  # a queue formed: this is its capacity now
        elif running > self.saturated_at > 0:
            self.saturated_at = running  # it runs more than that without a queue now
        self.most_running = max(self.most_running, running)

    def longest_start_wait(self, now: float) -> float:
        """Seconds the oldest stream still waiting for its first token has waited."""
        return now - next(iter(self.starting.values())) if self.starting else 0.0

    def prefill_backlog(self, now: float) -> float:
        """Seconds of prompt processing this instance has sent the node that it
        has not worked through yet, assuming it works through one second per
        second."""
        return max(0.0, self.prefill_debt - (now - self.prefill_debt_at))

    def add_prefill(self, seconds: float, now: float) -> None:
        self.prefill_debt = self.prefill_backlog(now) + seconds
        self.prefill_debt_at = now

    def first_token_late(self, now: float) -> float:
        """The recent error of the first-token estimate, fading with its age."""
        if not self.ttft_error:
            return 0.0
        return self.ttft_error * 0.5 ** ((now - self.ttft_error_at) / TTFT_ERROR_HALF_LIFE)

    def add_first_token(self, expected: float, seen: float, now: float) -> None:
        late = self.first_token_late(now)
        self.ttft_error = late + EWMA_WEIGHT * (seen - expected - late)
        self.ttft_error_at = now

    def add_token_time(self, seconds: float) -> None:
        self.token_time = seconds if self.token_time is None else self.token_time + EWMA_WEIGHT * (
            seconds - self.token_time)

    def add_prefill_time(self, seconds_per_token: float) -> None:
        self.prefill_time = seconds_per_token if self.prefill_time is None else self.prefill_time + EWMA_WEIGHT * (
            seconds_per_token - self.prefill_time)

    def holds_slot(self, ticket: int, flight: Flight) -> None:
        """Its first token came (a whole answer: the node took it)."""
        if flight.end_key is None:
            t = self.ends_token_time or self.token_time or FALLBACK_TOKEN_TIME
            flight.end_key = (flight.projected_end(t), ticket)
            bisect.insort(self.ends, flight.end_key)

    def frees_slot(self, flight: Flight) -> None:
        if flight.end_key is not None:
            i = bisect.bisect_left(self.ends, flight.end_key)
            if i < len(self.ends) and self.ends[i] == flight.end_key:
                del self.ends[i]
            flight.end_key = None

    def first_ends(self, now: float, token_time: float, count: int) -> list[float]:
        """Seconds until each of the `count` first of ours to end frees its
        slot, soonest first."""
        if (self.ends_token_time is None or abs(token_time - self.ends_token_time) > ENDS_RETIME * token_time
                or now - self.ends_at > ENDS_REBUILD_AFTER):
            self.ends = []
            for ticket, f in self.flights.items():
                if f.end_key is not None:
                    f.end_key = (f.projected_end(token_time), ticket)
                    self.ends.append(f.end_key)
            self.ends.sort()
            self.ends_token_time, self.ends_at = token_time, now
        return [end - now if end > now else 0.0 for end, _ in self.ends[:count]]

    def slot_wait(self, now: float, token_time: float, mean_out: float, load: int) -> float:
        """Seconds until a batch slot frees for one more request; 0 while one
        is free. A request holds its slot until its last token: ours for their
        max_tokens less what was streamed (an upper bound: an answer may stop
        early); the others (other instances', other clients') are somewhere in
        an average answer, spread evenly. Requests queued ahead take the
        first slots to free, then hold them for an average answer each (the
        slot releases simulated when at most MAX_QUEUE_STEPS are queued, the
        average rate beyond)."""
        slots = self.slots
        if load < slots:
            return 0.0
        # More of ours running than the slot count allows: it is stale, and
        # nothing says the node is full, so one more fits too.
        running = self.started
        if running > slots:
            slots = running + 1
        ahead = load + 1 - slots
        if ahead <= 0:
            return 0.0
        if ahead > MAX_QUEUE_STEPS:  # a long queue: which slot frees first hardly matters
            return ahead * mean_out * token_time / slots
        # Only the `ahead` first to free can be taken before this request's turn.
        ours = self.first_ends(now, token_time, ahead)
        unknown = max(0, slots - len(self.ends))  # spread evenly over an average answer
        others = [mean_out * token_time * (i + 1) / (unknown + 1) for i in range(min(unknown, ahead))]
        releases = sorted(ours + others)[:ahead]  # sorted: a heap
        hold = mean_out * token_time
        if len(releases) == ahead and releases[-1] <= releases[0] + hold:
            # No slot frees twice before the last of these frees once: that one is ours.
            return releases[-1]
        for _ in range(ahead - 1):
            heapq.heapreplace(releases, releases[0] + hold)
        return releases[0]


class Expected(NamedTuple):  # a tuple: one is made per candidate per decision
    """When a request sent to a node now would start and end, and why."""

    ttft: float
    end: float
    prefill: float  # seconds of the node's prefill it adds
    queued: bool  # it would wait for something beyond its own prefill: a slot, others' prompts
    token_time: float


class LoadModel:
    """Per-node learned state and the estimates made from it."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeLoad] = {}
        self.mean_out: float | None = None  # moving average of max_tokens asked
        self._flights: dict[int, Flight] = {}

    def node(self, node_id: str) -> NodeLoad:
        found = self.nodes.get(node_id)
        if found is None:
            found = self.nodes[node_id] = NodeLoad()
        return found

    # --- estimates ---

    def default_token_time(self, node_ids: Iterable[str]) -> float:
        measured = [t for t in (self.nodes[i].token_time for i in node_ids if i in self.nodes) if t]
        return statistics.median(measured) if measured else FALLBACK_TOKEN_TIME

    def default_prefill_time(self, node_ids: Iterable[str]) -> float | None:
        """The fleet's median seconds per prompt token, None before any node
        was measured. A node nobody measured yet is taken to be a typical one:
        a guess far above its peers would keep it from ever being tried."""
        measured = [p for p in (self.nodes[i].prefill_time for i in node_ids if i in self.nodes) if p is not None]
        return statistics.median(measured) if measured else None

    def expect(self, node_id: str, *, load: int, uncached: float, out_tokens: int, default_token_time: float,
               now: float, default_prefill_time: float | None = None) -> Expected:
        """When a request with `uncached` prompt tokens and `out_tokens` to
        generate would start and end on the node, `load` counting what it
        holds or will hold (see NodeState.load)."""
        n = self.node(node_id)
        t = n.token_time or default_token_time
        per_prompt_token = n.prefill_time if n.prefill_time is not None else (
            default_prefill_time if default_prefill_time is not None else t * FALLBACK_PREFILL_STEPS)
        prefill = per_prompt_token * uncached
        mean_out = self.mean_out if self.mean_out is not None else float(out_tokens)
        slot_wait = n.slot_wait(now, t, mean_out, load)
        backlog = n.prefill_backlog(now)
        expected = max(0.0, backlog + prefill + slot_wait + n.first_token_late(now))
        # What nvllm's own waiting streams show beats any model of the node.
        waited = n.longest_start_wait(now)
        ttft = max(expected, waited)
        return Expected(ttft=ttft, end=ttft + t * out_tokens, prefill=prefill,
                        queued=slot_wait > 0 or backlog > 0 or waited > 0, token_time=t)

    # --- events ---

    def asked(self, out_tokens: int) -> None:
        """A request was routed: its max_tokens joins the average."""
        self.mean_out = float(out_tokens) if self.mean_out is None else self.mean_out + MEAN_OUT_WEIGHT * (
            out_tokens - self.mean_out)

    def sent(self, ticket: int, node_id: str, *, out_tokens: int, stream: bool, expected_ttft: float | None,
             prefill: float, queued: bool, uncached: float, now: float) -> None:
        n = self.node(node_id)
        flight = Flight(node_id, now, out_tokens, stream, expected_ttft=expected_ttft, prefill=prefill,
                        uncached=uncached, queued=queued, running_at_send=n.started)
        n.flights[ticket] = flight
        if stream:
            n.starting[ticket] = now
        self._flights[ticket] = flight

    def answered(self, ticket: int, now: float) -> None:
        flight = self._flights.get(ticket)
        if flight is None or flight.answered:
            return
        flight.answered = True
        n = self.node(flight.node_id)
        if flight.prefill:
            n.add_prefill(flight.prefill, now)
        if not flight.stream:  # a whole answer: assumed generating since the node took it
            flight.first_at = flight.sent_at
            n.holds_slot(ticket, flight)

    def first_token(self, ticket: int, now: float) -> None:
        """Tokens relayed by now (see `progress`) count as the first."""
        flight = self._flights.get(ticket)
        if flight is None or flight.first_at is not None:
            return
        flight.first_at = flight.last_at = now
        flight.tokens_at_first = flight.tokens
        n = self.node(flight.node_id)
        n.starting.pop(ticket, None)
        n.holds_slot(ticket, flight)
        seen = now - flight.sent_at
        step = n.token_time or 0.0
        if (flight.expected_ttft is not None and not flight.queued and step
                and seen > flight.expected_ttft + QUEUE_EVIDENCE_STEPS * step):
            # Sent to a batch thought to have room, it waited for a slot: the
            # batch was full with what held a slot then. Between the node's
            # reports, this is what keeps a fast node from being overfilled.
            full = max(1, flight.running_at_send)
            n.saturated_at = min(n.saturated_at, full) if n.saturated_at else full
        else:
            n.most_running = max(n.most_running, n.started)
            if n.saturated_at and n.started > n.saturated_at:
                n.saturated_at = n.started  # it started this one at once with more running: room for them
        if flight.expected_ttft is not None:
            n.add_first_token(flight.expected_ttft, seen, now)
        # A first token that did not wait for a slot measures the node's
        # prefill: what it took beyond one step, per uncached prompt token.
        if not flight.queued and flight.uncached >= MIN_PREFILL_SAMPLE:
            step = n.token_time or 0.0
            n.add_prefill_time(max(0.0, seen - step) / flight.uncached)

    def progress(self, ticket: int, tokens: int, now: float) -> None:
        flight = self._flights.get(ticket)
        if flight is not None:
            flight.tokens = tokens
            flight.last_at = now

    def failed(self, ticket: int, now: float) -> None:
        """Nothing of an abandoned attempt is learned: it may have failed for
        reasons that say nothing of the node's speed."""
        flight = self._flights.get(ticket)
        if flight is not None:
            self.node(flight.node_id).frees_slot(flight)
            flight.first_at = None
            flight.tokens = flight.tokens_at_first = 0

    def done(self, ticket: int, now: float) -> None:
        flight = self._flights.pop(ticket, None)
        if flight is None:
            return
        n = self.nodes.get(flight.node_id)
        if n is None:
            return
        n.flights.pop(ticket, None)
        n.starting.pop(ticket, None)
        n.frees_slot(flight)
        # Per-token time from the tokens after the first: the first waited for
        # the prefill.
        generated = flight.tokens - flight.tokens_at_first
        if flight.first_at is not None and generated >= 3 and flight.stream:
            n.add_token_time((flight.last_at - flight.first_at) / generated)

    def report(self, node_id: str, running: int, waiting: int) -> None:
        self.node(node_id).take_counts(running, waiting)

    def forget(self, node_id: str) -> None:
        n = self.nodes.pop(node_id, None)
        if n is not None:
            for ticket in n.flights:
                self._flights.pop(ticket, None)

"""Routing policies: which routable node gets a request.

The default policy, `load`, estimates for each candidate node n when this
request would get its first token and when its last, and takes the cheapest

    cost(n) = (1 + TTFT_WEIGHT) * ttft(n) + t(n) * out
    ttft(n) = max(backlog(n) + t(n) * PREFILL_STEPS_PER_TOKEN * uncached(n)
                  + slot_wait(n) + late(n),
                  waited(n))

times a KV penalty, 1 + 10 * max(0, kv_usage(n) - 0.9).

- t(n): seconds per generated token, a moving average measured on the node's
  streams (the fleet's median for a node not measured yet). It carries the
  node's speed, so slow nodes get short answers and fast nodes long ones.
- out: the request's max_tokens (256 when unset); mean_out its moving average.
- uncached(n): prompt tokens (characters / 4) not already in n's prefix cache,
  as far as nvllm's prefix index knows.
- backlog(n): seconds of prompt processing nvllm sent n that n has not worked
  through yet: a long prompt stalls the batch it joins, so the next request is
  better placed elsewhere.
- slot_wait(n): 0 while load(n) < slots(n); else when the k-th batch slot
  frees, k = load(n) + 1 - slots(n): each request of ours holds its slot for
  its max_tokens less the tokens already streamed, times t(n); the u requests
  we know nothing of free theirs after mean_out * i / (u + 1) tokens,
  i = 1..u; a queued one, once it has a slot, holds it for mean_out
  (NodeState.slot_wait).
- late(n): how much later than estimated the node's first tokens came lately
  (a moving average of the error, halved every 3 s without news): whatever
  the model misses about a node (its prefill speed, others' traffic) shows
  there and corrects it.
- waited(n): how long the oldest of our streams to n still without its first
  token has waited: what the node visibly does beats any model of it.
- load(n): requests in flight to n from every nvllm instance, plus what n's
  last report showed beyond them (traffic that bypassed nvllm): the last report
  plus the requests sent since, so a stale report draws no herd. slots(n): how
  many n runs at once (learned from its reports; 8 until seen).

Prefix affinity: prompts are cut into blocks whose hashes chain (as vLLM's
prefix cache does); the node that last served the longest known chain gets the
request if cost(affine) <= (1 + slack) * min cost. Near-ties (within 10%) are
broken by rendezvous hashing of the prompt's deepest block, so instances that
decide at once from the same view spread out instead of herding, and agree.

Conversations: a prompt that continues no known conversation is placed by
what its node will hold when its follow-ups come: load(n) in slot_wait is at
least the conversations resident on n (see Conversations).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.fleet import NodeState

BLOCK_CHARS = 256  # prompt characters per prefix block (~64 tokens)
MAX_BLOCKS = 64  # hash at most the first 16K characters
NEAR_TIE = 1.10
DEFAULT_OUT_TOKENS = 256  # when the body sets no max_tokens
CHARS_PER_TOKEN = 4
# One prompt token's prefill costs about this many decode steps (vLLM on a
# current GPU: 0.005-0.01); it turns prompt length into seconds on each node.
PREFILL_STEPS_PER_TOKEN = 0.01
DEFAULT_TOKEN_TIME = 0.02  # seconds per token until some node was measured
RESIDENT_SECONDS = 10.0  # a conversation quiet for longer no longer holds a place at its node
TTFT_WEIGHT = 8.0  # how much more a second of waiting to start counts than one of generating
MEAN_OUT_WEIGHT = 0.05


@dataclass
class RouteRequest:
    model: str | None = None
    blocks: list[bytes] = field(default_factory=list)  # chained prefix hashes
    prompt_chars: int = 0
    out_tokens: int = DEFAULT_OUT_TOKENS
    prefill: float = 0.0  # set by LoadPolicy.choose for the chosen node
    ttft: float | None = None  # the same: when its first token is expected
    continues: bytes | None = None  # set by LoadPolicy.choose: the conversation tip it extends
    shared: bool = False  # the same: its start is a prefix some node was sent before
    pinned_node: str | None = None  # only this node may serve it (it holds the stored response named)
    session: str | None = None  # what the client says ties its requests together (service/shape.py)


@dataclass(frozen=True)
class Estimate:
    ttft: float  # seconds until the first token
    end: float  # seconds until the last token
    prefill: float  # seconds of the node's prefill this request adds
    cost: float  # what the load policy minimizes


@dataclass
class Decision:
    state: NodeState
    reason: str


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision: ...

    def routed(self, state: NodeState, request: RouteRequest) -> None: ...


class PrefixIndex:
    """Block hash -> node that last served it, bounded LRU."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._owner: OrderedDict[bytes, str] = OrderedDict()
        self._capacity = capacity

    def longest_match(self, blocks: list[bytes], candidates: set[str]) -> tuple[str | None, int]:
        """(node, blocks matched) for the deepest block owned by a candidate."""
        for depth in range(len(blocks), 0, -1):
            owner = self._owner.get(blocks[depth - 1])
            if owner in candidates:
                return owner, depth
        return None, 0

    def record(self, blocks: list[bytes], node_id: str) -> None:
        for block in blocks:
            self._owner[block] = node_id
            self._owner.move_to_end(block)
        while len(self._owner) > self._capacity:
            self._owner.popitem(last=False)


class Conversations:
    """Conversations resident on each node, told apart by their prompts alone.

    A request's deepest prefix block is its tip. Each turn of a conversation
    resends the history, so a later prompt whose blocks hold a known tip
    continues that conversation. A conversation that has continued once will
    likely come back, and so will a prompt that starts like others (a shared
    system prompt): either keeps a place at its node while it waits for its
    user (or tool), for up to `linger` seconds. Prompts that share nothing
    never count."""

    def __init__(self, linger: float = RESIDENT_SECONDS, capacity: int = 100_000) -> None:
        self._tips: OrderedDict[bytes, tuple[str, float, bool]] = OrderedDict()  # tip -> node, when, continued
        self._resident: Counter[str] = Counter()
        self._linger = linger
        self._capacity = capacity

    def continued(self, blocks: list[bytes]) -> bytes | None:
        """The deepest known tip among the prompt's blocks, if any."""
        for block in reversed(blocks):
            if block in self._tips:
                return block
        return None

    def resident(self, node_id: str, now: float) -> int:
        self._expire(now)
        return self._resident[node_id]

    def record(self, node_id: str, blocks: list[bytes], continues: bytes | None, now: float,
               shared: bool = False) -> None:
        """A prompt routed to the node; `shared`: it starts like earlier ones."""
        self._expire(now)
        if continues is not None:
            self._drop(continues)
        if blocks:
            likely_back = continues is not None or shared
            self._drop(blocks[-1])
            self._tips[blocks[-1]] = (node_id, now, likely_back)
            self._resident[node_id] += likely_back
        while len(self._tips) > self._capacity:
            self._drop(next(iter(self._tips)))

    def _drop(self, tip: bytes) -> None:
        entry = self._tips.pop(tip, None)
        if entry and entry[2]:
            self._resident[entry[0]] -= 1

    def _expire(self, now: float) -> None:
        while self._tips:
            tip, (_, when, _) = next(iter(self._tips.items()))
            if now - when <= self._linger:
                break
            self._drop(tip)


def _rendezvous(block: bytes, node_id: str) -> bytes:
    return hashlib.blake2b(block + node_id.encode(), digest_size=8).digest()


class LoadPolicy:
    """The default: least expected time to first token and to completion, with
    prefix affinity (see the module docstring)."""

    name = "load"

    def __init__(self, affinity_slack: float = 0.15, clock: Callable[[], float] = time.monotonic) -> None:
        self.affinity_slack = affinity_slack
        self.prefixes = PrefixIndex()
        self.conversations = Conversations()
        self.mean_out = float(DEFAULT_OUT_TOKENS)
        self._clock = clock

    def estimates(
        self, candidates: Sequence[NodeState], request: RouteRequest, affine: str | None = None, depth: int = 0
    ) -> dict[str, Estimate]:
        """Expected seconds to first token and to the end, per candidate."""
        measured = [s.token_time for s in candidates if s.token_time]
        default = statistics.median(measured) if measured else DEFAULT_TOKEN_TIME
        prompt = request.prompt_chars / CHARS_PER_TOKEN
        cached = depth * BLOCK_CHARS / CHARS_PER_TOKEN
        now = self._clock()
        new_conversation = request.continues is None
        found = {}
        for s in candidates:
            t = s.token_time or default
            uncached = max(0.0, prompt - (cached if s.node_id == affine else 0.0))
            prefill = t * PREFILL_STEPS_PER_TOKEN * uncached
            # A new prompt settles where its follow-ups will go: the
            # conversations resident there, in flight or not, are its company.
            load = max(s.load, self.conversations.resident(s.node_id, now)) if new_conversation else s.load
            queued = s.slot_wait(now, t, self.mean_out, load)
            # What nvllm's own waiting streams show beats any model of the node.
            expected = max(0.0, s.prefill_backlog(now) + prefill + queued + s.first_token_late(now))
            ttft = max(expected, s.longest_start_wait(now))
            kv_penalty = 1.0 + 10.0 * max(0.0, (s.kv_usage or 0.0) - 0.9)
            cost = (ttft * (1 + TTFT_WEIGHT) + t * request.out_tokens) * kv_penalty
            found[s.node_id] = Estimate(ttft=ttft, end=ttft + t * request.out_tokens, prefill=prefill, cost=cost)
        return found

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision:
        by_id = {s.node_id: s for s in candidates}
        affine, depth = self.prefixes.longest_match(request.blocks, set(by_id))
        request.continues = self.conversations.continued(request.blocks)
        request.shared = depth > 0
        self.mean_out += MEAN_OUT_WEIGHT * (request.out_tokens - self.mean_out)
        estimates = self.estimates(candidates, request, affine, depth)
        best = min(e.cost for e in estimates.values())
        if affine is not None and estimates[affine].cost <= best * (1 + self.affinity_slack):
            chosen, why = by_id[affine], f"affinity={depth} "
        else:
            near = [s for s in candidates if estimates[s.node_id].cost <= best * NEAR_TIE]
            if len(near) > 1 and request.blocks:
                # The deepest block, not the first: prompts that share a system
                # prompt would all break the tie the same way, and pile up.
                tip = request.blocks[-1]
                chosen = max(near, key=lambda s: _rendezvous(tip, s.node_id))
            else:
                chosen = random.choice(near)
            why = ""
        estimate = estimates[chosen.node_id]
        request.prefill = estimate.prefill
        request.ttft = estimate.ttft
        return Decision(chosen, f"load {why}ttft={estimate.ttft:.3f}s end={estimate.end:.2f}s")

    def routed(self, state: NodeState, request: RouteRequest) -> None:
        if request.blocks:
            self.prefixes.record(request.blocks, state.node_id)
            self.conversations.record(state.node_id, request.blocks, request.continues, self._clock(),
                                      request.shared)
        if request.prefill:
            state.add_prefill(request.prefill, self._clock())


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision:
        ordered = sorted(candidates, key=lambda s: s.node_id)
        return Decision(ordered[next(self._counter) % len(ordered)], "round_robin")

    def routed(self, state: NodeState, request: RouteRequest) -> None:
        pass


class RandomPolicy:
    name = "random"

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision:
        return Decision(random.choice(list(candidates)), "random")

    def routed(self, state: NodeState, request: RouteRequest) -> None:
        pass


class LeastInflightPolicy:
    name = "least_inflight"

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision:
        fewest = min(s.inflight for s in candidates)
        chosen = random.choice([s for s in candidates if s.inflight == fewest])
        return Decision(chosen, f"least_inflight inflight={fewest}")

    def routed(self, state: NodeState, request: RouteRequest) -> None:
        pass


POLICIES = {
    "load": LoadPolicy,
    "round_robin": RoundRobinPolicy,
    "random": RandomPolicy,
    "least_inflight": LeastInflightPolicy,
}


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by name (config.ROUTING_POLICIES)."""
    if name == "load":
        return LoadPolicy(**options)
    return POLICIES[name]()

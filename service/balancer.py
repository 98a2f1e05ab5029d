"""Routing policies: which routable node gets a request.

The default policy, `load`, sends each request where it should start soonest:

    cost(n) = token_time(n) * (load(n) + 1) * kv_penalty(n)

- load(n): requests in flight to n from every nvllm instance, plus what n's
  last report showed beyond them (traffic that bypassed nvllm): the last report
  plus the requests sent since, so a stale report draws no herd.
- token_time(n): EWMA of seconds per streamed token seen from n; a node never
  measured gets the fleet's median. Dividing work by speed makes this shortest-
  expected-delay, so a node half as fast gets half as much.
- kv_penalty(n) = 1 + 10 * max(0, kv_usage(n) - 0.9): a node whose KV cache is
  nearly full is about to queue or preempt.

Prefix affinity: prompts are cut into blocks whose hashes chain (as vLLM's
prefix cache does); the node that last served the longest known chain gets the
request if cost(affine) <= (1 + slack) * min cost. Near-ties (within 10%) are
broken by rendezvous hashing of the prompt's first block, so instances that
decide at once from the same view spread out instead of herding, and agree.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.fleet import NodeState

BLOCK_CHARS = 256  # prompt characters per prefix block (~64 tokens)
MAX_BLOCKS = 64  # hash at most the first 16K characters
NEAR_TIE = 1.10


@dataclass
class RouteRequest:
    model: str | None = None
    blocks: list[bytes] = field(default_factory=list)  # chained prefix hashes


@dataclass
class Decision:
    state: NodeState
    reason: str


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision: ...

    def routed(self, state: NodeState, request: RouteRequest) -> None: ...


def prompt_text(body: dict[str, Any]) -> str:
    """The text a prefix cache would see first: chat messages, prompt or input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p.get("text", "") for p in content if isinstance(p, dict)
                )
            parts.append(f"{message.get('role', '')}:{content if isinstance(content, str) else ''}\n")
        return "".join(parts)
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]
    return ""


def prefix_blocks(text: str) -> list[bytes]:
    """Chained hashes of whole blocks: block k's hash covers blocks 0..k."""
    blocks = []
    digest = b""
    encoded = text[: BLOCK_CHARS * MAX_BLOCKS]
    for start in range(0, len(encoded) - BLOCK_CHARS + 1, BLOCK_CHARS):
        chunk = encoded[start : start + BLOCK_CHARS].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + chunk, digest_size=8).digest()
        blocks.append(digest)
    return blocks


def route_request(body: dict[str, Any]) -> RouteRequest:
    model = body.get("model")
    return RouteRequest(
        model=model if isinstance(model, str) else None,
        blocks=prefix_blocks(prompt_text(body)),
    )


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


def _rendezvous(block: bytes, node_id: str) -> bytes:
    return hashlib.blake2b(block + node_id.encode(), digest_size=8).digest()


class LoadPolicy:
    """The default: shortest expected delay, with prefix affinity."""

    name = "load"

    def __init__(self, affinity_slack: float = 0.5) -> None:
        self.affinity_slack = affinity_slack
        self.prefixes = PrefixIndex()

    @staticmethod
    def costs(candidates: Sequence[NodeState]) -> dict[str, float]:
        measured = [s.token_time for s in candidates if s.token_time]
        default = statistics.median(measured) if measured else 1.0
        costs = {}
        for s in candidates:
            kv_penalty = 1.0 + 10.0 * max(0.0, (s.kv_usage or 0.0) - 0.9)
            costs[s.node_id] = (s.token_time or default) * (s.load + 1) * kv_penalty
        return costs

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest) -> Decision:
        costs = self.costs(candidates)
        best = min(costs.values())
        by_id = {s.node_id: s for s in candidates}
        affine, depth = self.prefixes.longest_match(request.blocks, set(by_id))
        if affine is not None and costs[affine] <= best * (1 + self.affinity_slack):
            return Decision(by_id[affine], f"load affinity={depth} cost={costs[affine]:.3g}")
        near = [s for s in candidates if costs[s.node_id] <= best * NEAR_TIE]
        if len(near) > 1 and request.blocks:
            first = request.blocks[0]
            chosen = max(near, key=lambda s: _rendezvous(first, s.node_id))
        elif len(near) > 1:
            chosen = random.choice(near)
        else:
            chosen = near[0]
        return Decision(chosen, f"load cost={costs[chosen.node_id]:.3g}")

    def routed(self, state: NodeState, request: RouteRequest) -> None:
        if request.blocks:
            self.prefixes.record(request.blocks, state.node_id)


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

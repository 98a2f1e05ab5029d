"""The default policy, `load`: the node that will answer soonest, with prefix
and conversation affinity. The README's "How routing works" is this module.

For each candidate node n it estimates when this request would get its first
token and when its last, and takes the cheapest

    cost(n) = ((1 + TTFT_WEIGHT) * ttft(n) + t(n) * out) * kv_penalty(n)
    ttft(n) = max(backlog(n) + prefill(n) + slot_wait(n) + late(n), waited(n))
    kv_penalty(n) = 1 + 10 * max(0, kv_usage(n) - 0.9)

- t(n): seconds per generated token, a moving average measured on the node's
  streams (the fleet's median for a node not measured yet; 0.02 before any).
  It carries the node's speed, so slow nodes get short answers and fast nodes
  long ones.
- out: the request's max_tokens (256 when unset).
- prefill(n): seconds per uncached prompt token, measured on the node's first
  tokens that did not wait for a slot (until measured, the fleet's median of
  the measured nodes', and 0.01 t(n) before any), times the
  prompt tokens (characters / 4) not already in n's prefix cache, as far as
  nvllm's prefix index knows.
- backlog(n): seconds of prompt processing nvllm sent n that n has not worked
  through yet: a long prompt stalls the batch it joins, so the next request is
  better placed elsewhere.
- slot_wait(n): 0 while load(n) < slots(n); else when the k-th batch slot
  frees, k = load(n) + 1 - slots(n) (see NodeLoad.slot_wait). slots(n) is
  what n ran when its reports last showed a queue; before that, one more
  than the most it was seen running, so it grows as the node is used; between
  reports, lowered to what held a slot when one of our streams was sent if
  its first token came over 8 decode steps late (see LoadModel.first_token).
- late(n): how much later than estimated the node's first tokens came lately
  (a moving average of the error, halved every 3 s without news): whatever
  the model misses about a node shows there and corrects it.
- waited(n): how long the oldest of our streams to n still without its first
  token has waited: what the node visibly does beats any model of it.
- load(n): requests in flight to n from every nvllm instance, plus what n's
  last report showed beyond them (NodeState.load). A new conversation counts
  at least the conversations resident on n: it settles where its follow-ups
  will go.

Prefix affinity: the node that last served the longest known chain of the
prompt's blocks gets the request if cost(affine) <= (1 + slack) * min cost.
Failing that, the node that last took the client's named session (its
`prompt_cache_key`, X-Session-ID or `user`) gets it on the same terms: a
conversation whose prompt changed at its start, or is shorter than a block,
still finds its node.
Near-ties (within 10%) are broken by rendezvous hashing of the prompt's
deepest block, so instances that decide at once from the same view spread out
instead of herding, and agree.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from service.node_state import NodeState
from service.routing.load_model import LoadModel
from service.routing.policy import Decision, Estimate, Policy
from service.routing.prefix import Conversations, PrefixIndex, Sessions, rendezvous
from service.routing.request import BLOCK_CHARS, CHARS_PER_TOKEN, RouteRequest

NEAR_TIE = 1.10
TTFT_WEIGHT = 8.0  # how much more a second of waiting to start counts than one of generating


@dataclass(frozen=True)
class _Memo:
    """What `choose` found that the events need: recorded when the node takes
    the request, not when it is sent (an attempt retried elsewhere leaves no
    trace)."""

    blocks: list[bytes]
    session: str | None
    continues: bytes | None  # the conversation tip it extends
    shared: bool  # its start is a prefix some node was sent before
    uncached: float


class LoadPolicy(Policy):
    """The default: least expected time to first token and to completion, with
    prefix affinity (see the module docstring)."""

    name = "load"

    def __init__(self, affinity_slack: float = 0.15) -> None:
        self.affinity_slack = affinity_slack
        self.model = LoadModel()
        self.prefixes = PrefixIndex()
        self.conversations = Conversations()
        self.sessions = Sessions()
        self._memos: dict[int, tuple[str, _Memo]] = {}  # by ticket, until the node takes it

    def estimates(self, candidates: Sequence[NodeState], request: RouteRequest, now: float,
                  affine: str | None = None, depth: int = 0, continues: bytes | None = None) -> dict[str, Estimate]:
        """Expected seconds to first token and to the end, per candidate."""
        ids = [s.node_id for s in candidates]
        default = self.model.default_token_time(ids)
        default_prefill = self.model.default_prefill_time(ids)
        prompt, out_tokens = request.prompt_tokens, request.out_tokens
        cached = depth * BLOCK_CHARS / CHARS_PER_TOKEN
        resident = self.conversations.residents(now) if continues is None else None
        found = {}
        for node_id, s in zip(ids, candidates, strict=True):
            uncached = max(0.0, prompt - (cached if node_id == affine else 0.0))
            load = s.load
            if resident is not None:
                load = max(load, resident[node_id])
            e = self.model.expect(node_id, load=load, uncached=uncached, out_tokens=out_tokens,
                                  default_token_time=default, default_prefill_time=default_prefill, now=now)
            kv_penalty = 1.0 + 10.0 * max(0.0, (s.kv_usage or 0.0) - 0.9)
            cost = (e.ttft * (1 + TTFT_WEIGHT) + e.token_time * out_tokens) * kv_penalty
            found[node_id] = Estimate(ttft=e.ttft, end=e.end, prefill=e.prefill, cost=cost, queued=e.queued)
        return found

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        by_id = {s.node_id: s for s in candidates}
        affine, depth = self.prefixes.longest_match(request.blocks, set(by_id))
        continues = self.conversations.continued(request.blocks)
        self.model.asked(request.out_tokens)
        estimates = self.estimates(candidates, request, now, affine, depth, continues)
        best = min(e.cost for e in estimates.values())
        held = self.sessions.node(request.session)
        if affine is not None and estimates[affine].cost <= best * (1 + self.affinity_slack):
            chosen, kind, why = by_id[affine], "affinity", f"affinity={depth} "
        elif held in by_id and estimates[held].cost <= best * (1 + self.affinity_slack):
            chosen, kind, why = by_id[held], "session", "session "
        else:
            near = [s for s in candidates if estimates[s.node_id].cost <= best * NEAR_TIE]
            if len(near) > 1 and request.blocks:
                # The deepest block, not the first: prompts that share a system
                # prompt would all break the tie the same way, and pile up.
                tip = request.blocks[-1]
                chosen = max(near, key=lambda s: rendezvous(tip, s.node_id))
            else:
                chosen = random.choice(near)
            kind, why = "load", ""
        estimate = estimates[chosen.node_id]
        memo = self._memo(request, chosen.node_id, affine, depth, continues, shared=depth > 0)
        return Decision(chosen, f"load {why}ttft={estimate.ttft:.3f}s end={estimate.end:.2f}s", kind,
                        estimate, memo)

    def decided_elsewhere(self, state: NodeState, request: RouteRequest, estimate: Estimate | None) -> Decision:
        affine, depth = self.prefixes.longest_match(request.blocks, {state.node_id})
        self.model.asked(request.out_tokens)
        shared = bool(request.blocks) and self.prefixes.owner(request.blocks[0]) is not None
        memo = self._memo(request, state.node_id, affine, depth, self.conversations.continued(request.blocks),
                          shared=shared)
        return Decision(state, "sibling", "sibling", estimate, memo)

    @staticmethod
    def _memo(request: RouteRequest, node_id: str, affine: str | None, depth: int,
              continues: bytes | None, *, shared: bool) -> _Memo:
        cached = depth * BLOCK_CHARS / CHARS_PER_TOKEN if node_id == affine else 0.0
        return _Memo(request.blocks, request.session, continues, shared, max(0.0, request.prompt_tokens - cached))

    # --- events ---

    def sent(self, ticket: int, decision: Decision, request: RouteRequest, *, stream: bool, now: float) -> None:
        memo = decision.memo if isinstance(decision.memo, _Memo) else None
        estimate = decision.estimate
        self.model.sent(ticket, decision.node_id, out_tokens=request.out_tokens, stream=stream,
                        expected_ttft=estimate.ttft if estimate else None,
                        prefill=estimate.prefill if estimate else 0.0,
                        queued=estimate.queued if estimate else False,
                        uncached=memo.uncached if memo else request.prompt_tokens, now=now)
        if memo is not None:
            self._memos[ticket] = (decision.node_id, memo)

    def answered(self, ticket: int, now: float) -> None:
        node_id, memo = self._memos.pop(ticket, (None, None))
        if memo is not None and memo.blocks:
            self.prefixes.record(memo.blocks, node_id)
            self.conversations.record(node_id, memo.blocks, memo.continues, now, memo.shared)
        if memo is not None and memo.session:
            self.sessions.record(memo.session, node_id)
        self.model.answered(ticket, now)

    def first_token(self, ticket: int, now: float) -> None:
        self.model.first_token(ticket, now)

    def progress(self, ticket: int, tokens: int, now: float) -> None:
        self.model.progress(ticket, tokens, now)

    def failed(self, ticket: int, now: float) -> None:
        self._memos.pop(ticket, None)
        self.model.failed(ticket, now)

    def done(self, ticket: int, now: float) -> None:
        self._memos.pop(ticket, None)
        self.model.done(ticket, now)

    def report(self, node_id: str, running: int, waiting: int, kv_usage: float | None, now: float) -> None:
        self.model.report(node_id, running, waiting)

    def forget(self, node_id: str) -> None:
        self.model.forget(node_id)

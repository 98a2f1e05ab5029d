"""A policy that also hears what the other workers of this server route.

It passes every call to the policy it wraps, and sends each event of a
request to the sibling workers (service/siblings.py), which apply it to their
own copy of the policy under a ticket of their own: a request another worker
sent counts in this worker's load model (its slot, its prefill, the speeds
it measures), its prompt in this worker's prefix index, its session in this
worker's session table, exactly as if this worker had sent it. The fleet
view counts it in the node's in-flight load too (`count`).

Stream progress goes out every PROGRESS_EVERY tokens (and at the end), not
per chunk: enough for the speeds and the slots' remaining work, at a
fraction of the cost.
A sibling gone (exited, or its link lost) takes its requests with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from service.node_state import NodeState
from service.routing.policy import Decision, Estimate, Policy
from service.routing.request import MAX_BLOCKS, MAX_OUT_TOKENS, RouteRequest

PROGRESS_EVERY = 32  # tokens between the progress events a sibling hears

Event = list[Any]


class MirroredPolicy(Policy):
    def __init__(
        self,
        inner: Policy,
        publish: Callable[[Event], None],
        lookup: Callable[[str], NodeState | None],
        count: Callable[[str, int], None],
        clock: Callable[[], float],
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self._publish = publish
        self._lookup = lookup
        self._count = count
        self._clock = clock
        # Our streams: ticket -> [tokens the siblings were told of, tokens, when].
        self._told: dict[int, list] = {}
        # A sibling's requests: (its instance id, its ticket) -> (our ticket, node id).
        self._remote: dict[tuple[str, int], tuple[int, str]] = {}
        self._tickets = itertools.count(-1, -1)  # ours for their requests: never a local ticket

    # --- this worker's requests: the inner policy, then the siblings ---

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        return self.inner.choose(candidates, request, now)

    def sent(self, ticket: int, decision: Decision, request: RouteRequest, *, stream: bool, now: float) -> None:
        self.inner.sent(ticket, decision, request, stream=stream, now=now)
        e = decision.estimate
        self._publish(["s", ticket, decision.node_id, now, stream, request.model, [b.hex() for b in request.blocks],
                       request.prompt_chars, request.out_tokens, request.session,
                       None if e is None else [e.ttft, e.end, e.prefill, e.cost, e.queued]])
        if stream:
            self._told[ticket] = [0, 0, now]

    def answered(self, ticket: int, now: float) -> None:
        self.inner.answered(ticket, now)
        self._publish(["a", ticket, now])

    def first_token(self, ticket: int, now: float) -> None:
        self.inner.first_token(ticket, now)
        self._publish(["f", ticket, now])

    def progress(self, ticket: int, tokens: int, now: float) -> None:
        self.inner.progress(ticket, tokens, now)
        told = self._told.get(ticket)
        if told is not None:
            if tokens - told[0] >= PROGRESS_EVERY:
                told[0] = tokens
                self._publish(["p", ticket, tokens, now])
            told[1], told[2] = tokens, now

    def failed(self, ticket: int, now: float) -> None:
        self.inner.failed(ticket, now)
        self._publish(["x", ticket, now])

    def done(self, ticket: int, now: float) -> None:
        self.inner.done(ticket, now)
        told = self._told.pop(ticket, None)
        if told is not None and told[1] > told[0]:  # the last tokens, for the speed the sibling measures
            self._publish(["p", ticket, told[1], told[2]])
        self._publish(["d", ticket, now])

    def report(self, node_id: str, running: int, waiting: int, kv_usage: float | None, now: float) -> None:
        self.inner.report(node_id, running, waiting, kv_usage, now)

    def forget(self, node_id: str) -> None:
        self.inner.forget(node_id)

    def decided_elsewhere(self, state: NodeState, request: RouteRequest, estimate: Estimate | None) -> Decision:
        return self.inner.decided_elsewhere(state, request, estimate)

    # --- the siblings' requests ---

    def apply(self, sibling: str, event: Event) -> None:
        """One event from a sibling (service/siblings.py calls this). A
        malformed one raises ValueError, and the link is closed."""
        try:
            kind, ticket = event[0], int(event[1])
            if kind == "s":
                self._sent_elsewhere(sibling, ticket, event)
                return
            mine = self._remote.get((sibling, ticket))
            if mine is None:
                return  # sent before the link came up, or for a node we do not know
            local, node_id = mine
            now = float(event[-1])
            if kind == "a":
                self.inner.answered(local, now)
            elif kind == "f":
                self.inner.first_token(local, now)
            elif kind == "p":
                self.inner.progress(local, int(event[2]), now)
            elif kind == "x":
                self.inner.failed(local, now)
            elif kind == "d":
                del self._remote[(sibling, ticket)]
                self.inner.done(local, now)
                self._count(node_id, -1)
            else:
                raise ValueError(f"unknown event {kind!r}")
        except (IndexError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed sibling event: {type(exc).__name__}") from None

    def sibling_gone(self, sibling: str) -> None:
        """Its link closed: what it had in flight is no longer known."""
        now = self._clock()
        for key in [k for k in self._remote if k[0] == sibling]:
            local, node_id = self._remote.pop(key)
            self.inner.done(local, now)
            self._count(node_id, -1)

    def _sent_elsewhere(self, sibling: str, ticket: int, event: Event) -> None:
        _, _, node_id, now, stream, model, blocks, prompt_chars, out_tokens, session, e = event
        state = self._lookup(str(node_id))
        if state is None:
            return  # a node this worker has not seen yet: its next refresh will count it
        request = RouteRequest(
            model=None if model is None else str(model),
            blocks=[bytes.fromhex(b) for b in blocks[:MAX_BLOCKS]],
            prompt_chars=max(0, int(prompt_chars)),
            out_tokens=min(MAX_OUT_TOKENS, max(1, int(out_tokens))),
            session=None if session is None else str(session),
        )
        estimate = None if e is None else Estimate(float(e[0]), float(e[1]), float(e[2]), float(e[3]), bool(e[4]))
        local = next(self._tickets)
        self._remote[(sibling, ticket)] = (local, state.node_id)
        self.inner.sent(local, self.inner.decided_elsewhere(state, request, estimate), request,
                        stream=bool(stream), now=float(now))
        self._count(state.node_id, 1)

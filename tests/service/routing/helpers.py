"""Nodes and scripted request events for the routing tests: no threads, no
servers, a clock the test moves."""

from __future__ import annotations

import itertools

from model.node import Node, NodeInfo, NodeStatus
from service.node_state import NodeState
from service.routing.load import LoadPolicy
from service.routing.request import BLOCK_CHARS, RouteRequest
from tests.helpers import START

_tickets = itertools.count(1000)


def state(node_id: str, *, inflight: int = 0, running: int = 0, waiting: int = 0, kv: float | None = None,
          models: list[str] | None = None) -> NodeState:
    node = Node(node_id, node_status=NodeStatus.ONLINE, node_info=NodeInfo(running=running, waiting=waiting),
                models=models or [], update_time=START)
    s = NodeState(node, local_inflight=inflight, kv_usage=kv)
    s.take_report(node)
    return s


def prompt(seed: str, blocks: int) -> str:
    """Text of exactly `blocks` whole prefix blocks, distinct per seed."""
    return (seed * BLOCK_CHARS * blocks)[: BLOCK_CHARS * blocks]


def measured(policy: LoadPolicy, node: NodeState, token_time: float) -> NodeState:
    """The policy has measured the node's seconds per token."""
    policy.model.node(node.node_id).token_time = token_time
    return node


def streaming(policy: LoadPolicy, node: NodeState, now: float, *answers: tuple[int, int]) -> list[int]:
    """Our streams on `node`, started half a second ago: (max_tokens, tokens
    streamed so far) each. Returns their tickets."""
    tickets = []
    for out, done in answers:
        ticket = next(_tickets)
        policy.model.sent(ticket, node.node_id, out_tokens=out, stream=True, expected_ttft=None, prefill=0.0,
                          queued=False, uncached=0.0, now=now - 1.0)
        policy.model.answered(ticket, now - 1.0)
        policy.model.progress(ticket, 1, now - 0.5)
        policy.model.first_token(ticket, now - 0.5)
        policy.model.progress(ticket, done, now)
        node.local_inflight += 1
        tickets.append(ticket)
    return tickets


def send(policy: LoadPolicy, candidates: list[NodeState], request: RouteRequest, now: float, *,
         stream: bool = True) -> tuple[int, NodeState]:
    """Choose, send and have the node take a request, as the proxy does."""
    decision = policy.choose(candidates, request, now)
    ticket = next(_tickets)
    policy.sent(ticket, decision, request, stream=stream, now=now)
    policy.answered(ticket, now)
    decision.state.local_inflight += 1
    return ticket, decision.state

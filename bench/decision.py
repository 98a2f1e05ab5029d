"""(f) The cost of one routing decision: the load policy's `choose` on a fleet
with many requests in flight, as the proxy calls it (no HTTP, no Redis).

    .venv/bin/python bench/decision.py                       # 8 nodes, 1,000 in flight
    .venv/bin/python bench/decision.py --nodes 32 --inflight 4000

Each node gets inflight/nodes of this instance's streams, each at a random
point of its answer, and reports a queue (so slot waits are simulated, the
expensive case). Prompts are chat prompts of ~2,000 characters sharing one of
8 system prompts, so the prefix index and the conversations are searched.
Prints the median and p99 of `choose` alone, and of `choose` plus the
request's events (sent, answered, first token, 20 progress calls, done).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.node import Node, NodeInfo, NodeStatus  # noqa: E402
from service.node_state import NodeState  # noqa: E402
from service.routing.load import LoadPolicy  # noqa: E402
from service.shape import route_request  # noqa: E402


def fleet(policy: LoadPolicy, nodes: int, inflight: int, rng: random.Random) -> list[NodeState]:
    states = []
    for i in range(nodes):
        node_id = f"node-{i}"
        node = Node(node_id, node_status=NodeStatus.ONLINE, node_info=NodeInfo(running=16, waiting=2),
                    update_time=time.time())
        state = NodeState(node)
        state.take_report(node)
        policy.report(node_id, 16, 2, 0.5, 0.0)
        policy.model.node(node_id).token_time = 0.01 * (1 + i % 3)
        states.append(state)
    now = time.monotonic()
    for ticket in range(inflight):
        state = states[ticket % nodes]
        out = rng.randint(50, 500)
        policy.model.sent(ticket, state.node_id, out_tokens=out, stream=True, expected_ttft=0.1, prefill=0.0,
                          queued=False, uncached=0.0, now=now - 1)
        policy.model.answered(ticket, now - 1)
        if ticket % 4:  # three in four have started
            policy.model.progress(ticket, 1, now - 0.5)
            policy.model.first_token(ticket, now - 0.5)
            policy.model.progress(ticket, rng.randint(1, out), now)
        state.local_inflight += 1
    return states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--inflight", type=int, default=1000)
    ap.add_argument("--decisions", type=int, default=5000)
    args = ap.parse_args()
    rng = random.Random(1)
    policy = LoadPolicy()
    states = fleet(policy, args.nodes, args.inflight, rng)
    systems = [f"You are assistant number {i}. " * 60 for i in range(8)]
    requests = [route_request({"model": "m", "max_tokens": rng.randint(50, 500), "messages": [
        {"role": "system", "content": rng.choice(systems)},
        {"role": "user", "content": f"question {i} " * rng.randint(5, 60)}]}) for i in range(args.decisions)]
    choose, whole = [], []
    ticket = args.inflight
    for request in requests:
        t0 = time.perf_counter()
        decision = policy.choose(states, request, time.monotonic())
        t1 = time.perf_counter()
        ticket += 1
        now = time.monotonic()
        policy.sent(ticket, decision, request, stream=True, now=now)
        policy.answered(ticket, now)
        policy.first_token(ticket, now)
        for tokens in range(1, 21):
            policy.progress(ticket, tokens, now)
        policy.done(ticket, now)
        t2 = time.perf_counter()
        choose.append(t1 - t0)
        whole.append(t2 - t0)

    def q(values: list[float], p: float) -> float:
        return statistics.quantiles(values, n=100)[p - 1] * 1e6 if p < 100 else max(values) * 1e6

    print(f"{args.nodes} nodes, {args.inflight} requests in flight, {args.decisions} decisions")
    print(f"choose:            p50 {statistics.median(choose) * 1e6:7.1f} us   p99 {q(choose, 99):7.1f} us")
    print(f"choose + events:   p50 {statistics.median(whole) * 1e6:7.1f} us   p99 {q(whole, 99):7.1f} us")


if __name__ == "__main__":
    main()

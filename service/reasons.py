"""Why a request went to its node, as one of a few kinds: metrics count the
kinds, while the full reason (with its estimates) goes to X-NVLLM-Route."""

from __future__ import annotations

# Each policy's own reason starts with its name (service/balancer.py).
KINDS = ("prefix_affinity", "load", "fallback", "round_robin", "random", "least_inflight", "other")


def reason_category(reason: str, attempt: int) -> str:
    """`fallback` for a request another node failed or shed first;
    `prefix_affinity` when the load policy kept a prompt with the node caching
    its prefix; else the policy's name."""
    if attempt > 1:
        return "fallback"
    policy = reason.split(" ", 1)[0]
    if policy == "load":
        return "prefix_affinity" if " affinity=" in reason else "load"
    return policy if policy in KINDS else "other"

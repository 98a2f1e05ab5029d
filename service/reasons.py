"""Why a request went to its node, as a metric label: the routing decision's
kind, except that a request another node failed or shed first is a fallback.
The full reason (with its estimates) goes to X-NVLLM-Route."""

from __future__ import annotations

# The load policy's "affinity" is prefix affinity (a client-named session is "session").
LABELS = {"affinity": "prefix_affinity"}


def reason_category(kind: str, attempt: int) -> str:
    """`fallback` on a second or later attempt; else the decision's kind:
    prefix_affinity, session, load, round_robin, random, least_inflight."""
    if attempt > 1:
        return "fallback"
    return LABELS.get(kind, kind or "other")

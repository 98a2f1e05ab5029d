"""LoRA adapters across the fleet: which nodes may take a request naming one,
and the model list clients see (base models, adapters with their lineage, and
listed aliases), as vLLM's GET /v1/models shows them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from model.alias import Alias
from service.node_state import NodeState


def candidates(model: str | None, routable: Sequence[NodeState], known: Iterable[NodeState]) -> list[NodeState]:
    """The routable nodes that may serve `model`.

    A name that is a LoRA adapter on any known node goes only to nodes that
    hold that adapter (a node listing no models serves any base model, not
    every adapter). Among them, nodes where the adapter is running or queued
    now (vLLM's vllm:lora_requests_info) are preferred while one of them
    queues nothing (its last report, or vLLM's in-band load header, shows no
    waiting request): the adapter is in GPU memory there, elsewhere vLLM may
    first have to load it, or evict another to make room; but a queue there
    costs more than a load elsewhere."""
    holders = [s for s in routable if s.node.adapter(model) is not None] if model else []
    if not holders:
        if model and any(s.node.adapters and s.node.adapter(model) for s in known):
            return []
        return [s for s in routable if s.node.serves(model)]
    active = [s for s in holders if s.node.node_info.adapter_active(model) and not s.reported_waiting]
    return active or holders


def model_cards(routable: Iterable[NodeState], aliases: dict[str, Alias], created: int) -> list[dict[str, Any]]:
    """OpenAI's model cards for what the routable nodes serve: base models
    (`parent` null), adapters (`parent` the base model, `root` where vLLM
    loaded them from), and listed aliases of either (`root` the served model)."""
    cards: dict[str, dict[str, Any]] = {}
    # By node id, so the card of an adapter two nodes describe differently is stable.
    for state in sorted(routable, key=lambda s: s.node_id):
        for name in state.node.models:
            cards.setdefault(name, _card(name, created, root=name, parent=None))
        for adapter in state.node.adapters:
            cards.setdefault(adapter.id, _card(adapter.id, created, root=adapter.root or adapter.id,
                                               parent=adapter.parent))
    for alias in aliases.values():
        target = cards.get(alias.model)
        if alias.listed and target is not None and alias.alias not in cards:
            cards[alias.alias] = _card(alias.alias, created, root=alias.model, parent=target["parent"])
    return [cards[name] for name in sorted(cards)]


def _card(name: str, created: int, *, root: str, parent: str | None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "nvllm", "root": root, "parent": parent}

"""LoRA adapter routes (admin): list the fleet's adapters, load or unload one
on the nodes of a base model."""

from __future__ import annotations

from flask import Blueprint, Response

from api import json_body, ok
from middleware.auth import require_role
from middleware.services import services
from model.adapter import AdapterChange
from service import lora
from service.fleet import Fleet

bp = Blueprint("adapter", __name__, url_prefix="/api/adapter")


def _fleet() -> Fleet:
    return services().proxy.fleet


def _caller() -> lora.LoraCaller:
    return services().lora


@bp.get("/all")
@require_role("admin")
def all_adapters() -> Response:
    """Every LoRA adapter on a live node: its lineage, the nodes holding it, where it is active now."""
    return ok(lora.fleet_adapters(_fleet(), services().clock()))


@bp.post("/load")
@require_role("admin")
def load() -> Response:
    """vLLM's /v1/load_lora_adapter on every live node of `base_model`; the result per node."""
    change = AdapterChange.from_payload(json_body(), load=True)
    stores = services()
    return ok(lora.change(_caller(), _fleet(), stores.nodes, change, load=True, now=stores.clock()))


@bp.post("/unload")
@require_role("admin")
def unload() -> Response:
    """vLLM's /v1/unload_lora_adapter on the nodes of `base_model`, or on every live node holding it."""
    change = AdapterChange.from_payload(json_body(), load=False)
    stores = services()
    return ok(lora.change(_caller(), _fleet(), stores.nodes, change, load=False, now=stores.clock()))

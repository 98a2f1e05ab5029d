"""Loading and unloading a LoRA adapter on the nodes of a base model at run
time, through vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM
serves them only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Every connection
goes through the network policy, as the proxy's do; the result is per node."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from dao.node import NodeStore
from model.adapter import AdapterChange, adapters_to_json, parse_model_list
from model.errors import NotFound, StorageUnavailable
from model.node import NodeStatus
from service.fleet import Fleet
from service.netpolicy import NetworkPolicy
from service.node_state import NodeState
from service.probe import bounded_get

log = logging.getLogger("nvllm.lora")

PARALLEL = 16
MAX_MESSAGE = 500  # characters of a node's answer kept in a result
MODELS_DEADLINE = 5.0


@dataclass(frozen=True)
class LoraCaller:
    """How nvllm reaches nodes for these calls."""

    http: urllib3.PoolManager
    netpolicy: NetworkPolicy
    api_key: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 300.0  # loading reads the adapter's weights from disk


def change(caller: LoraCaller, fleet: Fleet, store: NodeStore, request: AdapterChange, *,
           load: bool, now: float) -> dict[str, Any]:
    """Load (or unload) the adapter on every live node of the base model (for
    an unload without a base model: every node holding the adapter), then
    record each changed node's adapters as the node now lists them. Raises
    NotFound when no live node qualifies."""
    # An operator acts on the registry as it is now, not on this instance's
    # view of it, which may be a refresh behind a node that just registered.
    fleet.refresh()
    targets = _targets(fleet, request, load=load, now=now)
    if not targets:
        what = f"base model {request.base_model!r}" if request.base_model else f"adapter {request.lora_name!r}"
        raise NotFound(f"no live node serves {what}")
    path = "/v1/load_lora_adapter" if load else "/v1/unload_lora_adapter"
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(targets))) as pool:
        results = list(pool.map(lambda s: _call(caller, s, path, request), targets))
    changed = [s for s, r in zip(targets, results, strict=True) if r["ok"]]
    for state in changed:
        _record_adapters(caller, store, state)
    if changed:
        fleet.refresh()  # this instance routes by the new adapters at once; the others within a refresh
    return {"lora_name": request.lora_name, "base_model": request.base_model,
            "ok": all(r["ok"] for r in results), "nodes": results}


def _targets(fleet: Fleet, request: AdapterChange, *, load: bool, now: float) -> list[NodeState]:
    states = sorted(fleet.states(), key=lambda s: s.node_id)
    live = [s for s in states if s.node.effective_status(now) is not NodeStatus.OFFLINE and s.address_ok]
    if request.base_model is not None:
        return [s for s in live if request.base_model in s.node.models]
    return [s for s in live if s.node.adapter(request.lora_name) is not None]


def _call(caller: LoraCaller, state: NodeState, path: str, request: AdapterChange) -> dict[str, Any]:
    result: dict[str, Any] = {"node_id": state.node_id}
    try:
        target = caller.netpolicy.target(state.node)
        response = caller.http.request(
            "POST", target.base_url + path, body=json.dumps(request.to_vllm()).encode(),
            headers=_headers(caller, target, {"Content-Type": "application/json"}),
            timeout=urllib3.Timeout(connect=caller.connect_timeout, read=caller.read_timeout),
            retries=False, redirect=False,
        )
    except (Urllib3Error, OSError) as exc:
        log.warning("adapter %s on node %s: %s", path, state.node_id, type(exc).__name__)
        return {**result, "ok": False, "status": 0, "message": f"connection failed ({type(exc).__name__})"}
    return {**result, "ok": 200 <= response.status < 300, "status": response.status,
            "message": _message(response.data)}


def _record_adapters(caller: LoraCaller, store: NodeStore, state: NodeState) -> None:
    """Write the node's adapters as its /v1/models lists them now: the node's
    own word, not a change computed from what is stored, so no write of the
    agent or the poller can be lost to it. The next heartbeat says the same."""
    try:
        target = caller.netpolicy.target(state.node)
        # bounded_get sends its own Host (the checked address), as the poller does.
        auth = {k: v for k, v in _headers(caller, target, {}).items() if k != "Host"}
        status, text = bounded_get(target.base_url + "/v1/models", MODELS_DEADLINE, auth)
        adapters = parse_model_list(text)[1] if status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        adapters = None
    if adapters is None:
        return
    try:
        store.flag(state.node_id, {"adapters": adapters_to_json(adapters)})
    except StorageUnavailable:
        log.warning("could not record the adapters of node %s: storage unavailable", state.node_id)


def _headers(caller: LoraCaller, target, headers: dict[str, str]) -> dict[str, str]:
    out = dict(headers)
    if target.named:
        out["Host"] = target.host_header
    if caller.api_key and caller.netpolicy.sends_key(target.ip):
        out["Authorization"] = f"Bearer {caller.api_key}"
    return out


def _message(data: bytes) -> str:
    """vLLM answers success as plain text and errors as JSON {"error": {"message"}}."""
    text = data.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:MAX_MESSAGE]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:MAX_MESSAGE]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):  # FastAPI's 404 for an absent route
        return body["detail"][:MAX_MESSAGE]
    return text.strip()[:MAX_MESSAGE]


def fleet_adapters(fleet: Fleet, now: float) -> list[dict[str, Any]]:
    """Every adapter on a live node: lineage, the nodes holding it, and where
    it is running or queued now."""
    found: dict[str, dict[str, Any]] = {}
    for state in sorted(fleet.states(), key=lambda s: s.node_id):
        if state.node.effective_status(now) is NodeStatus.OFFLINE:
            continue
        for adapter in state.node.adapters:
            entry = found.setdefault(adapter.id, {**adapter.to_dict(), "nodes": [], "active_on": []})
            entry["nodes"].append(state.node_id)
            if state.node.node_info.adapter_active(adapter.id):
                entry["active_on"].append(state.node_id)
    return [found[name] for name in sorted(found)]

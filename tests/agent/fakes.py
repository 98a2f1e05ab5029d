"""In-memory stand-ins for nvllm and vLLM, a settable clock, and a config builder."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from agent.config import AgentConfig
from agent.nvllm import NodeGone, Rejected, Unreachable
from agent.vllm import VllmError
from model.adapter import Adapter
from model.vllm_metrics import Load


def make_config(**changes: Any) -> AgentConfig:
    base = AgentConfig(
        server="http://nvllm.test:5000",
        token="secret-token",
        node_id="gpu-1-8000",
        advertise_address="10.0.0.7",
        advertise_port=8000,
        vllm_url="http://127.0.0.1:8000",
        interval=1.0,
        timeout=3,
        drain_grace=5.0,
    )
    return replace(base, **changes)


class FakeNvllm:
    """nvllm's node API over a dict. `fail` makes every call raise it."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.inflight: dict[str, int] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    def _enter(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail

    def register(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._enter("register", payload)
        node = {"node_status": "offline", "models": [], **payload}
        self.nodes[payload["node_id"]] = node
        return dict(node)

    def update(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        self._enter("update", changes)
        node = self._node(node_id)
        info = {**node.get("node_info", {}), **changes.get("node_info", {})}
        node.update(changes, node_info=info)
        return dict(node)

    def delete(self, node_id: str) -> None:
        self._enter("delete", node_id)
        self._node(node_id)
        del self.nodes[node_id]

    def status(self, node_id: str) -> dict[str, Any]:
        self._enter("status", node_id)
        return {**self._node(node_id), "inflight": self.inflight.get(node_id, 0)}

    def _node(self, node_id: str) -> dict[str, Any]:
        if node_id not in self.nodes:
            raise NodeGone("HTTP 404: node not found")
        return self.nodes[node_id]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeVllm:
    """A vLLM whose health, load and models the test sets."""

    def __init__(self, models: list[str] | None = None, load: Load | None = None) -> None:
        self.problem: str | None = None
        self.models_list = ["fake-model"] if models is None else models
        self.adapters_list: list[Adapter] = []
        self.current = load or Load(running=2, waiting=1, kv_cache_usage=0.25)
        self.metrics_problem: str | None = None
        self.models_problem: str | None = None
        self.loads: list[Load] = []  # served first, one per call, before `current`

    def health_problem(self) -> str | None:
        return self.problem

    def models(self) -> list[str]:
        if self.models_problem or self.problem:
            raise VllmError(self.models_problem or self.problem)
        return list(self.models_list)

    def catalog(self) -> tuple[list[str], list[Adapter]]:
        return self.models(), list(self.adapters_list)

    def load(self) -> Load:
        if self.metrics_problem or self.problem:
            raise VllmError(self.metrics_problem or self.problem)
        return self.loads.pop(0) if self.loads else self.current


class FakeClock:
    """Monotonic time the test moves; `wait` advances it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += max(0.0, seconds)
        return event.is_set()


__all__ = ["FakeClock", "FakeNvllm", "FakeVllm", "NodeGone", "Rejected", "Unreachable", "make_config"]

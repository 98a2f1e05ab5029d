"""LoRA adapters as vLLM serves them: model cards with a `parent`, the
vllm:lora_requests_info gauge, and the runtime load/unload routes (present only
with runtime updating on, as VLLM_ALLOW_RUNTIME_LORA_UPDATING=True does)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from fakevllm import protocol as p
from fakevllm.engine import Engine, Seq

MAX_SERIES = 64  # label combinations kept; vLLM keeps every one it ever set


class Loras:
    """The adapters one server holds, and which of its sequences use which."""

    def __init__(self, modules: Mapping[str, str] | None, base_model: str, *, max_loras: int = 1,
                 runtime_updating: bool = False) -> None:
        self.modules: dict[str, str] = dict(modules or {})
        self.base_model = base_model
        self.max_loras = max_loras
        self.runtime_updating = runtime_updating
        self._of: dict[int, str] = {}  # id(seq) -> adapter name, while the request lasts
        self._series: OrderedDict[tuple[str, str], float] = OrderedDict()

    def cards(self, created: int) -> list[dict[str, Any]]:
        return [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                 "parent": self.base_model, "max_model_len": None, "permission": [p.model_permission(created)]}
                for name, path in self.modules.items()]

    def track(self, seqs: Iterable[Seq], model: str) -> None:
        if model in self.modules:
            for seq in seqs:
                self._of[id(seq)] = model

    def forget(self, seqs: Iterable[Seq]) -> None:
        for seq in seqs:
            self._of.pop(id(seq), None)

    def collect(self, engine: Engine) -> Iterator[Metric]:
        """vllm:lora_requests_info: one series per combination of running and
        waiting adapters ever seen, valued with when it was last current."""
        if not self.modules and not self.runtime_updating:
            return
        running = ",".join(dict.fromkeys(self._of[id(s)] for s in engine.running if id(s) in self._of))
        waiting = ",".join(dict.fromkeys(self._of[id(s)] for s in engine.waiting if id(s) in self._of))
        self._series[(running, waiting)] = time.time()
        self._series.move_to_end((running, waiting))
        while len(self._series) > MAX_SERIES:
            self._series.popitem(last=False)
        metric = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                   labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        for (run, wait), when in self._series.items():
            metric.add_metric([str(self.max_loras), run, wait], when)
        yield metric

    # -- routes ----------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        if not self.runtime_updating:
            return []
        return [web.post("/v1/load_lora_adapter", self._load), web.post("/v1/unload_lora_adapter", self._unload)]

    async def _load(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            return _error(400, "BadRequestError", "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.modules:
            return _error(400, "BadRequestError", f"The lora adapter '{name}' has already been loaded.")
        self.modules[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            return _error(400, "BadRequestError", "'lora_name' needs to be provided to unload a LoRA adapter.")
        if self.modules.pop(name, None) is None:
            return _error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _error(status: int, err_type: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json", body=p.error_body(message, err_type, status))


def parse_modules(specs: Iterable[str]) -> dict[str, str]:
    """vLLM's --lora-modules name=path (a bare name is its own path)."""
    modules = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        modules[name] = path or name
    return modules

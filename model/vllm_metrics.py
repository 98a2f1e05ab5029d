"""vLLM's Prometheus /metrics text turned into the node's load (running, waiting, KV cache).

Shared by the agent (its heartbeats) and service/probe.py (polling nodes that
have no agent); it needs only prometheus-client, which both requirement files
carry."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from model.adapter import LORA_INFO, RUNNING_LABEL, WAITING_LABEL, split_label

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# vLLM's V0 engine parks preempted requests on the CPU; they wait for the GPU
# like queued ones, so they count as waiting.
SWAPPED = "vllm:num_requests_swapped"
# Renamed in vLLM 0.9; 0.9-0.10 export both, later releases only the new name.
KV_USAGE_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
WANTED = frozenset((RUNNING, WAITING, SWAPPED, *KV_USAGE_NAMES))


class MetricsError(ValueError):
    """The text is not Prometheus exposition format, or holds no vLLM load."""


@dataclass(frozen=True)
class Load:
    """A vLLM server's load, combined over its engines and model_name series."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    # LoRA adapters of the requests running / waiting now (vllm:lora_requests_info);
    # None when the server exports no such gauge (LoRA off).
    running_adapters: tuple[str, ...] | None = None
    waiting_adapters: tuple[str, ...] | None = None

    @property
    def busy(self) -> int:
        return self.running + self.waiting

    def to_node_info(self) -> dict[str, int | float | None]:
        """nvllm's node_info. `kv_cache` is the seed's integer field, so it
        carries the usage as a whole percent (0-100); `kv_cache_usage` keeps
        the exact 0-1 fraction (None when vLLM reported none)."""
        usage = self.kv_cache_usage
        info: dict = {
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache": 0 if usage is None else round(usage * 100),
            "kv_cache_usage": usage,
        }
        if self.running_adapters is not None:
            info["running_lora_adapters"] = list(self.running_adapters)
            info["waiting_lora_adapters"] = list(self.waiting_adapters or ())
        return info


def parse_load(text: str) -> Load:
    """Read running, waiting and KV-cache usage from a /metrics page.

    Counts are summed over every series (one per engine of a data-parallel
    server, one per model_name). KV-cache usage is the mean over engines; see
    `_mean_usage` for why. Raises MetricsError when the page cannot be parsed
    or carries no request counts at all (not a vLLM server, or stats disabled).
    """
    samples, lora = _collect(text)
    if RUNNING not in samples and WAITING not in samples:
        raise MetricsError(f"no {RUNNING} or {WAITING} in /metrics")
    return Load(
        running=_count(samples.get(RUNNING, [])),
        waiting=_count(samples.get(WAITING, [])) + _count(samples.get(SWAPPED, [])),
        kv_cache_usage=_mean_usage(samples),
        running_adapters=None if lora is None else tuple(split_label(lora.get(RUNNING_LABEL, ""))),
        waiting_adapters=None if lora is None else tuple(split_label(lora.get(WAITING_LABEL, ""))),
    )


def _collect(text: str) -> tuple[dict[str, list[float]], dict[str, str] | None]:
    """The values of the samples we want, by sample name, and the labels of
    the newest vllm:lora_requests_info series (None when there is none)."""
    found: dict[str, list[float]] = {}
    lora: dict[str, str] | None = None
    newest = -math.inf
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in WANTED and math.isfinite(sample.value):
                    found.setdefault(sample.name, []).append(sample.value)
                elif sample.name == LORA_INFO and sample.value >= newest:
                    # Its value is when vLLM last set it: the newest is now.
                    lora, newest = dict(sample.labels), sample.value
    except ValueError as exc:
        raise MetricsError(f"/metrics is not Prometheus text: {exc}") from None
    return found, lora


def _count(values: Iterable[float]) -> int:
    # Gauges are floats on the wire ("3.0"); a negative one would be a vLLM bug.
    return max(0, round(sum(values)))


def _mean_usage(samples: dict[str, list[float]]) -> float | None:
    """The mean over engines, clamped to 0-1, under the newest name present.

    The mean rather than the max: a data-parallel vLLM spreads requests over
    its engines itself, so the node can take new work while any engine has
    room; the mean is the share of the node's whole KV cache in use, while the
    max would call the node full when a single engine is.
    """
    for name in KV_USAGE_NAMES:
        values = samples.get(name)
        if values:
            return min(1.0, max(0.0, sum(values) / len(values)))
    return None

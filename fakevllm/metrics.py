"""vLLM-named Prometheus metrics and the ORCA `endpoint-load-metrics` header."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fakevllm.engine import BLOCK_SIZE, Engine

METRICS_STYLES = ("v1", "legacy", "both")


class VLLMCollector:
    """Reads engine state at scrape time.

    "v1" mirrors the current V1 engine (labels model_name and engine), "legacy" the V0
    engine (gpu_cache_usage_perc, label model_name only), "both" the 0.9-0.10 releases
    that exported the V1 names next to the deprecated gpu_* ones.
    """

    def __init__(self, engine: Engine, model_name: str, style: str,
                 extra: Callable[[Engine], Iterator[Metric]] | None = None) -> None:
        if style not in METRICS_STYLES:
            raise ValueError(f"metrics_style must be one of {METRICS_STYLES}")
        self.engine = engine
        self.extra = extra  # more families read at scrape time (LoRA info)
        self.style = style
        self.labels = ["model_name"] if style == "legacy" else ["model_name", "engine"]
        self.values = [model_name] if style == "legacy" else [model_name, "0"]

    def _gauge(self, name: str, doc: str, value: float) -> Metric:
        metric = GaugeMetricFamily(name, doc, labels=self.labels)
        metric.add_metric(self.values, value)
        return metric

    def _counter(self, name: str, doc: str, value: float) -> Metric:
        metric = CounterMetricFamily(name, doc, labels=self.labels)
        metric.add_metric(self.values, value)
        return metric

    def collect(self) -> Iterator[Metric]:
        e, c = self.engine, self.engine.counters
        usage = e.kv.usage()
        yield self._gauge("vllm:num_requests_running",
                          "Number of requests in model execution batches.", len(e.running))
        yield self._gauge("vllm:num_requests_waiting",
                          "Number of requests waiting to be processed.", len(e.waiting))
        if self.style == "legacy":
            yield from self._legacy_only(usage)
        if self.style == "both":
            yield self._gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent "
                              "usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.", usage)
            yield self._counter("vllm:gpu_prefix_cache_queries", "GPU prefix cache queries, in terms "
                                "of number of queried tokens.", c.prefix_queries)
            yield self._counter("vllm:gpu_prefix_cache_hits", "GPU prefix cache hits, in terms of "
                                "number of cached tokens.", c.prefix_hits)
        if self.style != "legacy":
            yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                              usage)
            yield self._counter("vllm:prefix_cache_queries",
                                "Prefix cache queries, in terms of number of queried tokens.",
                                c.prefix_queries)
            yield self._counter("vllm:prefix_cache_hits",
                                "Prefix cache hits, in terms of number of cached tokens.", c.prefix_hits)
            yield self._counter("vllm:num_preemptions",
                                "Cumulative number of preemption from the engine.", 0)
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", c.prompt_tokens)
        yield self._counter("vllm:generation_tokens", "Number of generation tokens processed.",
                            c.generation_tokens)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed "
                                      "requests.", labels=[*self.labels, "finished_reason"])
        for reason, count in c.finished.items():
            success.add_metric([*self.values, reason], count)
        yield success
        if self.style != "legacy":
            yield self._cache_config_info()
        if self.extra is not None:
            yield from self.extra(self.engine)

    def _legacy_only(self, usage: float) -> Iterator[Metric]:
        c = self.engine.counters
        yield self._gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", 0)
        yield self._gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                          usage)
        yield self._gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.",
                          0)
        hit_rate = c.prefix_hits / c.prefix_queries if c.prefix_queries else 0.0
        yield self._gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", hit_rate)

    def _cache_config_info(self) -> Metric:
        # Lets a scraper learn the KV capacity, as vLLM's cache_config_info does.
        info = {"block_size": str(BLOCK_SIZE), "cache_dtype": "auto", "enable_prefix_caching": "True",
                "num_gpu_blocks": str(self.engine.kv.num_blocks)}
        metric = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                   labels=list(info))
        metric.add_metric(list(info.values()), 1.0)
        return metric


def make_registry(collector: VLLMCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def orca_header(fmt: str, engine: Engine) -> dict[str, str] | None:
    """vLLM's `endpoint-load-metrics` header for an `endpoint-load-metrics-format` request.

    Same two named metrics, order and layout as vllm/entrypoints/.../orca_metrics.py.
    """
    fmt = fmt.strip().lower()
    named = {"num_requests_waiting": float(len(engine.waiting)), "kv_cache_usage_perc": engine.kv.usage()}
    if fmt == "json":
        return {"endpoint-load-metrics": "JSON " + json.dumps({"named_metrics": named})}
    if fmt == "text":
        text = ", ".join(f"named_metrics.{k}={v}" for k, v in named.items())
        return {"endpoint-load-metrics": "TEXT " + text}
    return None

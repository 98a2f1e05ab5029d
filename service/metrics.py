"""Prometheus metrics of the balancer itself, one registry per app."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.fleet import Fleet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class FleetCollector(Collector):
    """Per-node gauges read from the fleet view when scraped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["node"])

        inflight = gauge("nvllm_node_inflight", "Requests in flight to the node, all instances")
        load = gauge("nvllm_node_load", "Load the router assumes: in flight plus traffic that bypassed nvllm")
        ejected = gauge("nvllm_node_ejected", "1 while the node is out of rotation after failures")
        kv = gauge("nvllm_node_kv_cache_usage", "Last known KV-cache usage (0-1)")
        for state in self.fleet.known():
            inflight.add_metric([state.node_id], state.inflight)
            load.add_metric([state.node_id], state.load)
            ejected.add_metric([state.node_id], 1 if state.breaker.ejected else 0)
            if state.kv_usage is not None:
                kv.add_metric([state.node_id], state.kv_usage)
        storage = GaugeMetricFamily("nvllm_storage_up", "1 while the last fleet refresh reached Redis")
        storage.add_metric([], 1 if self.fleet.storage_ok else 0)
        yield from (inflight, load, ejected, kv, storage)


class UpstreamCollector(Collector):
    """Requests forwarded to each node, by outcome, for the nodes still in the
    fleet view: a node's series (its id may carry a host name) goes when the
    node does, instead of staying in the registry for the process's life."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def inc(self, node: str, outcome: str) -> None:
        with self._lock:
            self._counts[(node, outcome)] = self._counts.get((node, outcome), 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        live = {state.node_id for state in self.fleet.known()}
        family = CounterMetricFamily(
            "nvllm_upstream_requests", "Requests forwarded to nodes, by outcome", labels=["node", "outcome"]
        )
        with self._lock:
            for key in [key for key in self._counts if key[0] not in live]:
                del self._counts[key]
            counts = sorted(self._counts.items())
        for (node, outcome), count in counts:
            family.add_metric([node, outcome], count)
        yield family


class BalancerMetrics:
    def __init__(self, fleet: Fleet) -> None:
        # *_created series double the output and no dashboard reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nvllm_http_requests", "HTTP requests answered", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "nvllm_http_request_seconds", "Time to answer (to the last byte for streams)",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.upstream = UpstreamCollector(fleet)
        self.registry.register(self.upstream)
        self.registry.register(FleetCollector(fleet))

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_upstream(self, done: dict) -> None:
        self.upstream.inc(done["node"], done["outcome"])

    def render(self) -> bytes:
        return generate_latest(self.registry)

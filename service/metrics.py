"""Prometheus metrics of the balancer itself.

Counters, histograms and the in-flight gauge are written by whichever worker
process handles a request. With several server workers, prometheus-client's
multiprocess mode keeps each worker's values in a file of the directory
PROMETHEUS_MULTIPROC_DIR names (main.py sets it up), and a scrape answered by
any worker sums them all. The per-node gauges (load, KV cache, status) are the
answering worker's view of the fleet, which every worker reads from the same
Redis.

A node's series go when the node leaves the fleet view (deleted or purged):
values kept in files cannot be removed from them, so every scrape leaves out
the samples of nodes no longer known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from model.node import NodeStatus
from service import routes
from service.fleet import Fleet

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# First tokens: from a warm cache (tens of ms) to a long prompt behind a queue.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
# Inter-token latency: a fast small model to a crowded batch of a large one.
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)
# Label values a client chooses are bounded: a path not in the route table
# counts as "other" (service/routes.label), a model that no node lists as "other".
OTHER = "other"
MODELS_TTL = 1.0  # seconds the set of listed models is reused before it is read again


class FleetCollector(Collector):
    """Per-node gauges read from the fleet view when scraped."""

    def __init__(self, fleet: Fleet, clock: Callable[[], float]) -> None:
        self.fleet = fleet
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, text: str, labels: tuple[str, ...] = ("node",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=list(labels))

        up = gauge("nvllm_node_up", "1 while the node's heartbeats (or nvllm's polls) keep coming")
        routable = gauge("nvllm_node_routable", "1 while the node takes new requests: up, online, healthy, not ejected")
        status = gauge("nvllm_node_status", "1 for the node's current status", ("node", "status"))
        poll_failing = gauge("nvllm_node_poll_failing", "1 while nvllm's polls of the node's /health fail")
        inflight = gauge("nvllm_node_inflight", "Requests in flight to the node, all instances")
        load = gauge("nvllm_node_load", "Load the router assumes: in flight plus traffic that bypassed nvllm")
        running = gauge("nvllm_node_running", "Requests the node last reported running")
        waiting = gauge("nvllm_node_waiting", "Requests the node last reported waiting")
        kv = gauge("nvllm_node_kv_cache_usage", "Last known KV-cache usage (0-1)")
        now = self.clock()
        for state in self.fleet.known():
            node, node_id = state.node, state.node_id
            up.add_metric([node_id], 1 if node.alive(now) else 0)
            routable.add_metric(
                [node_id], 1 if node.routable(now) and state.address_ok and state.breaker.allows(now) else 0
            )
            current = node.effective_status(now)
            for each in NodeStatus:
                status.add_metric([node_id, each.value], 1 if each is current else 0)
            poll_failing.add_metric([node_id], 1 if node.probe_failing else 0)
            inflight.add_metric([node_id], state.inflight)
            load.add_metric([node_id], state.load)
            running.add_metric([node_id], state.reported_running)
            waiting.add_metric([node_id], state.reported_waiting)
            if state.kv_usage is not None:
                kv.add_metric([node_id], state.kv_usage)
        storage = GaugeMetricFamily("nvllm_storage_up", "1 while the last fleet refresh reached Redis")
        storage.add_metric([], 1 if self.fleet.storage_ok else 0)
        yield from (up, routable, status, poll_failing, inflight, load, running, waiting, kv, storage)


class _Scrape:
    """What one scrape shows: the recorded metrics without the samples of
    nodes that left the fleet, then the fleet's gauges."""

    def __init__(self, sources: Iterable[Collector | CollectorRegistry], live: set[str]) -> None:
        self.sources = sources
        self.live = live

    def _keeps(self, node: str | None) -> bool:
        return node is None or node in self.live

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            for family in source.collect():
                family.samples = [s for s in family.samples if self._keeps(s.labels.get("node"))]
                yield family


class BalancerMetrics:
    def __init__(self, fleet: Fleet, *, clock: Callable[[], float] = time.time,
                 multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: PROMETHEUS_MULTIPROC_DIR when the server runs
        several workers (it must be set before prometheus_client is imported)."""
        if multiprocess_dir and values.ValueClass is values.MutexValue:
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported")
        # *_created series double the output and no dashboard reads them.
        disable_created_metrics()
        self.fleet = fleet
        self.multiprocess = bool(multiprocess_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        self.fleet_gauges = FleetCollector(fleet, clock)
        if self.multiprocess:
            self._merged = CollectorRegistry()
            MultiProcessCollector(self._merged, multiprocess_dir)
        registry = self.registry

        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(name, text, labels, registry=registry)

        self.requests = counter("nvllm_http_requests", "HTTP requests answered, by Flask endpoint", ["route", "code"])
        self.latency = Histogram(
            "nvllm_http_request_seconds", "Time to answer (to the last byte for streams)",
            ["route"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.proxy_requests = counter(
            "nvllm_proxy_requests", "/v1 requests answered, by model asked for, path and status code",
            ["model", "route", "code"],
        )
        self.upstream = counter("nvllm_upstream_requests", "Attempts sent to nodes, by outcome", ["node", "outcome"])
        self.retries = counter(
            "nvllm_upstream_retries",
            "Attempts at the node that failed or were shed before the first byte (then tried elsewhere, or failed)",
            ["node"],
        )
        self.ejections = counter("nvllm_node_ejections", "Times the node was taken out of rotation", ["node"])
        self.decisions = counter(
            "nvllm_routing_decisions", "Requests sent to the node, by why it was chosen", ["node", "reason"]
        )
        self.output_tokens = counter("nvllm_output_tokens", "Tokens generated in answers relayed", ["model", "node"])
        self.ttft = Histogram(
            "nvllm_time_to_first_token_seconds", "Streams: from sending to the node to its first token",
            ["model", "node"], buckets=TTFT_BUCKETS, registry=registry,
        )
        self.itl = Histogram(
            "nvllm_inter_token_latency_seconds", "Streams: mean time between tokens after the first, per answer",
            ["model", "node"], buckets=ITL_BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "nvllm_requests_in_flight", "/v1 requests being forwarded by this instance, all workers",
            registry=registry, multiprocess_mode="livesum",
        )
        self.ejected = Gauge(
            "nvllm_node_ejected", "1 while the node is out of rotation after failures (in any worker)",
            ["node"], registry=registry, multiprocess_mode="livemax",
        )
        self._by_node = (self.upstream, self.retries, self.ejections, self.decisions, self.output_tokens,
                         self.ttft, self.itl, self.ejected)
        self._seen: set[str] = set()
        # labels() costs microseconds (a lock, checks, tuples); a request records ten series.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._lock = threading.Lock()
        self._models: frozenset[str] = frozenset()
        self._models_at = float("-inf")

    # --- recording ---

    def observe_request(self, route: str, code: int, seconds: float, *, path: str | None = None,
                        model: object = None) -> None:
        """One answered request: its endpoint, and for a forwarded path its
        route and model."""
        self._child(self.requests, route, str(code)).inc()
        self._child(self.latency, route).observe(seconds)
        forwarded = routes.label(path) if path is not None else None
        if forwarded is not None:
            self._child(self.proxy_requests, self._model_label(model), forwarded, str(code)).inc()

    def observe_upstream(self, done: dict) -> None:
        """The proxy's on_done report of one attempt at a node."""
        node = done["node"]
        self._seen.add(node)
        outcome = done["outcome"]
        self._child(self.upstream, node, outcome).inc()
        if outcome.startswith(("failed:", "retried:")):
            self._child(self.retries, node).inc()
            return
        self._child(self.decisions, node, done.get("reason") or OTHER).inc()
        model = self._model_label(done.get("model"))
        if done.get("output_tokens"):
            self._child(self.output_tokens, model, node).inc(done["output_tokens"])
        if done.get("ttft") is not None:
            self._child(self.ttft, model, node).observe(done["ttft"])
        if done.get("itl") is not None:
            self._child(self.itl, model, node).observe(done["itl"])

    def observe_breaker(self, node: str, ejected: bool) -> None:
        """The fleet's on_breaker: a node ejected, or back in rotation."""
        self._seen.add(node)
        if ejected:
            self.ejections.labels(node).inc()
        self.ejected.labels(node).set(1 if ejected else 0)

    def track_in_flight(self) -> Callable[[], None]:
        """Count one /v1 request in flight; call what is returned when it ends
        (more than once is harmless)."""
        self.in_flight.inc()
        ended: list[bool] = []  # both callers run on the request's own thread (or greenlet)

        def end() -> None:
            if not ended:
                ended.append(True)
                self.in_flight.dec()

        return end

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _model_label(self, model: object) -> str:
        if model is None or model == "":
            return ""
        if time.monotonic() - self._models_at > MODELS_TTL:
            self._models = frozenset(m for s in self.fleet.known() for m in s.node.models)
            self._models_at = time.monotonic()
        return model if isinstance(model, str) and model in self._models else OTHER

    # --- scraping ---

    def render(self) -> bytes:
        live = {state.node_id for state in self.fleet.known()}
        with self._lock:
            # This worker's own breakers, set again at every scrape it answers:
            # a node deleted and registered again starts with a closed breaker,
            # whatever its old series in a file said.
            for node in live:
                self.ejected.labels(node).set(1 if self.fleet.is_failing(node) else 0)
            gone, self._seen = self._seen - live, set(live)
            if gone and not self.multiprocess:  # in files nothing can be removed; the scrape filters instead
                for metric in self._by_node:
                    for node in gone:
                        metric.remove_by_labels({"node": node})
                self._children.clear()  # none may point at a removed series
        recorded = self._merged if self.multiprocess else self.registry
        return generate_latest(_Scrape((recorded, self.fleet_gauges), live))

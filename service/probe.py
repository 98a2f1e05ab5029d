"""Polling nodes that have no agent: /health and /metrics, about once per
interval per node however many nvllm instances run (a Redis lock per node
decides which instance polls it)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import urllib3

from dao.node import NodeStore
from model.errors import StorageUnavailable
from model.node import Node
from model.vllm_metrics import MetricsError, parse_load

log = logging.getLogger("nvllm.probe")

PROBE_TIMEOUT = 2.0
PARALLEL_PROBES = 16


class Prober:
    def __init__(
        self,
        nodes: NodeStore,
        *,
        interval: float,
        http: urllib3.PoolManager | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner = uuid.uuid4().hex[:12]
        self._nodes = nodes
        self._interval = interval
        self._http = http or urllib3.PoolManager(maxsize=PARALLEL_PROBES)
        self._clock = clock
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        """Poll every node this instance wins the lock for; return how many."""
        try:
            nodes = [
                n for n in self._nodes.load_all() if self._nodes.claim_probe(n.node_id, self.owner, self._interval)
            ]
        except StorageUnavailable:
            return 0
        if nodes:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_PROBES, len(nodes))) as pool:
                list(pool.map(self.probe, nodes))
        return len(nodes)

    def probe(self, node: Node) -> bool:
        """One poll. Success is a heartbeat carrying the node's load; failure
        marks it not routable without touching its liveness."""
        try:
            healthy = self._get(node.url + "/health")[0] == 200
            load = None
            if healthy:
                status, text = self._get(node.url + "/metrics")
                if status == 200:
                    try:
                        load = parse_load(text)
                    except MetricsError:
                        load = None
            if healthy:
                changes = {"node_info": load.to_node_info()} if load else {}
                self._nodes.update(node.node_id, changes, self._clock(), fields={"probe_failing": "0"})
            else:
                self._nodes.flag(node.node_id, {"probe_failing": "1"})
        except StorageUnavailable:
            return False
        self._log_change(node.node_id, healthy)
        return healthy

    def _get(self, url: str) -> tuple[int, str]:
        try:
            answer = self._http.request("GET", url, timeout=PROBE_TIMEOUT, retries=False)
        except (urllib3.exceptions.HTTPError, OSError):
            return 0, ""
        return answer.status, answer.data.decode("utf-8", "replace")

    def _log_change(self, node_id: str, healthy: bool) -> None:
        if healthy and node_id in self._failing:
            self._failing.discard(node_id)
            log.info("poll of node %s succeeded: routable again", node_id)
        elif not healthy and node_id not in self._failing:
            self._failing.add(node_id)
            log.warning("poll of node %s failed: not routable until a poll succeeds", node_id)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=_poll_loop,
                args=(weakref.ref(self), self._stop, self._interval),
                name="nvllm-probe",
                daemon=True,
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()


def _poll_loop(ref: weakref.ReferenceType[Prober], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        prober = ref()
        if prober is None:
            return
        try:
            prober.tick()
        except Exception:  # polling must outlive any one bad round
            log.exception("poll round failed")
        del prober

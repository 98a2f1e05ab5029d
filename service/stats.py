"""Request statistics for the dashboard: recorded from each forwarded attempt
without touching the request path, shared through Redis, read back as rates
and first-token percentiles per node, per model and for the fleet.

Each process counts in memory and a background thread adds its counts to the
shared buckets about once a second (dao/stats.py), so a report costs a dict
update under a lock, never a Redis round trip, and whichever worker or
instance answers a dashboard poll sums the same buckets as any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from dao.inflight import InflightStore
from dao.stats import BUCKET_SECONDS, BUCKET_TTL, MODEL, NODE, Buckets, StatsStore, bucket_start
from model.alias import Alias
from model.errors import StorageUnavailable
from model.node import Node, NodeStatus
from model.stats import Counts, summary
from service.periodic import start_periodic

log = logging.getLogger("nvllm.stats")

FLUSH_INTERVAL = 1.0
RATE_SECONDS = 10  # requests and errors per second: over the last complete buckets of this span
MINUTE_SECONDS = 60  # tokens per second and first-token percentiles: over the last minute
# A model name is the client's to choose (a node that lists no models takes
# any), so each process counts at most this many per bucket, the rest together.
MAX_MODELS = 32
OTHER_MODELS = "(other)"
MAX_MODEL_CHARS = 128
EJECTED_LEASE = 5.0  # other instances trust our ejected set this long


def is_error(done: dict[str, Any]) -> bool:
    """An attempt the node did not serve: a failed connection, a retried or
    5xx answer, a stream cut by the node. A client that went away is not the
    node's failure, nor is a 4xx it answered."""
    outcome = str(done.get("outcome", ""))
    if outcome == "client_gone":
        return False
    return outcome != "ok" or int(done.get("status") or 0) >= 500


class StatsRecorder:
    """Counts reports in memory and flushes them in the background."""

    def __init__(
        self,
        store: StatsStore,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = FLUSH_INTERVAL,
        instance_id: str | None = None,
        ejected: Callable[[], list[str]] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._instance_id = instance_id
        self._ejected = ejected
        self._pending: Buckets = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._storage_ok = True

    def observe(self, done: dict[str, Any]) -> None:
        """One attempt's report from the proxy (its on_done). Never raises, never
        waits on Redis."""
        try:
            tokens = int(done.get("output_tokens") or 0)
            ttft = done.get("ttft")
            ttft = float(ttft) if isinstance(ttft, (int, float)) and not isinstance(ttft, bool) else None
            node = str(done["node"])
        except (KeyError, TypeError, ValueError):
            log.warning("malformed request report skipped")
            return
        error = is_error(done)
        model = done.get("model")
        start = bucket_start(self._clock())
        with self._lock:
            scoped = self._pending.setdefault(start, {})
            scoped.setdefault((NODE, node), Counts()).observe(error=error, tokens=tokens, ttft=ttft)
            if isinstance(model, str) and model:
                key = (MODEL, model[:MAX_MODEL_CHARS])
                if key not in scoped and sum(1 for s, _ in scoped if s == MODEL) >= MAX_MODELS:
                    key = (MODEL, OTHER_MODELS)
                scoped.setdefault(key, Counts()).observe(error=error, tokens=tokens, ttft=ttft)
        if self._thread is None:
            self.start()

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared buckets, and
        publish this instance's ejected nodes. While Redis is unreachable the
        counts are kept, as long as they are young enough to be read."""
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            if pending:
                self._store.add(pending)
            if self._instance_id is not None and self._ejected is not None:
                self._store.publish_ejected(self._instance_id, self._ejected(), lease=EJECTED_LEASE)
        except StorageUnavailable:
            if self._storage_ok:
                log.warning("storage unavailable: request statistics kept in memory until it is back")
            self._storage_ok = False
            self._keep(pending)
            return
        if not self._storage_ok:
            log.info("storage recovered: request statistics flushed")
        self._storage_ok = True

    def _keep(self, pending: Buckets) -> None:
        oldest = bucket_start(self._clock()) - BUCKET_TTL
        with self._lock:
            for start, scoped in pending.items():
                if start < oldest:
                    continue
                mine = self._pending.setdefault(start, {})
                for key, counts in scoped.items():
                    mine.setdefault(key, Counts()).add(counts)

    def start(self) -> None:
        """Start the background flusher (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = start_periodic(self, "flush", self._interval, self._stop,
                                          name="nvllm-stats", log=log, what="request statistics flush")

    def close(self) -> None:
        """Stop the flusher and flush what is left (clean shutdown)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2)
        self.flush()


def snapshot(
    nodes: list[Node],
    stats: StatsStore,
    inflight: InflightStore,
    *,
    now: float,
    include_address: bool,
    aliases: Iterable[Alias] = (),
    include_hidden: bool = False,
) -> dict[str, Any]:
    """Every node with its live state and request statistics, every model, the
    model aliases, and fleet totals, as the dashboard shows them. Only complete
    buckets count: the current one is still filling, and each process adds to
    it up to a flush late. Hidden aliases only with `include_hidden`: a user
    sees the ones GET /v1/models lists."""
    current = bucket_start(now)
    last = current - BUCKET_SECONDS
    buckets = stats.read(current - MINUTE_SECONDS, last)
    recent_from = current - RATE_SECONDS
    in_flight = inflight.totals(now=now)
    ejected = stats.ejected(now=now)

    recent: dict[tuple[str, str], Counts] = {}
    minute: dict[tuple[str, str], Counts] = {}
    series = []
    for start in range(current - MINUTE_SECONDS, current, BUCKET_SECONDS):
        scoped = buckets.get(start, {})
        fleet_bucket = Counts()
        for key, counts in scoped.items():
            minute.setdefault(key, Counts()).add(counts)
            if start >= recent_from:
                recent.setdefault(key, Counts()).add(counts)
            if key[0] == NODE:
                fleet_bucket.add(counts)
        series.append({"t": start, "requests": fleet_bucket.requests, "errors": fleet_bucket.errors,
                       "tokens": fleet_bucket.tokens})

    def numbers(key: tuple[str, str]) -> dict[str, Any]:
        return summary(recent.get(key, Counts()), minute.get(key, Counts()),
                       rate_seconds=RATE_SECONDS, minute_seconds=MINUTE_SECONDS)

    node_rows = []
    for node in nodes:
        row = node.to_dict(now, include_address=include_address)
        row["alive"] = node.alive(now)
        row["seconds_since_update"] = round(max(0.0, now - node.update_time), 3)
        row["probe_failing"] = node.probe_failing
        row["ejected_by"] = ejected.get(node.node_id, 0)
        row["routable"] = node.routable(now) and not row["ejected_by"]
        row["inflight"] = in_flight.get(node.node_id, 0)
        row["stats"] = numbers((NODE, node.node_id))
        node_rows.append(row)

    model_names = {m for node in nodes for m in node.models} | {name for scope, name in minute if scope == MODEL}
    models = []
    for name in sorted(model_names):
        serving = [row for node, row in zip(nodes, node_rows, strict=True) if node.serves(name)]
        models.append({
            "model": name,
            "nodes": len(serving),
            "routable": sum(1 for row in serving if row["routable"]),
            "stats": numbers((MODEL, name)),
        })

    alias_rows = [
        {**alias.to_dict(), "routable": sum(1 for node, row in zip(nodes, node_rows, strict=True)
                                            if row["routable"] and node.serves(alias.model))}
        for alias in sorted(aliases, key=lambda a: a.alias) if alias.listed or include_hidden
    ]

    fleet_recent, fleet_minute = Counts(), Counts()
    for key, counts in recent.items():
        if key[0] == NODE:
            fleet_recent.add(counts)
    for key, counts in minute.items():
        if key[0] == NODE:
            fleet_minute.add(counts)
    totals = {
        "nodes": len(nodes),
        "alive": sum(1 for row in node_rows if row["alive"]),
        "routable": sum(1 for row in node_rows if row["routable"]),
        "draining": sum(1 for n in nodes if n.alive(now) and n.node_status is NodeStatus.DRAINING),
        "running": sum(n.node_info.running for n in nodes if n.alive(now)),
        "waiting": sum(n.node_info.waiting for n in nodes if n.alive(now)),
        "inflight": sum(in_flight.values()),
        "instances": stats.instances(now=now),
        "stats": summary(fleet_recent, fleet_minute, rate_seconds=RATE_SECONDS, minute_seconds=MINUTE_SECONDS),
    }
    return {
        "window": {"bucket_seconds": BUCKET_SECONDS, "rate_seconds": RATE_SECONDS,
                   "minute_seconds": MINUTE_SECONDS, "until": last + BUCKET_SECONDS},
        "totals": totals,
        "nodes": node_rows,
        "models": models,
        "aliases": alias_rows,
        "series": series,
    }

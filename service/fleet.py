"""The in-process view of the fleet that routing reads: nodes, load, health.

Routing never waits on Redis. A background thread refreshes the view from Redis
every `refresh_interval` seconds, and publishes this instance's in-flight
counts so the other instances see them. Between refreshes the view is updated
in place: requests sent and finished here, load reported in-band by vLLM, and
failures seen while forwarding.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Protocol

from dao.inflight import InflightStore
from dao.node import NodeStore
from model.errors import StorageUnavailable
from model.node import Node, NodeStatus
from service.breaker import Breaker
from service.netpolicy import NetworkPolicy
from service.node_state import NodeState

log = logging.getLogger("nvllm.fleet")

LEASE_SECONDS = 10.0  # how long another instance trusts our published counts


class ReportListener(Protocol):
    """Who learns from the nodes' reports: the routing policy."""

    def report(self, node_id: str, running: int, waiting: int, kv_usage: float | None, now: float) -> None: ...

    def forget(self, node_id: str) -> None: ...


class Fleet:
    def __init__(
        self,
        nodes: NodeStore,
        inflight: InflightStore,
        *,
        refresh_interval: float = 0.5,
        eject_after: int = 3,
        clock: Callable[[], float] = time.time,
        health_check: Callable[[Node], bool] | None = None,
        netpolicy: NetworkPolicy | None = None,
        listener: ReportListener | None = None,
        instance_id: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._nodes = nodes
        self._inflight = inflight
        self._interval = refresh_interval
        self._eject_after = eject_after
        self._clock = clock
        self._sleep = sleep
        self._health_check = health_check
        # Default: what nvllm allows when it listens on loopback.
        self.netpolicy = netpolicy or NetworkPolicy.from_settings(None, None, "127.0.0.1")
        self._states: dict[str, NodeState] = {}
        self._revs: dict[str, str] = {}  # node_id -> the rev its state was read at
        self._lock = threading.Lock()
        self._on_demand = threading.Lock()  # refresh_now's callers queue here
        self._refreshed_at = 0.0
        self._attempted_at = 0.0
        self._storage_ok = True
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._backoff = refresh_interval
        self.listener = listener
        # Told (node_id, ejected) when a node is ejected or recovers: metrics count ejections.
        self.on_breaker: Callable[[str, bool], None] | None = None
        # The instance ids of this server's other workers whose requests reach
        # us live (sibling_flight): their published counts are not added again.
        self.linked_siblings: Callable[[], set[str]] = set

    # --- reading the view ---

    def states(self) -> list[NodeState]:
        """Every known node; starts the refresher on first use."""
        self.start()
        return list(self._states.values())

    def routable(self, now: float | None = None) -> list[NodeState]:
        """Nodes that may take a new request now: alive, online, not ejected.
        While Redis is unreachable, liveness is judged as of the last good
        refresh, so the proxy keeps routing on the last known fleet."""
        now = self._clock() if now is None else now
        as_of = now if self._storage_ok else self._refreshed_at
        return [
            s
            for s in self.states()
            if s.node.routable(as_of) and s.address_ok and s.breaker.allows(now)
        ]

    def why_not_routable(self, now: float | None = None) -> dict[str, str]:
        """Why each known node is left out of routable() now (empty for a
        routable one): what an operator needs beside a 503."""
        now = self._clock() if now is None else now
        as_of = now if self._storage_ok else self._refreshed_at
        reasons: dict[str, str] = {}
        for s in self.known():
            node = s.node
            if not node.alive(as_of):
                why = f"no heartbeat for {as_of - node.update_time:.0f}s (timeout {node.timeout}s)"
            elif node.node_status is not NodeStatus.ONLINE:
                why = f"status {node.node_status.value}"
            elif node.probe_failing:
                why = "its /metrics poll fails"
            elif not s.address_ok:
                why = "address not allowed by the network policy"
            elif not s.breaker.allows(now):
                why = (f"ejected for {max(0.0, s.breaker.open_until - now):.1f}s more" if now < s.breaker.open_until
                       else "ejected, a trial request running")
            else:
                why = ""
            reasons[s.node_id] = why
        return reasons

    def known(self) -> list[NodeState]:
        """Every node in the view, without starting the refresher."""
        return list(self._states.values())

    def get(self, node_id: str) -> NodeState | None:
        return self._states.get(node_id)

    def is_failing(self, node_id: str) -> bool:
        state = self._states.get(node_id)
        return bool(state and state.breaker.ejected)

    def inflight_totals(self) -> dict[str, int]:
        """Cluster-wide in-flight counts as this instance sees them."""
        return {s.node_id: s.inflight for s in self._states.values() if s.inflight}

    @property
    def storage_ok(self) -> bool:
        return self._storage_ok

    # --- updates from forwarding ---

    def acquire(self, state: NodeState) -> None:
        with self._lock:
            state.local_inflight += 1
            if state.breaker.ejected:
                state.breaker.trial_running = True

    def release(self, state: NodeState) -> None:
        with self._lock:
            state.local_inflight = max(0, state.local_inflight - 1)
            # A trial that ended with neither verdict (429, client gone) must
            # not keep the node out for good: the next one may start.
            state.breaker.trial_running = False

    def sibling_flight(self, node_id: str, delta: int) -> None:
        """Another worker of this server sent a request to the node (+1) or
        ended one (-1)."""
        with self._lock:
            state = self._states.get(node_id)
            if state is not None:
                state.sibling_inflight = max(0, state.sibling_inflight + delta)

    def record_success(self, state: NodeState) -> None:
        if state.breaker.success():
            log.info("node %s recovered: back in rotation", state.node_id)
            if self.on_breaker:
                self.on_breaker(state.node_id, False)

    def record_failure(self, state: NodeState, reason: str) -> None:
        if state.breaker.failure(self._clock()):
            log.warning(
                "node %s ejected for %.0fs after %d failures (last: %s)",
                state.node_id,
                state.breaker.cooldown,
                state.breaker.failures,
                reason,
            )
            if self.on_breaker:
                self.on_breaker(state.node_id, True)

    def record_inband_load(self, state: NodeState, waiting: int | None, running: int | None,
                           kv_usage: float | None) -> None:
        """vLLM's endpoint-load-metrics header: fresher than any heartbeat.
        vLLM's carries waiting and KV usage but not running, and a queue length
        alone cannot tell our requests from others', so it updates the counts
        only when running comes with it."""
        if waiting is not None and running is not None:
            state.take_counts(running, waiting)
        elif waiting is not None:
            state.reported_waiting = waiting
        if kv_usage is not None:
            state.kv_usage = kv_usage
        if waiting is not None and running is not None:
            self._tell(state)

    def _tell(self, state: NodeState) -> None:
        if self.listener is not None:
            self.listener.report(state.node_id, state.reported_running, state.reported_waiting, state.kv_usage,
                                 time.monotonic())

    # --- refreshing from Redis ---

    def refresh_now(self, spacing: float) -> bool:
        """Make sure the view was read after this call began, so that a node
        registered before it is seen: waits for a refresh started since (the
        background one, or another caller's: concurrent callers share one),
        and refreshes no sooner than `spacing` after the last attempt, so a
        flood of requests for a model no node serves costs Redis at most one
        read per `spacing`. True when the view is that fresh."""
        since = self._clock()
        # With the store unreachable (or hung) a request must not wait on it;
        # the background refresher finds out when it is back.
        if not self._storage_ok:
            return False
        with self._on_demand:
            # _refreshed_at is when the last good read began.
            if self._refreshed_at < since:
                pause = self._attempted_at + spacing - self._clock()
                if pause > 0:
                    self._sleep(min(pause, spacing))
                if self._refreshed_at < since:
                    self.refresh()
            return self._storage_ok and self._refreshed_at >= since

    def refresh(self) -> None:
        """Reload nodes and other instances' counts; publish ours. On a Redis
        failure keep the last view and say so once."""
        now = self._clock()
        self._attempted_at = now
        try:
            ids, changed = self._nodes.load_changed(self._revs)
            local = {s.node_id: s.local_inflight for s in self._states.values()}
            self._inflight.publish(self.instance_id, local, now=now, lease=LEASE_SECONDS)
            others = self._inflight.by_instance(now=now)
        except StorageUnavailable:
            if self._storage_ok:
                log.warning("storage lost: routing on the last known fleet")
            self._storage_ok = False
            return
        if not self._storage_ok:
            log.info("storage recovered")
        self._storage_ok = True
        nodes = []
        for node_id in ids:
            if node_id in changed:
                nodes.append(changed[node_id][1])
            elif node_id in self._states:
                nodes.append(self._states[node_id].node)
        self._apply(nodes, others, now)
        revs = {node_id: changed[node_id][0] for node_id in changed}
        self._revs = {i: revs.get(i, self._revs.get(i, "")) for i in ids if i in self._states}

    def _apply(self, nodes: list[Node], others: dict[str, dict[str, int]], now: float) -> None:
        remote: dict[str, int] = {}
        live = self.linked_siblings()
        for instance_id, counts in others.items():
            if instance_id == self.instance_id or instance_id in live:
                continue
            for node_id, n in counts.items():
                remote[node_id] = remote.get(node_id, 0) + n
        reported: list[NodeState] = []
        with self._lock:
            fresh: dict[str, NodeState] = {}
            for node in nodes:
                state = self._states.get(node.node_id)
                # Judged once per address, not per refresh: a refresh walks every node.
                if state is None or state.node.node_address != node.node_address:
                    address_ok = self.netpolicy.allows_literal(node)
                else:
                    address_ok = state.address_ok
                if state is None or node.update_time != state.node.update_time:
                    if state is None:
                        state = NodeState(node, breaker=Breaker(eject_after=self._eject_after))
                    state.take_report(node)
                    reported.append(state)
                else:
                    state.node = node
                state.remote_inflight = remote.get(node.node_id, 0)
                state.address_ok = address_ok
                fresh[node.node_id] = state
            # A node deleted while requests are in flight stays until they end,
            # so their release is not lost.
            for node_id, state in self._states.items():
                if node_id not in fresh and state.local_inflight:
                    fresh[node_id] = state
            gone = [node_id for node_id in self._states if node_id not in fresh]
            self._states = fresh
            self._refreshed_at = now
        for state in reported:
            self._tell(state)
        if self.listener is not None:
            for node_id in gone:
                self.listener.forget(node_id)

    def probe_ejected(self) -> None:
        """Ask each ejected node's /health; a good answer allows a trial request
        at once instead of after the cooldown."""
        if self._health_check is None:
            return
        now = self._clock()
        for state in list(self._states.values()):
            breaker = state.breaker
            if breaker.ejected and now < breaker.open_until and self._health_check(state.node):
                breaker.open_until = now

    # --- the background refresher ---

    def start(self) -> None:
        """Start the background refresher (idempotent)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=_refresh_loop,
                args=(weakref.ref(self), self._stop, self._interval),
                name="nvllm-fleet",
                daemon=True,
            )
        self.refresh()  # the first request must not see an empty fleet
        self._thread.start()

    def tick(self) -> float:
        """One refresh and probe round; returns the seconds until the next."""
        try:
            self.refresh()
            self.probe_ejected()
        except Exception:  # the refresher must outlive any one bad tick
            log.exception("fleet refresh failed")
        if self._storage_ok:
            self._backoff = self._interval
        else:
            self._backoff = min(5.0, self._backoff * 2)
        return self._backoff

    def close(self) -> None:
        """Stop the refresher and withdraw our counts (clean shutdown)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2)
            try:
                self._inflight.withdraw(self.instance_id)
            except StorageUnavailable:
                pass


def _refresh_loop(ref: weakref.ReferenceType[Fleet], stop: threading.Event, delay: float) -> None:
    """Runs until stopped or until the fleet is gone; holds it only weakly
    between ticks, so an app that is dropped (as in tests) takes its refresher
    with it."""
    while not stop.wait(delay):
        fleet = ref()
        if fleet is None:
            return
        delay = fleet.tick()
        del fleet

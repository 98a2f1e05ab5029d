"""The in-process view of the fleet that routing reads: nodes, load, health.

Routing never waits on Redis. A background thread refreshes the view from Redis
every `refresh_interval` seconds, and publishes this instance's in-flight
counts so the other instances see them. Between refreshes the view is updated
in place: requests sent and finished here, load reported in-band by vLLM, and
failures seen while forwarding.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from dao.inflight import InflightStore
from dao.node import NodeStore
from model.errors import StorageUnavailable
from model.node import Node
from service.netpolicy import NetworkPolicy

log = logging.getLogger("nvllm.fleet")

DEFAULT_SLOTS = 8  # assumed batch size of a node never seen saturated
EWMA_WEIGHT = 0.2  # weight of a new per-token time sample
TTFT_ERROR_HALF_LIFE = 3.0  # seconds: an old surprise fades, so a node it penalized gets traffic again
LEASE_SECONDS = 10.0  # how long another instance trusts our published counts


@dataclass
class Breaker:
    """Takes a failing node out of rotation and lets it back in by trial.

    closed -> (eject_after consecutive failures) -> open for `cooldown`
    -> half-open: one trial request, or a good /health probe
    -> closed on success, open again with a doubled cooldown on failure.
    """

    eject_after: int = 3
    base_cooldown: float = 1.0
    max_cooldown: float = 8.0
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0
    trial_running: bool = False

    @property
    def ejected(self) -> bool:
        return self.failures >= self.eject_after

    def allows(self, now: float) -> bool:
        if not self.ejected:
            return True
        return now >= self.open_until and not self.trial_running

    def success(self) -> bool:
        """Record a success; True when it brought an ejected node back."""
        recovered = self.ejected
        self.failures = 0
        self.cooldown = 0.0
        self.trial_running = False
        return recovered

    def failure(self, now: float) -> bool:
        """Record a failure; True when it ejected the node (again)."""
        self.failures += 1
        self.trial_running = False
        if self.failures < self.eject_after:
            return False
        self.cooldown = min(self.max_cooldown, self.cooldown * 2 or self.base_cooldown)
        self.open_until = now + self.cooldown
        return True


@dataclass
class Sent:
    """One of this instance's requests in flight to a node."""

    sent_at: float
    out_tokens: int  # max_tokens: it holds its batch slot at most this long
    first_at: float | None = None  # when its first token came (a whole answer: when sent)
    tokens: int = 0  # stream events relayed so far, about one per token
    expected_ttft: float | None = None  # what the load policy expected when it chose the node

    def tokens_left(self, now: float, token_time: float) -> float:
        if self.tokens:
            done = float(self.tokens)
        elif self.first_at is not None:  # a whole answer: assumed generating since sent
            done = (now - self.first_at) / token_time
        else:
            done = 0.0
        return max(0.0, self.out_tokens - done)


MAX_QUEUE_STEPS = 64  # slot releases simulated at most, per estimate


@dataclass
class NodeState:
    """What this instance knows of one node, beyond its Redis record."""

    node: Node
    local_inflight: int = 0
    remote_inflight: int = 0
    reported_running: int = 0
    reported_waiting: int = 0
    # What the node's last report counted beyond the requests the balancers
    # had in flight to it then: traffic that bypassed nvllm.
    external: int = 0
    saturated_at: int = 0
    prefill_debt: float = 0.0
    prefill_debt_at: float = 0.0
    # Send times of this instance's streams to the node still waiting for their
    # first token: how long they have waited is a floor for the next one's wait.
    starting: dict[int, float] = field(default_factory=dict)
    # This instance's requests in flight to the node, by ticket.
    sent: dict[int, Sent] = field(default_factory=dict)
    most_running: int = 0
    kv_usage: float | None = None
    token_time: float | None = None  # EWMA seconds per streamed token
    # How much later than expected first tokens came lately (EWMA, seconds;
    # negative: sooner), and when last measured.
    ttft_error: float = 0.0
    ttft_error_at: float = 0.0
    breaker: Breaker = field(default_factory=Breaker)
    # False when the node's address is an IP (or name) nvllm may never
    # connect to: such a node is not routable. Names are checked again, with
    # DNS, at every connection.
    address_ok: bool = True

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def inflight(self) -> int:
        return self.local_inflight + self.remote_inflight

    @property
    def load(self) -> int:
        """Requests the node holds or will hold: its last report plus the
        requests sent to it since, i.e. the balancers' current in-flight count
        plus what the report showed beyond the in-flight count of its time.
        A stale report therefore neither hides new requests (no herd on a node
        that looked idle) nor keeps counting requests that have finished."""
        return self.inflight + self.external

    def take_report(self, node: Node) -> None:
        """A new heartbeat: its load replaces whatever we knew."""
        self.node = node
        self._take_counts(node.node_info.running, node.node_info.waiting)
        if node.node_info.kv_cache_usage is not None:
            self.kv_usage = node.node_info.kv_cache_usage

    def _take_counts(self, running: int, waiting: int) -> None:
        self.reported_running = running
        self.reported_waiting = waiting
        self.external = max(0, running + waiting - self.inflight)
        if waiting > 0 and running > 0:
            self.saturated_at = running  # a queue formed: this is its capacity now
        self.most_running = max(self.most_running, running)

    @property
    def slots(self) -> int:
        """How many requests the node runs at once before queueing: what it ran
        when a queue last formed; else at least DEFAULT_SLOTS, or the most it
        was ever seen running."""
        if self.saturated_at:
            return self.saturated_at
        return max(DEFAULT_SLOTS, self.most_running)

    def begin(self, ticket: int, sent: Sent, stream: bool) -> None:
        """One of our requests is on its way to the node."""
        self.sent[ticket] = sent
        if stream:
            self.starting[ticket] = sent.sent_at

    def first_token(self, ticket: int, now: float) -> Sent | None:
        """A stream's first token came: it holds a batch slot now, and its wait
        tells how far off the estimate was."""
        self.starting.pop(ticket, None)
        sent = self.sent.get(ticket)
        if sent is not None:
            sent.first_at = now
            if sent.expected_ttft is not None:
                self.add_first_token(sent.expected_ttft, now - sent.sent_at, now)
        return sent

    def end(self, ticket: int) -> None:
        """The request is over, however it ended."""
        self.starting.pop(ticket, None)
        self.sent.pop(ticket, None)

    def longest_start_wait(self, now: float) -> float:
        """Seconds the oldest stream still waiting for its first token has waited."""
        # Sent in order of time, so the first is the oldest.
        return now - next(iter(self.starting.values())) if self.starting else 0.0

    def slot_wait(self, now: float, token_time: float, mean_out: float, load: int | None = None) -> float:
        """Seconds until a batch slot frees for one more request; 0 while one
        is free. A request holds its slot until its last token: ours for their
        max_tokens less what was streamed (an upper bound: an answer may stop
        early); the others (other instances', other clients') are somewhere in
        an average answer, spread evenly. Requests queued ahead take the
        first slots to free, then hold them for an average answer each (the
        slot releases simulated when at most MAX_QUEUE_STEPS are queued, the
        average rate beyond). `load` replaces the node's load (to count
        requests that are not in flight yet)."""
        load = self.load if load is None else load
        if load < self.slots:
            return 0.0
        # More of ours running than the slot count allows: it is stale, and
        # nothing says the node is full, so one more fits too.
        running = len(self.sent) - len(self.starting)
        slots = running + 1 if running > self.slots else self.slots
        ahead = load + 1 - slots
        if ahead <= 0:
            return 0.0
        if ahead > MAX_QUEUE_STEPS:  # a long queue: which slot frees first hardly matters
            return ahead * mean_out * token_time / slots
        started = [r.tokens_left(now, token_time) * token_time for r in self.sent.values() if r.first_at is not None]
        unknown = slots - len(started)  # spread evenly over an average answer
        releases = started + [mean_out * token_time * (i + 1) / (unknown + 1) for i in range(unknown)]
        heapq.heapify(releases)
        for _ in range(ahead - 1):
            heapq.heapreplace(releases, releases[0] + mean_out * token_time)
        return releases[0]

    def prefill_backlog(self, now: float) -> float:
        """Seconds of prompt processing this instance has sent the node that it
        has not worked through yet, assuming it works through one second per
        second."""
        return max(0.0, self.prefill_debt - (now - self.prefill_debt_at))

    def add_prefill(self, seconds: float, now: float) -> None:
        self.prefill_debt = self.prefill_backlog(now) + seconds
        self.prefill_debt_at = now

    def first_token_late(self, now: float) -> float:
        """The recent error of the first-token estimate, fading with its age."""
        if not self.ttft_error:
            return 0.0
        return self.ttft_error * 0.5 ** ((now - self.ttft_error_at) / TTFT_ERROR_HALF_LIFE)

    def add_first_token(self, expected: float, seen: float, now: float) -> None:
        self.ttft_error = self.first_token_late(now) + EWMA_WEIGHT * (seen - expected - self.first_token_late(now))
        self.ttft_error_at = now

    def add_token_time(self, seconds: float) -> None:
        if self.token_time is None:
            self.token_time = seconds
        else:
            self.token_time += EWMA_WEIGHT * (seconds - self.token_time)


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
    ) -> None:
        self.instance_id = uuid.uuid4().hex[:12]
        self._nodes = nodes
        self._inflight = inflight
        self._interval = refresh_interval
        self._eject_after = eject_after
        self._clock = clock
        self._health_check = health_check
        # Default: what nvllm allows when it listens on loopback.
        self.netpolicy = netpolicy or NetworkPolicy.from_settings(None, None, "127.0.0.1")
        self._states: dict[str, NodeState] = {}
        self._revs: dict[str, str] = {}  # node_id -> the rev its state was read at
        self._lock = threading.Lock()
        self._refreshed_at = 0.0
        self._attempted_at = 0.0
        self._storage_ok = True
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._backoff = refresh_interval
        # Told (node_id, ejected) when a node is ejected or recovers: metrics count ejections.
        self.on_breaker: Callable[[str, bool], None] | None = None

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
            state._take_counts(running, waiting)
        elif waiting is not None:
            state.reported_waiting = waiting
        if kv_usage is not None:
            state.kv_usage = kv_usage

    # --- refreshing from Redis ---

    def refresh_if_older(self, seconds: float) -> bool:
        """Refresh now unless the view (or the last attempt) is younger than
        `seconds`; True when it refreshed."""
        now = self._clock()
        if now - max(self._refreshed_at, self._attempted_at) < seconds:
            return False
        self.refresh()
        return True

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
        for instance_id, counts in others.items():
            if instance_id == self.instance_id:
                continue
            for node_id, n in counts.items():
                remote[node_id] = remote.get(node_id, 0) + n
        with self._lock:
            fresh: dict[str, NodeState] = {}
            for node in nodes:
                state = self._states.get(node.node_id)
                # Judged once per address, not per refresh: a refresh walks every node.
                if state is None or state.node.node_address != node.node_address:
                    address_ok = self.netpolicy.allows_literal(node)
                else:
                    address_ok = state.address_ok
                if state is None:
                    state = NodeState(node, breaker=Breaker(eject_after=self._eject_after))
                    state.take_report(node)
                elif node.update_time != state.node.update_time:
                    state.take_report(node)
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
            self._states = fresh
            self._refreshed_at = now

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

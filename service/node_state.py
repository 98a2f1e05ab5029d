"""What this instance knows of one node beyond its Redis record: the facts
routing reads (in-flight counts, the last reported load, health). What routing
learns about a node (its speed, its batch size) is routing's own, in
service/routing/."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.node import Node
from service.breaker import Breaker


@dataclass
class NodeState:
    node: Node
    local_inflight: int = 0  # this instance's requests in flight to the node
    remote_inflight: int = 0  # the other instances', as they last published them
    sibling_inflight: int = 0  # this server's other workers', as they tell us (service/siblings.py)
    reported_running: int = 0
    reported_waiting: int = 0
    # What the node's last report counted beyond the requests the balancers
    # had in flight to it then: traffic that bypassed nvllm.
    external: int = 0
    kv_usage: float | None = None
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
        return self.local_inflight + self.sibling_inflight + self.remote_inflight

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
        self.take_counts(node.node_info.running, node.node_info.waiting)
        if node.node_info.kv_cache_usage is not None:
            self.kv_usage = node.node_info.kv_cache_usage

    def take_counts(self, running: int, waiting: int) -> None:
        self.reported_running = running
        self.reported_waiting = waiting
        self.external = max(0, running + waiting - self.inflight)

"""Node registry: register, heartbeat, read, list and delete vLLM nodes."""

from __future__ import annotations

from typing import Any

from dao.inflight import InflightStore
from dao.node import UNLIMITED, NodeStore
from model.errors import AddressNotAllowed, NodeNotFound, ValidationError
from model.node import NODE_STATUS, Actor, Node, NodeLimits, NodeStatus, validate_changes, validate_node_id
from service.netpolicy import AddressRefused, AddressUnresolved, NetworkPolicy


def register(
    store: NodeStore,
    payload: Any,
    *,
    now: float,
    actor: Actor,
    netpolicy: NetworkPolicy,
    limits: NodeLimits = UNLIMITED,
    retention: float | None = None,
) -> Node:
    """Upsert: a node registering again under its id keeps its create_time and
    owner, unless its retention ran out (then it starts afresh). Only its owner
    or an admin may register an existing node again. Raises ValidationError,
    AddressNotAllowed, NodeForbidden, NodeLimitReached."""
    node = Node.from_payload(payload, now=now)
    # The seed's default address (0.0.0.0, sent by nobody) means "none yet":
    # stored, never connected to.
    if "node_address" in payload:
        check_address(netpolicy, node.node_address)
    if retention is not None:
        store.purge(node.node_id, now - retention)
    return store.save(node, actor=actor, limits=limits)


def update(
    store: NodeStore,
    node_id: str,
    payload: Any,
    *,
    now: float,
    actor: Actor,
    netpolicy: NetworkPolicy,
    retention: float | None = None,
) -> Node:
    """Change only the fields sent, merge node_info field by field, and count as a
    heartbeat. Raises NodeNotFound, and never recreates a deleted node, nor one
    whose retention ran out (reads already answer 404 for it); NodeForbidden
    for another account's node (checked in the same atomic write)."""
    validate_node_id(node_id)
    changes = validate_changes(payload, allow_id=False)
    if "node_address" in changes:
        check_address(netpolicy, changes["node_address"])
    if retention is not None:
        store.purge(node_id, now - retention)
    node = store.update(node_id, changes, now, actor=actor)
    if node is None:
        raise NodeNotFound(node_id)
    return node


def delete(store: NodeStore, node_id: str, *, actor: Actor) -> None:
    """Raises NodeNotFound when there is nothing to delete, NodeForbidden for
    another account's node."""
    validate_node_id(node_id)
    if not store.delete(node_id, actor=actor):
        raise NodeNotFound(node_id)


def check_address(netpolicy: NetworkPolicy, address: str) -> None:
    """Raises ValidationError for a name that does not resolve, AddressNotAllowed
    for an address (or a name resolving to one) outside the allowed networks."""
    try:
        netpolicy.check(address)
    except AddressUnresolved as exc:
        raise ValidationError("node_address", exc.reason) from None
    except AddressRefused as exc:
        raise AddressNotAllowed(exc.reason) from None


def get(store: NodeStore, node_id: str, *, now: float, retention: float) -> Node:
    """A node, expired or not, until its retention runs out. Raises NodeNotFound."""
    validate_node_id(node_id)
    node = store.load(node_id)
    if node is None or _retention_over(node, now, retention):
        raise NodeNotFound(node_id)
    return node


def status(
    store: NodeStore,
    inflight: InflightStore,
    node_id: str,
    *,
    now: float,
    retention: float,
    failing: bool = False,
    include_address: bool = True,
    include_owner: bool = False,
) -> dict[str, Any]:
    """The node plus live fields: alive, seconds_since_update, routable (alive,
    online and not `failing`), and requests in flight to it from every instance;
    `owner` with `include_owner`, the address only with `include_address`."""
    node = get(store, node_id, now=now, retention=retention)
    data = node.to_dict(now, include_address=include_address)
    data["alive"] = node.alive(now)
    data["seconds_since_update"] = round(max(0.0, now - node.update_time), 3)
    data["routable"] = node.routable(now) and not failing
    data["probe_failing"] = node.probe_failing
    data["inflight"] = inflight.totals(now=now).get(node_id, 0)
    if include_owner:
        data["owner"] = node.owner or None
    return data


def list_nodes(
    store: NodeStore,
    *,
    now: float,
    retention: float,
    status: str | None = None,
    model: str | None = None,
    node_type: str | None = None,
) -> list[Node]:
    """Every node sorted by node_id, after forgetting those past retention.
    `status` filters on the status as shown (an expired node is offline)."""
    wanted = _status_filter(status)
    store.purge_expired(now - retention)
    nodes = [n for n in store.load_all() if not _retention_over(n, now, retention)]
    nodes = [
        n
        for n in nodes
        if (wanted is None or n.effective_status(now) is wanted)
        and n.serves(model)
        and (node_type is None or n.node_type == node_type)
    ]
    return sorted(nodes, key=lambda n: n.node_id)


def _status_filter(status: str | None) -> NodeStatus | None:
    if status is None:
        return None
    return NodeStatus(NODE_STATUS.check("status", status))


def _retention_over(node: Node, now: float, retention: float) -> bool:
    return now > node.expires_at + retention

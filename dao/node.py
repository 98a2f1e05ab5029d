"""NodeStore: node hashes plus a sorted set indexing them by expiry."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from dao.lua import pairs_to_dict, register
from model.errors import NodeForbidden, NodeLimitReached
from model.node import Actor, Node, NodeLimits, changes_to_redis

# nvllm's own writes (the poller, tests, tools): no owner check.
SYSTEM = Actor("", admin=True)
UNLIMITED = NodeLimits(2**53, 2**53)


class NodeStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._register = register(client, "register_node")
        self._update = register(client, "update_node")
        self._delete = register(client, "delete_node")
        self._purge = register(client, "purge_node")
        self._flag = register(client, "flag_node")

    @storage_errors
    def save(self, node: Node, *, actor: Actor = SYSTEM, limits: NodeLimits = UNLIMITED) -> Node:
        """Upsert atomically; an existing node keeps its create_time, owner and
        probe_failing. A new node is owned by `actor`. Raises NodeForbidden
        for another account's node, NodeLimitReached past a cap."""
        args: list[str | float | int] = [
            node.node_id, node.expires_at, actor.name, _redis_bool(actor.admin), limits.total, limits.per_account,
        ]
        for item in node.to_redis().items():
            args.extend(item)
        keys = [self.keys.node(node.node_id), self.keys.nodes_by_expiry(), self.keys.node_owners()]
        reply = self._register(keys=keys, args=args)
        if reply[0] == "forbidden":
            raise NodeForbidden(node.node_id)
        if reply[0] == "full":
            raise NodeLimitReached(f"node limit reached: {limits.total} nodes are registered (NVLLM_MAX_NODES)")
        if reply[0] == "account_full":
            raise NodeLimitReached(
                f"node limit reached: account {actor.name!r} has {limits.per_account} nodes "
                "(NVLLM_MAX_NODES_PER_ACCOUNT)"
            )
        return Node.from_redis(pairs_to_dict(reply[1:]) or {})

    @storage_errors
    def update(
        self,
        node_id: str,
        changes: dict,
        now: float,
        *,
        fields: dict[str, str] | None = None,
        actor: Actor = SYSTEM,
    ) -> Node | None:
        """Apply validated changes (plus raw hash `fields` nvllm sets itself) and
        refresh update_time, only if the node exists and `actor` may change it
        (both checked inside Redis). None when it does not exist; raises
        NodeForbidden for another account's node."""
        args: list[str | float] = [node_id, repr(now), actor.name, _redis_bool(actor.admin)]
        for item in {**changes_to_redis(changes), **(fields or {})}.items():
            args.extend(item)
        flat = self._update(keys=[self.keys.node(node_id), self.keys.nodes_by_expiry()], args=args)
        if flat == -1:
            raise NodeForbidden(node_id)
        mapping = pairs_to_dict(flat)
        return Node.from_redis(mapping) if mapping else None

    @storage_errors
    def purge(self, node_id: str, cutoff: float) -> None:
        """Forget this node if its expiry is before `cutoff` (atomic)."""
        self._purge(keys=self._node_keys(node_id), args=[node_id, cutoff])

    @storage_errors
    def flag(self, node_id: str, fields: dict[str, str]) -> bool:
        """Set raw hash fields of an existing node without a heartbeat."""
        args: list[str] = []
        for item in fields.items():
            args.extend(item)
        return bool(self._flag(keys=[self.keys.node(node_id)], args=args))

    @storage_errors
    def claim_probe(self, node_id: str, owner: str, seconds: float) -> bool:
        """True for the one instance that polls this node in this interval."""
        ms = max(1, int(seconds * 1000))
        return bool(self.client.set(self.keys.probe_lock(node_id), owner, nx=True, px=ms))

    @storage_errors
    def load(self, node_id: str) -> Node | None:
        mapping = self.client.hgetall(self.keys.node(node_id))
        return Node.from_redis(mapping) if mapping else None

    @storage_errors
    def load_all(self) -> list[Node]:
        """Every indexed node: one ZRANGE and one pipelined HGETALL per node."""
        ids = self.client.zrange(self.keys.nodes_by_expiry(), 0, -1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for node_id in ids:
            pipe.hgetall(self.keys.node(node_id))
        return [Node.from_redis(m) for m in pipe.execute() if m]

    @storage_errors
    def load_changed(self, known: dict[str, str]) -> tuple[list[str], dict[str, tuple[str, Node]]]:
        """Every indexed node id, and (rev, node) for those whose `rev` is not
        the one in `known` (id -> rev): one small HGET per node, and HGETALL
        only for what changed, so an idle fleet costs little to refresh. A node
        without `rev` (written by an older nvllm) is read every time."""
        ids = self.client.zrange(self.keys.nodes_by_expiry(), 0, -1)
        if not ids:
            return [], {}
        pipe = self.client.pipeline(transaction=False)
        for node_id in ids:
            pipe.hget(self.keys.node(node_id), "rev")
        stale = [(i, rev) for i, rev in zip(ids, pipe.execute(), strict=True) if rev is None or known.get(i) != rev]
        if not stale:
            return ids, {}
        pipe = self.client.pipeline(transaction=False)
        for node_id, _ in stale:
            pipe.hgetall(self.keys.node(node_id))
        # A write between the two reads leaves the older rev beside newer
        # fields: the next refresh reads the node again, never the reverse.
        return ids, {
            node_id: (rev or "", Node.from_redis(m))
            for (node_id, rev), m in zip(stale, pipe.execute(), strict=True) if m
        }

    @storage_errors
    def delete(self, node_id: str, *, actor: Actor = SYSTEM) -> bool:
        """Remove the node and its index entries atomically, if `actor` may.
        False when there was none; raises NodeForbidden for another account's."""
        deleted = self._delete(keys=self._node_keys(node_id), args=[node_id, actor.name, _redis_bool(actor.admin)])
        if deleted == -1:
            raise NodeForbidden(node_id)
        return bool(deleted)

    @storage_errors
    def purge_expired(self, cutoff: float) -> list[str]:
        """Forget nodes whose expiry is before `cutoff`; return their ids.
        Strictly before, as service/node.py hides them: a node is never listed
        gone while it can still be read."""
        index = self.keys.nodes_by_expiry()
        purged = []
        for node_id in self.client.zrangebyscore(index, "-inf", f"({cutoff!r}"):
            if self._purge(keys=self._node_keys(node_id), args=[node_id, cutoff]):
                purged.append(node_id)
        return purged

    def _node_keys(self, node_id: str) -> list[str]:
        return [self.keys.node(node_id), self.keys.nodes_by_expiry(), self.keys.node_owners()]


def _redis_bool(value: bool) -> str:
    return "1" if value else "0"

"""NodeStore: node hashes plus a sorted set indexing them by expiry."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from dao.lua import pairs_to_dict, register
from model.node import Node, changes_to_redis


class NodeStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._register = register(client, "register_node")
        self._update = register(client, "update_node")
        self._purge = register(client, "purge_node")
        self._flag = register(client, "flag_node")

    @storage_errors
    def save(self, node: Node) -> Node:
        """Upsert atomically; an existing node keeps its create_time."""
        args: list[str | float] = [node.node_id, node.expires_at]
        for item in node.to_redis().items():
            args.extend(item)
        flat = self._register(keys=[self.keys.node(node.node_id), self.keys.nodes_by_expiry()], args=args)
        return Node.from_redis(pairs_to_dict(flat) or {})

    @storage_errors
    def update(
        self, node_id: str, changes: dict, now: float, *, fields: dict[str, str] | None = None
    ) -> Node | None:
        """Apply validated changes (plus raw hash `fields` nvllm sets itself) and
        refresh update_time, only if the node exists (checked inside Redis).
        None when it does not."""
        args: list[str | float] = [node_id, repr(now)]
        for item in {**changes_to_redis(changes), **(fields or {})}.items():
            args.extend(item)
        flat = self._update(keys=[self.keys.node(node_id), self.keys.nodes_by_expiry()], args=args)
        mapping = pairs_to_dict(flat)
        return Node.from_redis(mapping) if mapping else None

    @storage_errors
    def purge(self, node_id: str, cutoff: float) -> None:
        """Forget this node if its expiry is before `cutoff` (atomic)."""
        keys = [self.keys.node(node_id), self.keys.nodes_by_expiry()]
        self._purge(keys=keys, args=[node_id, cutoff])

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
    def delete(self, node_id: str) -> bool:
        """Remove the node and its index entry in one MULTI."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.node(node_id))
        pipe.zrem(self.keys.nodes_by_expiry(), node_id)
        deleted, _ = pipe.execute()
        return bool(deleted)

    @storage_errors
    def purge_expired(self, cutoff: float) -> list[str]:
        """Forget nodes whose expiry is before `cutoff`; return their ids.
        Strictly before, as service/node.py hides them: a node is never listed
        gone while it can still be read."""
        index = self.keys.nodes_by_expiry()
        purged = []
        for node_id in self.client.zrangebyscore(index, "-inf", f"({cutoff!r}"):
            keys = [self.keys.node(node_id), index]
            if self._purge(keys=keys, args=[node_id, cutoff]):
                purged.append(node_id)
        return purged

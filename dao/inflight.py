"""In-flight requests per node, shared by every balancer instance.

Each instance publishes its own counts as absolute values in a hash that
expires with the instance's lease. Nothing is incremented remotely, so nothing
can leak: a crashed instance's share vanishes when its lease runs out.
"""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys


class InflightStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    @storage_errors
    def publish(self, instance_id: str, counts: dict[str, int], *, now: float, lease: float) -> None:
        """Replace this instance's counts and renew its lease, in one MULTI."""
        own = self.keys.inflight_lease(instance_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(own)
        live = {node_id: n for node_id, n in counts.items() if n > 0}
        if live:
            pipe.hset(own, mapping=live)
            pipe.expire(own, max(1, int(lease) + 1))
        pipe.zadd(self.keys.instances(), {instance_id: now + lease})
        pipe.zremrangebyscore(self.keys.instances(), "-inf", now)
        pipe.execute()

    @storage_errors
    def withdraw(self, instance_id: str) -> None:
        """Forget this instance at a clean shutdown."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.inflight_lease(instance_id))
        pipe.zrem(self.keys.instances(), instance_id)
        pipe.execute()

    @storage_errors
    def by_instance(self, *, now: float) -> dict[str, dict[str, int]]:
        """Counts of every instance whose lease has not run out."""
        instances = self.client.zrangebyscore(self.keys.instances(), now, "+inf")
        if not instances:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for instance_id in instances:
            pipe.hgetall(self.keys.inflight_lease(instance_id))
        return {
            instance_id: {node: int(n) for node, n in counts.items()}
            for instance_id, counts in zip(instances, pipe.execute(), strict=True)
        }

    def totals(self, *, now: float) -> dict[str, int]:
        """Requests in flight per node, summed over live instances."""
        total: dict[str, int] = {}
        for counts in self.by_instance(now=now).values():
            for node_id, n in counts.items():
                total[node_id] = total.get(node_id, 0) + n
        return total

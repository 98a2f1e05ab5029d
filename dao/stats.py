"""Request statistics shared by every worker and instance: per-node and
per-model counters in time buckets, and each instance's ejected nodes.

Counters are only ever incremented (HINCRBY), so writers never read what
others wrote: any number of processes add to the same bucket and a reader
sums. One flush is one MULTI, so a reader sees all of it or none. Every key
has a TTL: nothing outlives the window the dashboard reads.
"""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from model.stats import Counts

BUCKET_SECONDS = 2
# Buckets outlive the minute the dashboard reads, with room for clock skew
# between instances.
BUCKET_TTL = 90

# Scope of a counter: a node or a model.
NODE, MODEL = "n", "m"


def bucket_start(now: float) -> int:
    """The start (epoch seconds) of the bucket `now` falls in."""
    return int(now // BUCKET_SECONDS) * BUCKET_SECONDS


# {bucket start: {(scope, name): Counts}}
Buckets = dict[int, dict[tuple[str, str], Counts]]


class StatsStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    @storage_errors
    def add(self, buckets: Buckets) -> None:
        """Add these counts to the shared buckets, in one MULTI."""
        writes = {
            self.keys.stats_bucket(start): {
                f"{counter}:{scope}:{name}": n
                for (scope, name), counts in scoped.items()
                for counter, n in counts.fields().items()
            }
            for start, scoped in buckets.items()
        }
        writes = {key: fields for key, fields in writes.items() if fields}
        if not writes:
            return
        pipe = self.client.pipeline(transaction=True)
        for key, fields in writes.items():
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
            pipe.expire(key, BUCKET_TTL)
        pipe.execute()

    @storage_errors
    def read(self, first: int, last: int) -> Buckets:
        """The buckets starting from `first` to `last` (epoch seconds, both
        included), summed over every writer."""
        starts = list(range(bucket_start(first), bucket_start(last) + 1, BUCKET_SECONDS))
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(self.keys.stats_bucket(start))
        out: Buckets = {}
        for start, flat in zip(starts, pipe.execute(), strict=True):
            scoped: dict[tuple[str, str], Counts] = {}
            for field, value in flat.items():
                counter, _, rest = field.partition(":")
                scope, _, name = rest.partition(":")
                if scope not in (NODE, MODEL) or not name:
                    continue
                scoped.setdefault((scope, name), Counts()).add_field(counter, int(value))
            if scoped:
                out[start] = scoped
        return out

    @storage_errors
    def publish_ejected(self, instance_id: str, node_ids: list[str], *, lease: float) -> None:
        """Replace this instance's set of ejected nodes; it expires with the lease."""
        key = self.keys.ejected(instance_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if node_ids:
            pipe.sadd(key, *node_ids)
            pipe.expire(key, max(1, int(lease) + 1))
        pipe.execute()

    @storage_errors
    def ejected(self, *, now: float) -> dict[str, int]:
        """How many live instances have each node ejected."""
        instances = self.client.zrangebyscore(self.keys.instances(), now, "+inf")
        if not instances:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for instance_id in instances:
            pipe.smembers(self.keys.ejected(instance_id))
        counts: dict[str, int] = {}
        for members in pipe.execute():
            for node_id in members:
                counts[node_id] = counts.get(node_id, 0) + 1
        return counts

    @storage_errors
    def instances(self, *, now: float) -> int:
        """Balancer instances (worker processes) whose lease has not run out."""
        return int(self.client.zcount(self.keys.instances(), now, "+inf"))

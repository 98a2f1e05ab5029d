"""Shared request statistics: what several writers add, a reader sums; every
key expires; a flush is one transaction."""

from __future__ import annotations

from dao.inflight import InflightStore
from dao.stats import BUCKET_SECONDS, BUCKET_TTL, MODEL, NODE, StatsStore, bucket_start
from model.stats import Counts
from tests.helpers import START


def counts(requests: int, errors: int = 0, tokens: int = 0, ttft: float | None = None) -> Counts:
    c = Counts()
    for i in range(requests):
        c.observe(error=i < errors, tokens=tokens // requests if requests else 0, ttft=ttft)
    return c


def test_writers_add_to_the_same_buckets(redis, keys):
    worker_a, worker_b = StatsStore(redis, keys), StatsStore(redis, keys)
    t0 = bucket_start(START)
    worker_a.add({t0: {(NODE, "node-001"): counts(3, 1, 30, 0.1), (MODEL, "org/model:v1"): counts(3)}})
    worker_b.add({t0: {(NODE, "node-001"): counts(2, 0, 20, 0.4)},
                  t0 + BUCKET_SECONDS: {(NODE, "node-002"): counts(1)}})
    read = worker_a.read(t0, t0 + BUCKET_SECONDS)
    node = read[t0][(NODE, "node-001")]
    assert (node.requests, node.errors, node.tokens, sum(node.ttft)) == (5, 1, 50, 5)
    assert read[t0][(MODEL, "org/model:v1")].requests == 3  # a ':' in a model name is kept whole
    assert read[t0 + BUCKET_SECONDS][(NODE, "node-002")].requests == 1
    assert worker_a.read(t0 + 2 * BUCKET_SECONDS, t0 + 10 * BUCKET_SECONDS) == {}


def test_every_bucket_expires(redis, keys):
    store = StatsStore(redis, keys)
    t0 = bucket_start(START)
    store.add({t0: {(NODE, "node-001"): counts(1)}, t0 + BUCKET_SECONDS: {(NODE, "node-001"): counts(1)}})
    written = redis.keys(f"{keys.prefix}:stats:*")
    assert len(written) == 2
    assert all(0 < redis.ttl(key) <= BUCKET_TTL for key in written)


def test_a_flush_is_one_transaction(redis, keys, monkeypatch):
    """All of a flush's increments go in one MULTI/EXEC: a reader never sees half."""
    store = StatsStore(redis, keys)
    pipelines = []
    real = redis.pipeline

    def spy(transaction=True, **kwargs):
        pipelines.append(transaction)
        return real(transaction=transaction, **kwargs)

    monkeypatch.setattr(redis, "pipeline", spy)
    t0 = bucket_start(START)
    store.add({t0: {(NODE, f"node-{i}"): counts(2, 1, 8, 0.3) for i in range(5)}})
    assert pipelines == [True]
    store.add({})  # nothing to write: no round trip at all
    assert pipelines == [True]


def test_ejected_sets_count_only_live_instances(redis, keys):
    store, leases = StatsStore(redis, keys), InflightStore(redis, keys)
    leases.publish("a", {}, now=START, lease=10)
    leases.publish("b", {}, now=START, lease=10)
    store.publish_ejected("a", ["node-001", "node-002"], lease=5)
    store.publish_ejected("b", ["node-001"], lease=5)
    store.publish_ejected("gone", ["node-001"], lease=5)  # no live lease: not counted
    assert store.ejected(now=START) == {"node-001": 2, "node-002": 1}
    assert store.instances(now=START) == 2
    store.publish_ejected("a", [], lease=5)
    assert store.ejected(now=START) == {"node-001": 1}
    assert 0 < redis.ttl(keys.ejected("b")) <= 6

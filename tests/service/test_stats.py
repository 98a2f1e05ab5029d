"""The recorder counts without Redis and flushes in the background; two
recorders (two workers) on one Redis read back as one fleet; the snapshot
gives what the dashboard shows."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.stats import BUCKET_SECONDS, StatsStore, bucket_start
from model.node import Node, NodeInfo, NodeStatus
from service import stats as svc
from service.stats import MAX_MODELS, OTHER_MODELS, StatsRecorder, is_error, snapshot
from tests.conftest import FakeClock
from tests.helpers import START, wait_for


def report(node: str = "node-001", *, status: int = 200, outcome: str = "ok", model: str | None = "m",
           ttft: float | None = 0.1, tokens: int = 10) -> dict:
    return {"node": node, "status": status, "outcome": outcome, "seconds": 0.5, "model": model, "ttft": ttft,
            "output_tokens": tokens}


@pytest.fixture
def keys() -> Keys:
    return Keys("nvllm")


@pytest.fixture
def store(redis, keys) -> StatsStore:
    return StatsStore(redis, keys)


@pytest.fixture
def now() -> FakeClock:
    # The start of a bucket, so a test knows which bucket each report lands in.
    return FakeClock(bucket_start(START))


def node(node_id: str, clock: FakeClock, **fields) -> Node:
    fields.setdefault("node_status", NodeStatus.ONLINE)
    return Node(node_id, node_address="10.0.0.1", node_port=8000, create_time=clock(), update_time=clock(),
                **fields)


def test_what_counts_as_an_error():
    assert not is_error(report())
    assert not is_error(report(status=404))  # the client's mistake, answered by the node
    assert not is_error(report(outcome="client_gone"))
    assert is_error(report(status=500))
    assert is_error(report(status=0, outcome="failed:ConnectTimeoutError"))
    assert is_error(report(status=503, outcome="retried:503"))
    assert is_error(report(outcome="upstream_error:ProtocolError"))


def test_reports_wait_in_memory_until_a_flush(store, now, redis):
    recorder = StatsRecorder(store, clock=now, interval=3600)
    recorder.observe(report())
    assert redis.keys("nvllm:stats:*") == []  # nothing on the request path
    recorder.flush()
    read = store.read(now(), now())
    assert read[bucket_start(now())][("n", "node-001")].requests == 1
    recorder.close()


def test_the_background_flusher_writes_within_about_a_second(store, redis):
    recorder = StatsRecorder(store, interval=0.05)
    recorder.observe(report())  # starts the flusher
    wait_for(lambda: redis.keys("nvllm:stats:*"), 2, "the background flush")
    recorder.close()


def test_two_workers_read_as_one_fleet(server, keys, now):
    """Each worker has its own recorder and client; the snapshot of either is
    the sum of both."""
    workers = []
    for _ in range(2):
        client = fakeredis.FakeRedis(server=server, decode_responses=True)
        workers.append((StatsRecorder(StatsStore(client, keys), clock=now, interval=3600),
                        StatsStore(client, keys), InflightStore(client, keys)))
    for i in range(30):
        recorder = workers[i % 2][0]
        recorder.observe(report("node-001" if i % 3 else "node-002", tokens=5, ttft=0.15,
                                status=500 if i == 0 else 200))
    for recorder, _, _ in workers:
        recorder.flush()
    now.advance(BUCKET_SECONDS)  # the bucket is complete
    views = [snapshot([node("node-001", now), node("node-002", now)], s, i, now=now(), include_address=False)
             for _, s, i in workers]
    assert views[0] == views[1]
    totals = views[0]["totals"]["stats"]
    assert totals["requests_1m"] == 30 and totals["errors_1m"] == 1 and totals["output_tokens_1m"] == 150
    assert totals["requests_per_s"] == pytest.approx(30 / svc.RATE_SECONDS)
    by_node = {row["node_id"]: row["stats"]["requests_1m"] for row in views[0]["nodes"]}
    assert by_node == {"node-001": 20, "node-002": 10}
    assert "node_address" not in views[0]["nodes"][0]
    assert 0.1 < totals["ttft_p50"] <= 0.2


def test_redis_down_keeps_the_counts_for_the_next_flush(server, keys, now, caplog):
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    store = StatsStore(client, keys)
    recorder = StatsRecorder(store, clock=now, interval=3600)
    recorder.observe(report())
    server.connected = False
    recorder.flush()
    recorder.observe(report())
    recorder.flush()
    assert "storage unavailable" in caplog.text
    server.connected = True
    recorder.flush()
    assert store.read(now(), now())[bucket_start(now())][("n", "node-001")].requests == 2


def test_model_names_are_capped_per_bucket(store, now):
    """A node that lists no models takes any name a client sends; each process
    counts a bounded number of them."""
    recorder = StatsRecorder(store, clock=now, interval=3600)
    for i in range(MAX_MODELS + 10):
        recorder.observe(report(model=f"model-{i}"))
    recorder.observe(report(model="x" * 1000))
    recorder.flush()
    names = {name for scope, name in store.read(now(), now())[bucket_start(now())] if scope == "m"}
    assert len(names) == MAX_MODELS + 1 and OTHER_MODELS in names


def test_a_malformed_report_is_skipped_not_raised(store, now, caplog):
    recorder = StatsRecorder(store, clock=now, interval=3600)
    recorder.observe({"status": 200})
    recorder.observe(report(tokens="many"))
    recorder.flush()
    assert store.read(now(), now()) == {}
    assert "malformed" in caplog.text


def test_observe_is_safe_from_many_threads(store, now):
    recorder = StatsRecorder(store, clock=now, interval=3600)
    threads = [threading.Thread(target=lambda: [recorder.observe(report()) for _ in range(500)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.flush()
    assert store.read(now(), now())[bucket_start(now())][("n", "node-001")].requests == 4000


def test_snapshot_shows_live_state_models_and_only_complete_buckets(store, redis, keys, now):
    inflight = InflightStore(redis, keys)
    inflight.publish("instance-a", {"node-001": 3}, now=now(), lease=10)
    store.publish_ejected("instance-a", ["node-002"], lease=5)
    recorder = StatsRecorder(store, clock=now, interval=3600)
    recorder.observe(report("node-001", model="llama"))
    recorder.flush()
    nodes = [
        node("node-001", now, models=["llama"], node_info=NodeInfo(running=2, waiting=1, kv_cache=40)),
        node("node-002", now, models=[]),
        node("node-003", now, node_status=NodeStatus.DRAINING, models=["qwen"]),
    ]
    same_bucket = snapshot(nodes, store, inflight, now=now() + 1, include_address=True)
    assert same_bucket["totals"]["stats"]["requests_1m"] == 0  # the bucket is still filling
    view = snapshot(nodes, store, inflight, now=now() + BUCKET_SECONDS, include_address=True)
    rows = {row["node_id"]: row for row in view["nodes"]}
    assert rows["node-001"]["inflight"] == 3 and rows["node-001"]["routable"]
    assert rows["node-001"]["node_address"] == "10.0.0.1"
    assert rows["node-002"]["ejected_by"] == 1 and not rows["node-002"]["routable"]
    assert not rows["node-003"]["routable"]
    assert rows["node-001"]["stats"]["requests_1m"] == 1
    models = {m["model"]: m for m in view["models"]}
    # node-002 lists no models, so it serves each of them.
    assert models["llama"]["nodes"] == 2 and models["llama"]["routable"] == 1
    assert models["llama"]["stats"]["requests_1m"] == 1
    assert models["qwen"]["nodes"] == 2 and models["qwen"]["routable"] == 0
    totals = view["totals"]
    assert (totals["nodes"], totals["routable"], totals["draining"], totals["running"], totals["waiting"],
            totals["inflight"], totals["instances"]) == (3, 1, 1, 2, 1, 3, 1)
    assert len(view["series"]) == svc.MINUTE_SECONDS // BUCKET_SECONDS
    assert view["series"][-1]["requests"] == 1

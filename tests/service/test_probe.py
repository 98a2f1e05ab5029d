"""Balancer-side polling of nodes without an agent."""

from __future__ import annotations

import pytest

from dao.keys import Keys
from dao.node import NodeStore
from model.node import Node, NodeInfo, NodeStatus
from service.netpolicy import NetworkPolicy
from service.probe import Prober

pytestmark = pytest.mark.integration  # starts fake vLLM servers


@pytest.fixture
def fake():
    from fakevllm import FakeVLLM

    server = FakeVLLM(models=["fake-model"], step_time=0.0, prefill_time_per_token=0.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


def register(store: NodeStore, port: int, now: float, node_id: str = "n1") -> Node:
    node = Node(node_id, node_address="127.0.0.1", node_port=port, node_status=NodeStatus.ONLINE,
                node_info=NodeInfo(running=7), create_time=now, update_time=now)
    return store.save(node)


def test_good_poll_is_a_heartbeat_with_load(store, fake, clock):
    register(store, fake.port, clock())
    clock.advance(30)
    prober = Prober(store, interval=5, clock=clock)
    assert prober.tick() == 1
    node = store.load("n1")
    assert node.update_time == clock()
    assert node.node_info.running == 0  # the fake is idle; the stale 7 is replaced
    assert node.node_info.kv_cache_usage == 0.0
    assert node.routable(clock())


def test_failed_poll_makes_node_unroutable_until_a_good_one(store, fake, clock):
    register(store, fake.port, clock())
    prober = Prober(store, interval=5, clock=clock)
    fake.set_fault("unhealthy")
    prober.probe(store.load("n1"))
    node = store.load("n1")
    assert node.probe_failing and not node.routable(clock())
    assert node.update_time == clock()  # a failure is not a heartbeat
    fake.set_fault(None)
    prober.probe(store.load("n1"))
    assert store.load("n1").routable(clock())


def test_unreachable_node_is_flagged(store, clock):
    register(store, 1, clock())  # nothing listens on port 1
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    assert store.load("n1").probe_failing


def test_each_node_is_polled_once_per_interval_across_instances(store, fake, clock):
    register(store, fake.port, clock())
    first, second = Prober(store, interval=5, clock=clock), Prober(store, interval=5, clock=clock)
    assert first.tick() + second.tick() == 1


def test_poll_never_recreates_a_deleted_node(store, fake, clock):
    node = register(store, fake.port, clock())
    store.delete("n1")
    Prober(store, interval=5, clock=clock).probe(node)
    assert store.load("n1") is None


def test_registering_again_keeps_the_failing_flag_until_a_poll_succeeds(store, fake, clock):
    register(store, 1, clock())
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    register(store, 1, clock())  # a target failing /health, registered again
    assert store.load("n1").probe_failing
    register(store, fake.port, clock())
    assert store.load("n1").probe_failing
    Prober(store, interval=5, clock=clock).probe(store.load("n1"))
    assert not store.load("n1").probe_failing


class NoConnections:
    """An HTTP pool that fails the test if anything connects through it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def request(self, method: str, url: str, **options):
        self.calls.append(url)
        raise AssertionError(f"connected to {url}")

    urlopen = request


@pytest.mark.parametrize(("address", "answers"), [
    ("169.254.169.254", {}),
    ("0.0.0.0", {}),
    ("metadata.google.internal", {"metadata.google.internal": ["169.254.169.254"]}),
    ("gpu-1.lan", {"gpu-1.lan": ["169.254.169.254"]}),  # the name now points elsewhere
    ("gpu-2.lan", {}),  # no longer resolves
])
def test_a_refused_address_is_not_polled_and_counts_as_failing(store, clock, address, answers):
    now = clock()
    store.save(Node("n1", node_address=address, node_port=80, node_status=NodeStatus.ONLINE,
                    create_time=now, update_time=now))
    http = NoConnections()
    policy = NetworkPolicy.from_settings(None, None, "127.0.0.1", resolver=lambda name: answers.get(name, []))
    assert Prober(store, interval=5, clock=clock, http=http, netpolicy=policy).probe(store.load("n1")) is False
    assert http.calls == []
    assert store.load("n1").probe_failing


class RawNode:
    """A node written with raw sockets: /health answers 200 at once, and
    /metrics is `metrics(conn)`, whatever that sends."""

    def __init__(self, metrics) -> None:
        import socket
        import threading

        self.metrics = metrics
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        with conn:
            try:
                request = conn.recv(65536)
                if request.startswith(b"GET /health "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                else:
                    self.metrics(conn)
            except OSError:
                pass  # the prober hung up on us: that is the point

    def close(self) -> None:
        self.listener.close()


def huge(conn) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
    line = b"vllm:num_requests_running 1\n" * 4096
    for _ in range((64 << 20) // len(line)):
        conn.sendall(line)


def huge_chunked(conn) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(1024):
        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.sendall(b"0\r\n\r\n")


def trickle(conn) -> None:
    import time

    body = b"vllm:num_requests_running 1\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    for byte in body:  # one byte every 0.15 s: no single read ever times out
        conn.sendall(bytes([byte]))
        time.sleep(0.15)


def chunked_small(conn) -> None:
    body = (b"vllm:num_requests_running 2\n", b"vllm:num_requests_waiting 3\n")
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in body) + b"0\r\n\r\n")


@pytest.mark.parametrize("metrics", [huge, huge_chunked], ids=["content-length", "chunked"])
def test_a_huge_metrics_answer_is_not_read_whole(store, clock, metrics):
    node = RawNode(metrics)
    try:
        prober = Prober(store, interval=5, clock=clock)
        status, text = prober._get(f"http://127.0.0.1:{node.port}/metrics")
        assert (status, text) == (0, "")  # past the 1 MiB cap: no answer, and nothing kept
        register(store, node.port, clock())
        assert prober.probe(store.load("n1"))  # healthy still, its load just unknown
        assert store.load("n1").node_info.running == 7
    finally:
        node.close()


def test_a_node_that_trickles_cannot_hold_a_poll(store, clock):
    import time

    node = RawNode(trickle)
    try:
        prober = Prober(store, interval=1, clock=clock)  # the deadline: the interval, at most 5 s
        started = time.monotonic()
        assert prober._get(f"http://127.0.0.1:{node.port}/metrics") == (0, "")
        assert time.monotonic() - started < 2
    finally:
        node.close()


def test_a_chunked_metrics_answer_is_read(store, clock):
    node = RawNode(chunked_small)
    try:
        register(store, node.port, clock())
        assert Prober(store, interval=5, clock=clock).probe(store.load("n1"))
        assert (store.load("n1").node_info.running, store.load("n1").node_info.waiting) == (2, 3)
    finally:
        node.close()


def test_the_health_check_of_ejected_nodes_is_bounded_in_time():
    """main.py's check of an ejected node runs in the fleet refresher: a node
    that trickles its /health must not hold the refresher (and so routing)."""
    import time

    from service.probe import bounded_get

    node = RawNode(trickle)  # serves the trickle on any path but /health ...
    try:
        started = time.monotonic()
        assert bounded_get(f"http://127.0.0.1:{node.port}/slow-health", 1.0) == (0, "")
        assert time.monotonic() - started < 1.5
        assert bounded_get(f"http://127.0.0.1:{node.port}/health", 1.0)[0] == 200
    finally:
        node.close()

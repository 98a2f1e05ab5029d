"""The fleet view: the breaker's state machine on an injected clock, refreshes
from (fake) Redis, counts shared between instances, and a Redis outage."""

from __future__ import annotations

import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from model.node import Node, NodeInfo, NodeStatus
from service.breaker import Breaker
from service.fleet import LEASE_SECONDS, Fleet
from service.node_state import NodeState

# --- the breaker ---


def test_breaker_stays_closed_below_the_threshold():
    breaker = Breaker(eject_after=3)
    assert breaker.failure(now=0) is False
    assert breaker.failure(now=0) is False
    assert not breaker.ejected and breaker.allows(0)
    breaker.success()
    assert breaker.failure(now=0) is False  # a success starts the count again
    assert breaker.failures == 1


def test_breaker_opens_after_consecutive_failures_then_allows_one_trial():
    breaker = Breaker(eject_after=2, base_cooldown=1.0)
    breaker.failure(now=100)
    assert breaker.failure(now=100) is True
    assert breaker.ejected
    assert not breaker.allows(100.5)
    assert breaker.allows(101.0)  # half-open
    breaker.trial_running = True
    assert not breaker.allows(101.0)  # one trial at a time


def test_breaker_closes_on_a_good_trial():
    breaker = Breaker(eject_after=1)
    breaker.failure(now=0)
    breaker.trial_running = True
    assert breaker.success() is True
    assert not breaker.ejected and breaker.allows(0)
    assert breaker.cooldown == 0 and not breaker.trial_running
    assert breaker.success() is False  # nothing to recover from


def test_a_failed_trial_doubles_the_cooldown_up_to_the_cap():
    breaker = Breaker(eject_after=1, base_cooldown=1.0, max_cooldown=8.0)
    now = 0.0
    cooldowns = []
    for _ in range(6):
        breaker.failure(now)
        cooldowns.append(breaker.cooldown)
        assert not breaker.allows(now + breaker.cooldown - 0.01)
        now = breaker.open_until
        assert breaker.allows(now)
    assert cooldowns == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    breaker.success()
    breaker.failure(now)
    assert breaker.cooldown == 1.0  # a recovered node starts from the base again


# --- node state ---


def node(node_id: str = "n1", *, now: float, **fields) -> Node:
    fields.setdefault("node_status", NodeStatus.ONLINE)
    return Node(node_id, node_address="127.0.0.1", node_port=8000, create_time=now, update_time=now, **fields)


def test_node_state_load(clock):
    s = NodeState(node(now=clock(), node_info=NodeInfo(running=2, waiting=3)))
    s.take_report(s.node)
    assert s.load == 5
    s.local_inflight, s.remote_inflight = 4, 3
    # The report's 5 plus the 7 sent since.
    assert s.inflight == 7 and s.load == 12
    s.take_report(s.node)  # the next report counts them all: nothing beyond
    assert s.load == 7


# --- the fleet against fake Redis ---


@pytest.fixture
def node_store(redis) -> NodeStore:
    return NodeStore(redis, Keys("nvllm"))


@pytest.fixture
def make_fleet(redis, node_store, clock):
    """Fleets sharing one fake Redis: each is another nvllm instance."""
    made: list[Fleet] = []

    def make(**options) -> Fleet:
        options.setdefault("eject_after", 2)
        # An hour between background ticks: the tests call refresh() themselves.
        options.setdefault("refresh_interval", 3600)
        fleet = Fleet(node_store, InflightStore(redis, Keys("nvllm")), clock=clock, **options)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


def test_refresh_loads_nodes_and_their_reports(node_store, make_fleet, clock):
    node_store.save(node(now=clock(), node_info=NodeInfo(running=2, waiting=1, kv_cache_usage=0.4)))
    fleet = make_fleet()
    fleet.refresh()
    s = fleet.get("n1")
    assert (s.reported_running, s.reported_waiting, s.kv_usage) == (2, 1, 0.4)
    assert [x.node_id for x in fleet.routable()] == ["n1"]


def test_inband_load_holds_until_a_newer_heartbeat(node_store, make_fleet, clock):
    node_store.save(node(now=clock(), node_info=NodeInfo(running=2, waiting=1)))
    fleet = make_fleet()
    fleet.refresh()
    s = fleet.get("n1")
    fleet.record_inband_load(s, waiting=9, running=None, kv_usage=0.95)
    fleet.refresh()  # same heartbeat: the fresher in-band numbers stay
    assert (s.reported_running, s.reported_waiting, s.kv_usage) == (2, 9, 0.95)
    clock.advance(1)
    node_store.update("n1", {"node_info": {"waiting": 0}}, clock())
    fleet.refresh()
    assert (s.reported_running, s.reported_waiting) == (2, 0)
    assert fleet.get("n1") is s  # the state (breaker, speed) survives refreshes


def test_two_instances_see_each_others_inflight_counts(node_store, make_fleet, clock):
    node_store.save(node(now=clock()))
    one, two = make_fleet(), make_fleet()
    one.refresh(), two.refresh()
    one.acquire(one.get("n1"))
    one.acquire(one.get("n1"))
    two.acquire(two.get("n1"))
    one.refresh(), two.refresh()
    assert two.get("n1").remote_inflight == 2 and two.get("n1").inflight == 3
    one.refresh()
    assert one.get("n1").remote_inflight == 1 and one.get("n1").inflight == 3
    assert one.inflight_totals() == {"n1": 3}
    one.release(one.get("n1"))
    one.release(one.get("n1"))
    one.refresh(), two.refresh()
    assert two.get("n1").inflight == 1


def test_a_vanished_instances_counts_expire_with_its_lease(node_store, make_fleet, clock):
    node_store.save(node(now=clock(), timeout=3600))
    crashed, survivor = make_fleet(), make_fleet()
    crashed.refresh()
    crashed.acquire(crashed.get("n1"))
    crashed.refresh()
    survivor.refresh()
    assert survivor.get("n1").inflight == 1
    clock.advance(LEASE_SECONDS / 2)
    survivor.refresh()
    assert survivor.get("n1").inflight == 1  # still within the lease
    clock.advance(LEASE_SECONDS / 2 + 0.1)  # `crashed` never refreshes again
    survivor.refresh()
    assert survivor.get("n1").inflight == 0


def test_release_never_goes_below_zero(node_store, make_fleet, clock):
    node_store.save(node(now=clock()))
    fleet = make_fleet()
    fleet.refresh()
    fleet.release(fleet.get("n1"))
    assert fleet.get("n1").local_inflight == 0


def test_a_deleted_node_stays_while_requests_to_it_run(node_store, make_fleet, clock):
    node_store.save(node("busy", now=clock()))
    node_store.save(node("idle", now=clock()))
    fleet = make_fleet()
    fleet.refresh()
    busy = fleet.get("busy")
    fleet.acquire(busy)
    node_store.delete("busy")
    node_store.delete("idle")
    fleet.refresh()
    assert fleet.get("idle") is None
    assert fleet.get("busy") is busy
    fleet.release(busy)
    fleet.refresh()
    assert fleet.get("busy") is None


def test_ejection_and_recovery_through_the_fleet(node_store, make_fleet, clock):
    node_store.save(node(now=clock()))
    fleet = make_fleet(eject_after=2)
    fleet.refresh()
    s = fleet.get("n1")
    fleet.record_failure(s, "HTTP 500")
    assert fleet.routable() and not fleet.is_failing("n1")
    fleet.record_failure(s, "HTTP 500")
    assert fleet.routable() == [] and fleet.is_failing("n1")
    clock.advance(s.breaker.cooldown)
    assert fleet.routable() == [s]  # half-open
    fleet.acquire(s)
    assert s.breaker.trial_running and fleet.routable() == []
    fleet.record_success(s)
    fleet.release(s)
    assert fleet.routable() == [s] and not fleet.is_failing("n1")


def test_a_trial_that_ends_undecided_does_not_lock_the_node_out(node_store, make_fleet, clock):
    """A trial answered 429, or whose client went away, says nothing about the
    node's health; the node must get another trial, not stay out for good."""
    node_store.save(node(now=clock()))
    fleet = make_fleet(eject_after=1)
    fleet.refresh()
    s = fleet.get("n1")
    fleet.record_failure(s, "HTTP 500")
    clock.advance(s.breaker.cooldown)
    fleet.acquire(s)
    fleet.release(s)  # neither success nor failure recorded
    assert fleet.routable() == [s]


def test_a_good_health_probe_ends_the_cooldown_early(node_store, make_fleet, clock):
    node_store.save(node("sick", now=clock()))
    node_store.save(node("dead", now=clock()))
    healthy = {"sick": True, "dead": False}
    fleet = make_fleet(eject_after=1, health_check=lambda n: healthy[n.node_id])
    fleet.refresh()
    for node_id in ("sick", "dead"):
        fleet.record_failure(fleet.get(node_id), "ConnectTimeoutError")
    assert fleet.routable() == []
    fleet.probe_ejected()
    assert [s.node_id for s in fleet.routable()] == ["sick"]


def test_probe_leaves_healthy_nodes_alone(node_store, make_fleet, clock):
    calls = []
    node_store.save(node(now=clock()))
    fleet = make_fleet(health_check=lambda n: calls.append(n.node_id) or True)
    fleet.refresh()
    fleet.probe_ejected()
    assert calls == []


# --- Redis down ---


def test_storage_down_keeps_the_last_view(server, node_store, make_fleet, clock, caplog):
    node_store.save(node(now=clock(), timeout=10))
    fleet = make_fleet()
    fleet.refresh()
    server.connected = False
    clock.advance(1)
    with caplog.at_level("WARNING", logger="nvllm.fleet"):
        fleet.refresh()
        fleet.refresh()
    assert not fleet.storage_ok
    assert [r.message for r in caplog.records].count("storage lost: routing on the last known fleet") == 1
    # Heartbeats cannot arrive while Redis is down, so liveness is judged as of
    # the last good refresh: the node is not declared dead for our outage.
    clock.advance(60)
    assert [s.node_id for s in fleet.routable()] == ["n1"]
    server.connected = True
    fleet.refresh()
    assert fleet.storage_ok
    assert fleet.routable() == []  # its heartbeat really is 61 s old


def test_storage_down_backs_off_and_recovers(server, node_store, make_fleet, clock, caplog):
    node_store.save(node(now=clock()))
    fleet = make_fleet(refresh_interval=0.1)
    assert fleet.tick() == 0.1
    server.connected = False
    assert [fleet.tick() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert [s.node_id for s in fleet.routable()] == ["n1"]
    server.connected = True
    with caplog.at_level("INFO", logger="nvllm.fleet"):
        assert fleet.tick() == 0.1
    assert "storage recovered" in [r.message for r in caplog.records]


def test_a_fleet_never_refreshed_routes_nothing_while_storage_is_down(server, node_store, make_fleet, clock):
    node_store.save(node(now=clock()))
    fleet = make_fleet()
    server.connected = False
    assert fleet.routable() == []


def test_close_withdraws_this_instances_counts(node_store, make_fleet, redis, clock):
    node_store.save(node(now=clock()))
    leaving, staying = make_fleet(), make_fleet()
    leaving.routable()  # starts its refresher
    leaving.acquire(leaving.get("n1"))
    leaving.refresh()
    staying.refresh()
    assert staying.get("n1").inflight == 1
    leaving.close()
    staying.refresh()
    assert staying.get("n1").inflight == 0


def test_a_node_registered_a_moment_ago_is_routable_without_waiting(node_store, make_fleet, clock):
    from service.proxy import Proxy, UpstreamConfig
    from service.routing import RouteRequest
    from service.routing.load import LoadPolicy

    fleet = make_fleet()
    fleet.refresh()
    proxy = Proxy(fleet, LoadPolicy(), UpstreamConfig())
    clock.advance(0.2)
    node_store.save(node(now=clock()))
    assert proxy.select(RouteRequest()).node_id == "n1"


def test_a_refresh_sees_every_kind_of_node_write(make_fleet, node_store, clock):
    """Refreshes read only nodes whose revision changed: heartbeats, flags,
    re-registrations and deletions all show."""
    now = clock()
    node_store.save(Node("n1", node_address="10.0.0.1", node_status=NodeStatus.ONLINE, create_time=now,
                         update_time=now))
    fleet = make_fleet()
    fleet.refresh()
    assert [s.node_id for s in fleet.routable()] == ["n1"]
    node_store.flag("n1", {"probe_failing": "1"})
    fleet.refresh()
    assert fleet.routable() == []
    clock.advance(1)
    node_store.update("n1", {"node_info": {"waiting": 3}}, clock(), fields={"probe_failing": "0"})
    fleet.refresh()
    assert fleet.get("n1").reported_waiting == 3 and fleet.routable()
    node_store.save(Node("n1", node_address="169.254.169.254", node_status=NodeStatus.ONLINE,
                         create_time=now, update_time=clock()))
    fleet.refresh()
    assert fleet.get("n1").node.node_address == "169.254.169.254" and fleet.routable() == []
    node_store.delete("n1")
    fleet.refresh()
    assert fleet.known() == []


class Listener:
    def __init__(self) -> None:
        self.reports: list[tuple] = []
        self.forgotten: list[str] = []

    def report(self, node_id, running, waiting, kv_usage, now) -> None:
        self.reports.append((node_id, running, waiting, kv_usage))

    def forget(self, node_id) -> None:
        self.forgotten.append(node_id)


def test_the_fleet_tells_routing_each_new_report_and_each_node_gone(make_fleet, node_store, clock):
    listener = Listener()
    fleet = make_fleet(listener=listener)
    node_store.save(node(now=clock(), node_info=NodeInfo(running=3, waiting=1, kv_cache_usage=0.5)))
    fleet.refresh()
    fleet.refresh()  # the same report again: nothing new to tell
    assert listener.reports == [("n1", 3, 1, 0.5)]
    fleet.record_inband_load(fleet.get("n1"), waiting=0, running=5, kv_usage=0.4)
    assert listener.reports[-1] == ("n1", 5, 0, 0.4)
    node_store.delete("n1")
    fleet.refresh()
    assert listener.forgotten == ["n1"]


# --- a refresh asked for by a request ---


@pytest.fixture
def sleeps(clock) -> list[float]:
    """Fake sleeps: recorded, and the clock moves on by them."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        clock.advance(seconds)

    sleep.slept = slept
    return sleep


def test_refresh_now_sees_a_node_registered_just_after_the_last_refresh(node_store, make_fleet, clock, sleeps):
    fleet = make_fleet(sleep=sleeps)
    fleet.start()
    clock.advance(0.03)
    node_store.save(node(now=clock()))
    assert fleet.routable() == []
    # The last read is 30 ms old: the next is due 70 ms from now, and this
    # caller waits for it rather than answer from a view older than itself.
    assert fleet.refresh_now(0.1) is True
    assert sleeps.slept == [0.07]
    assert [s.node_id for s in fleet.routable()] == ["n1"]


def test_refresh_now_reads_at_most_once_per_spacing(node_store, make_fleet, clock, sleeps):
    fleet = make_fleet(sleep=sleeps)
    fleet.refresh()
    clock.advance(1)
    assert fleet.refresh_now(0.1) is True  # the view is a second old: read at once
    assert sleeps.slept == []
    for _ in range(3):  # a flood of requests no node can take, 10 ms apart
        clock.advance(0.01)
        assert fleet.refresh_now(0.1) is True
    assert sleeps.slept == [0.09, 0.09, 0.09]


def test_refresh_now_never_waits_on_storage_known_down(server, node_store, make_fleet, clock, sleeps):
    fleet = make_fleet(sleep=sleeps)
    fleet.refresh()
    server.connected = False
    clock.advance(1)
    fleet.refresh()
    assert fleet.refresh_now(0.1) is False
    assert sleeps.slept == []

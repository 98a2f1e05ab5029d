"""Failing nodes: retried elsewhere before the first byte, ejected after
NVLLM_EJECT_AFTER failures, probed back in once they recover."""

from __future__ import annotations

import time

import openai
import pytest

from tests.proxy.conftest import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

RECOVERY_LIMIT = 5.0  # seconds from a node's recovery to its next request


@pytest.fixture
def fleet_of_two(start_nvllm, start_fake):
    """nvllm with round robin over `bad` and `good`, so `bad` is tried first."""
    live = start_nvllm(routing="round_robin")
    bad, good = start_fake(), start_fake()
    live.register("bad", bad.port)
    live.register("good", good.port)
    return live, bad, good


@pytest.mark.parametrize("fault", ["down", "refuse", "error500", "busy429"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_node_is_retried_on_another(fleet_of_two, fault, stream):
    live, bad, good = fleet_of_two
    bad.set_fault(fault)
    assert live.served_by(6, stream=stream) == ["good"] * 6
    assert good.stats()["completed"] == 6
    if fault != "refuse":  # a refused connection never reaches the node
        assert bad.stats()["requests_received"] >= 1
    # 429 is back-pressure, not sickness: retried elsewhere, never ejected.
    assert live.fleet.is_failing("bad") is (fault != "busy429")


def test_when_every_node_fails_the_client_gets_a_502(fleet_of_two):
    live, bad, good = fleet_of_two
    bad.set_fault("error500")
    good.set_fault("down")
    with pytest.raises(openai.InternalServerError) as raised:
        live.sdk().completions.create(model="fake-model", prompt="x", max_tokens=1)
    assert raised.value.status_code == 502
    assert raised.value.body["type"] == "server_error"
    assert "2 attempt(s)" in raised.value.message


def test_a_lone_busy_node_passes_its_429_through(nvllm, start_fake):
    busy = start_fake()
    nvllm.register("busy", busy.port)
    busy.set_fault("busy429")
    with pytest.raises(openai.RateLimitError) as raised:
        nvllm.sdk().completions.create(model="fake-model", prompt="x", max_tokens=1)
    assert raised.value.response.headers["Retry-After"] == "1"
    assert raised.value.response.headers["X-NVLLM-Node"] == "busy"
    assert not nvllm.fleet.is_failing("busy")


def test_a_lone_failing_node_passes_its_500_through_and_is_counted(nvllm, start_fake):
    broken = start_fake()
    nvllm.register("broken", broken.port)
    broken.set_fault("error500")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as raised:
            nvllm.sdk().completions.create(model="fake-model", prompt="x", max_tokens=1)
        assert raised.value.status_code == 500
    assert nvllm.fleet.is_failing("broken")


def test_a_node_that_keeps_failing_is_ejected(fleet_of_two):
    live, bad, good = fleet_of_two
    bad.set_fault("down")  # /health fails too, so no probe lets it back early
    live.served_by(10)
    # Two failures (NVLLM_EJECT_AFTER=2) and then nothing for the cooldown.
    assert bad.stats()["requests_received"] == 2
    assert live.fleet.is_failing("bad")
    status = live.get("/api/node/node/status/bad").json()["data"]
    assert status["routable"] is False and status["alive"] is True


def test_an_ejected_node_is_probed_back_in_within_seconds(fleet_of_two):
    live, bad, good = fleet_of_two
    bad.set_fault("down")
    live.served_by(4)
    assert live.fleet.is_failing("bad")
    # Keep it failing for a while: failed trials double its cooldown.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        live.served_by()
        time.sleep(0.05)
    assert live.fleet.get("bad").breaker.cooldown >= 2.0
    bad.set_fault(None)
    recovered_at = time.monotonic()
    while "bad" not in live.served_by(2):
        assert time.monotonic() - recovered_at < RECOVERY_LIMIT, "the node never came back"
        time.sleep(0.05)
    took = time.monotonic() - recovered_at
    assert took < RECOVERY_LIMIT
    assert not live.fleet.is_failing("bad")
    assert sorted(live.served_by(4)) == ["bad", "bad", "good", "good"]


def test_a_trial_answered_429_does_not_keep_the_node_out(fleet_of_two):
    live, bad, good = fleet_of_two
    bad.set_fault("error500")
    live.served_by(4)
    assert live.fleet.is_failing("bad")
    bad.set_fault("busy429")  # /health stays good, so trials come at once
    rejected = bad.stats()["rejected"]
    wait_for(lambda: live.served_by(2) and bad.stats()["rejected"] > rejected, 3,
             "a trial request to meet the 429")
    bad.set_fault(None)
    recovered_at = time.monotonic()
    while "bad" not in live.served_by(2):
        assert time.monotonic() - recovered_at < RECOVERY_LIMIT, "the node never came back"
        time.sleep(0.05)


def test_a_hung_node_is_retried_after_the_stream_timeout(start_nvllm, start_fake):
    # A wedged engine: the node accepts, sends a stream's headers, then nothing.
    live = start_nvllm(routing="round_robin", upstream_stream_timeout=0.3)
    hung, good = start_fake(), start_fake()
    live.register("a-hung", hung.port)
    live.register("b-good", good.port)
    hung.set_fault("hang")
    started = time.monotonic()
    assert live.served_by(2, stream=True) == ["b-good", "b-good"]
    assert time.monotonic() - started < 3
    assert hung.stats()["requests_received"] >= 1
    wait_for(lambda: hung.stats()["in_flight"] == 0, 2, "the hung node's request to be closed")


def test_a_hung_node_is_retried_after_the_read_timeout_without_streaming(start_nvllm, start_fake):
    live = start_nvllm(routing="round_robin", upstream_read_timeout=0.3)
    hung, good = start_fake(), start_fake()
    live.register("a-hung", hung.port)
    live.register("b-good", good.port)
    hung.set_fault("hang")
    assert live.served_by(2) == ["b-good", "b-good"]
    assert hung.stats()["requests_received"] >= 1


def test_a_redis_outage_keeps_routing_on_the_last_known_fleet(nvllm, start_fake, server):
    nvllm.register("n1", start_fake().port)
    assert nvllm.served_by() == ["n1"]  # the client's token is now known
    server.connected = False
    wait_for(lambda: not nvllm.fleet.storage_ok, 2, "the refresher to notice the outage")
    assert nvllm.served_by(3, stream=True) == ["n1"] * 3
    assert nvllm.get("/api/node/node/all").status == 503  # the API says so
    server.connected = True
    wait_for(lambda: nvllm.fleet.storage_ok, 2, "the refresher to recover")
    assert nvllm.served_by() == ["n1"]

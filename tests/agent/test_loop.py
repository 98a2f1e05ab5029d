"""The agent's state machine against in-memory nvllm and vLLM: no network, no sleeping."""

from __future__ import annotations

import logging
import threading

import pytest

from agent.backoff import Backoff
from agent.loop import Agent
from model.vllm_metrics import Load
from tests.agent.fakes import FakeClock, FakeNvllm, FakeVllm, Rejected, Unreachable, make_config

NODE = "gpu-1-8000"


@pytest.fixture
def nvllm() -> FakeNvllm:
    return FakeNvllm()


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent(nvllm, vllm, clock) -> Agent:
    backoff = Backoff(1.0, 3.0, uniform=lambda low, high: high)
    return Agent(make_config(), nvllm, vllm, clock=clock, wait=clock.wait, backoff=backoff)


def messages(caplog, level=logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nvllm.agent" and r.levelno >= level]


# --- registering and heartbeats ---


def test_first_step_registers_the_whole_node(agent, nvllm, caplog):
    caplog.set_level(logging.INFO)
    assert agent.step() is None
    assert nvllm.calls == [("register", {
        "node_id": NODE,
        "node_type": "worker",
        "node_address": "10.0.0.7",
        "node_port": 8000,
        "node_status": "online",
        "timeout": 3,
        "models": ["fake-model"],
        "node_info": {"running": 2, "waiting": 1, "kv_cache": 25, "kv_cache_usage": 0.25},
    })]
    assert messages(caplog)[-1] == (
        "registered node gpu-1-8000 at http://10.0.0.7:8000 (online, models: fake-model)"
    )


def test_remark_is_sent_when_configured(nvllm, vllm, clock):
    agent = Agent(make_config(remark="GPU节点1"), nvllm, vllm, clock=clock, wait=clock.wait)
    agent.step()
    assert nvllm.nodes[NODE]["remark"] == "GPU节点1"


def test_heartbeats_carry_the_load_and_only_what_changed(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    vllm.current = Load(running=5, waiting=0, kv_cache_usage=0.5)
    agent.step()
    agent.step()
    assert nvllm.calls[1:] == [
        ("update", {"node_info": {"running": 5, "waiting": 0, "kv_cache": 50, "kv_cache_usage": 0.5}}),
    ] * 2
    assert len(messages(caplog)) == 1  # steady heartbeats log nothing


def test_changed_models_are_sent_once(agent, nvllm, vllm):
    agent.step()
    vllm.models_list = ["new-model"]
    agent.step()
    agent.step()
    assert [c[1].get("models") for c in nvllm.calls[1:]] == [["new-model"], None]


def test_node_gone_404_registers_again_in_the_same_step(agent, nvllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    del nvllm.nodes[NODE]  # expired past retention, or an operator deleted it
    assert agent.step() is None
    assert nvllm.names() == ["register", "update", "register"]
    assert NODE in nvllm.nodes
    assert messages(caplog)[-2:] == [
        "node gpu-1-8000 gone (404): registering again",
        "registered node gpu-1-8000 at http://10.0.0.7:8000 (online, models: fake-model)",
    ]


# --- nvllm failures ---


def test_unreachable_nvllm_is_retried_with_backoff_and_logged_once(agent, nvllm, caplog):
    caplog.set_level(logging.INFO)
    nvllm.fail = Unreachable("Connection refused")
    delays = [agent.step() for _ in range(4)]
    assert delays == [1.0, 2.0, 3.0, 3.0]
    assert messages(caplog, logging.WARNING) == ["nvllm unreachable (Connection refused), retrying in 1.0s"]
    nvllm.fail = None
    assert agent.step() is None
    assert NODE in nvllm.nodes
    assert agent.backoff.attempts == 0


def test_a_lost_connection_while_registered_recovers_with_one_line(agent, nvllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    nvllm.fail = Unreachable("timed out waiting for a response")
    agent.step()
    agent.step()
    nvllm.fail = None
    agent.step()
    assert messages(caplog)[1:] == [
        "nvllm unreachable (timed out waiting for a response), retrying in 1.0s",
        "nvllm reachable again",
    ]


def test_retry_after_from_nvllm_stretches_the_delay_up_to_the_cap(agent, nvllm):
    nvllm.fail = Unreachable("HTTP 503: storage unavailable", retry_after=2.5)
    assert agent.step() == 2.5
    nvllm.fail = Unreachable("HTTP 503", retry_after=600)
    assert agent.step() == 3.0


def test_rejection_is_retried_too(agent, nvllm, caplog):
    nvllm.fail = Rejected("HTTP 401: token expired")
    assert agent.step() == 1.0
    assert "nvllm rejected the call (HTTP 401: token expired)" in messages(caplog, logging.WARNING)[0]


def test_a_bug_in_a_step_is_logged_and_retried_not_fatal(agent, nvllm, caplog):
    nvllm.fail = RuntimeError("surprise")
    assert agent.safe_step() == 1.0
    assert any(r.exc_info for r in caplog.records)


# --- vLLM health ---


def test_unhealthy_vllm_is_reported_offline_then_online_again(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    vllm.problem = "/health answered HTTP 503"
    agent.step()
    agent.step()
    vllm.problem = None
    agent.step()
    assert [c[1].get("node_status") for c in nvllm.calls[1:]] == ["offline", None, "online"]
    assert nvllm.calls[2] == ("update", {})  # still a heartbeat: the node stays known
    assert messages(caplog)[1:] == [
        "vLLM unhealthy (/health answered HTTP 503): reporting offline",
        "vLLM healthy: reporting online",
    ]


def test_vllm_down_at_start_registers_offline(agent, nvllm, vllm):
    vllm.problem = "Connection refused"
    agent.step()
    node = nvllm.nodes[NODE]
    assert node["node_status"] == "offline" and "node_info" not in node


def test_unreadable_metrics_still_heartbeat_without_load(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    vllm.metrics_problem = "no vllm:num_requests_running in /metrics"
    agent.step()
    agent.step()
    vllm.metrics_problem = None
    agent.step()
    assert [c[1] for c in nvllm.calls[1:3]] == [{}, {}]
    assert "node_info" in nvllm.calls[3][1]
    assert messages(caplog)[1:] == [
        "cannot read vLLM's /metrics (no vllm:num_requests_running in /metrics): heartbeats carry no load",
        "vLLM's /metrics readable again",
    ]


def test_unreadable_models_keep_the_last_known_list(agent, nvllm, vllm):
    agent.step()
    vllm.models_problem = "/v1/models answered HTTP 401"
    agent.step()
    assert "models" not in nvllm.calls[1][1]
    assert nvllm.nodes[NODE]["models"] == ["fake-model"]


def test_an_operators_draining_is_left_alone_until_vllm_health_changes(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    nvllm.nodes[NODE]["node_status"] = "draining"  # PUT by an operator
    agent.step()
    agent.step()
    assert nvllm.nodes[NODE]["node_status"] == "draining"
    assert messages(caplog).count(
        "node_status is draining in nvllm, set by someone else: left as is until vLLM's health changes"
    ) == 1
    vllm.problem = "Connection refused"
    agent.step()
    assert nvllm.nodes[NODE]["node_status"] == "offline"


# --- stopping ---


def test_stop_drains_then_deletes_and_exits_0(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    vllm.current = Load()
    agent.stop.set()
    assert agent.run() == 0
    assert nvllm.names()[1:] == ["update", "update", "status", "delete"]
    assert nvllm.calls[1] == ("update", {"node_status": "draining"})
    assert nvllm.nodes == {}
    assert messages(caplog)[-3:] == [
        "draining node gpu-1-8000 (grace 5s)",
        "drained: nothing running or in flight",
        "deregistered node gpu-1-8000",
    ]


def test_run_heartbeats_until_stopped(nvllm, vllm, clock):
    stop = threading.Event()
    agent = Agent(make_config(), nvllm, vllm, stop=stop, clock=clock, wait=clock.wait)

    def wait(event: threading.Event, seconds: float) -> bool:
        clock.wait(event, seconds)
        if len(clock.waits) == 3:
            stop.set()
        return event.is_set()

    agent.wait = wait
    vllm.current = Load()
    assert agent.run() == 0
    assert nvllm.names()[:3] == ["register", "update", "update"]
    assert clock.waits[:3] == [1.0, 1.0, 1.0]
    assert nvllm.nodes == {}


def test_drain_waits_for_vllm_and_nvllm_to_be_idle(agent, nvllm, vllm, clock):
    agent.step()
    vllm.loads = [Load(running=2), Load(running=1), Load(running=0)]
    vllm.current = Load()
    nvllm.inflight[NODE] = 1

    def wait(event: threading.Event, seconds: float) -> bool:
        clock.wait(event, seconds)
        if len(clock.waits) == 3:
            nvllm.inflight[NODE] = 0
        return event.is_set()

    agent.wait = wait
    agent.shutdown()
    assert clock.waits == [1.0, 1.0, 1.0]  # vLLM idle after 2 polls, nvllm after 3
    assert nvllm.nodes == {}


def test_drain_gives_up_after_the_grace_period(agent, nvllm, vllm, clock, caplog):
    agent.step()
    vllm.current = Load(running=4, waiting=2)
    agent.shutdown()
    assert sum(clock.waits) == pytest.approx(5.0)
    assert nvllm.nodes == {}
    assert "grace period over with 6 request(s) at vLLM and 0 in flight from nvllm" in messages(caplog)


def test_a_second_signal_cuts_the_drain_short(agent, nvllm, vllm, clock):
    agent.step()
    vllm.current = Load(running=4)
    agent.hurry.set()
    agent.shutdown()
    assert clock.waits == []
    assert nvllm.nodes == {}


def test_unreachable_nvllm_at_stop_gives_up_without_raising(agent, nvllm, caplog):
    agent.step()
    nvllm.fail = Unreachable("Connection refused")
    agent.shutdown()
    assert nvllm.names().count("delete") == 3
    assert messages(caplog, logging.WARNING)[-1] == (
        "could not deregister node gpu-1-8000 (Connection refused): it will show offline after 3s"
    )


def test_a_node_already_gone_at_stop_is_fine(agent, nvllm, caplog):
    caplog.set_level(logging.INFO)
    agent.step()
    nvllm.nodes.clear()
    agent.shutdown()
    assert messages(caplog)[-1] == "deregistered node gpu-1-8000 (it was already gone)"


def test_the_token_never_reaches_the_log(agent, nvllm, vllm, caplog):
    caplog.set_level(logging.DEBUG)
    agent.step()
    nvllm.fail = Rejected("HTTP 401: bad token")
    agent.step()
    agent.stop.set()
    agent.run()
    assert all("secret-token" not in r.getMessage() for r in caplog.records)

"""The agent reports a node's LoRA adapters and which of them vLLM runs now."""

from __future__ import annotations

import pytest

from agent.backoff import Backoff
from agent.loop import Agent
from model.adapter import Adapter
from model.vllm_metrics import Load
from tests.agent.fakes import FakeClock, FakeNvllm, FakeVllm, make_config

NODE = "gpu-1-8000"
SQL = Adapter("sql-lora", "fake-model", "/loras/sql")


@pytest.fixture
def nvllm() -> FakeNvllm:
    return FakeNvllm()


@pytest.fixture
def vllm() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
def agent(nvllm, vllm) -> Agent:
    clock = FakeClock()
    return Agent(make_config(), nvllm, vllm, clock=clock, wait=clock.wait, backoff=Backoff(1.0, 3.0))


def test_a_node_without_adapters_registers_as_before(agent, nvllm):
    agent.step()
    assert "adapters" not in nvllm.calls[0][1]


def test_adapters_go_with_the_registration_and_changes_once(agent, nvllm, vllm):
    vllm.adapters_list = [SQL]
    agent.step()
    assert nvllm.calls[0][1]["adapters"] == [{"id": "sql-lora", "parent": "fake-model", "root": "/loras/sql"}]
    agent.step()
    assert "adapters" not in nvllm.calls[1][1]
    vllm.adapters_list = []  # unloaded at run time
    agent.step()
    agent.step()
    assert [c[1].get("adapters") for c in nvllm.calls[2:]] == [[], None]


def test_unreadable_models_keep_the_last_known_adapters(agent, nvllm, vllm):
    vllm.adapters_list = [SQL]
    agent.step()
    vllm.models_problem = "/v1/models answered HTTP 401"
    agent.step()
    assert "adapters" not in nvllm.calls[1][1]
    assert nvllm.nodes[NODE]["adapters"][0]["id"] == "sql-lora"


def test_active_adapters_ride_in_node_info(agent, nvllm, vllm):
    vllm.current = Load(running=1, waiting=1, kv_cache_usage=0.5,
                        running_adapters=("sql-lora",), waiting_adapters=("chat-lora",))
    agent.step()
    info = nvllm.calls[0][1]["node_info"]
    assert info["running_lora_adapters"] == ["sql-lora"]
    assert info["waiting_lora_adapters"] == ["chat-lora"]

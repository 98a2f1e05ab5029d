"""The agent as a process reports a vLLM's LoRA adapters to a real nvllm,
which then routes the adapter's requests to that node."""

from __future__ import annotations

import pytest

from tests.agent.conftest import wait_for
from tests.agent.test_integration import NODE, agent_flags, node_status

pytestmark = pytest.mark.integration


def test_adapters_loaded_at_run_time_reach_nvllm_and_route(nvllm, worker_token, run_agent):
    from fakevllm import FakeVLLM

    with FakeVLLM(["base"], lora_modules={"sql-lora": "/loras/sql"}, runtime_lora_updating=True,
                  step_time=0.0, prefill_time_per_token=0.0) as fake:
        agent = run_agent(nvllm.base_url, worker_token, *agent_flags(fake))
        node = wait_for(lambda: node_status(nvllm, worker_token), 10, "the node to register")
        assert node["models"] == ["base"]
        assert node["adapters"] == [{"id": "sql-lora", "parent": "base", "root": "/loras/sql"}]
        assert node["node_info"]["running_lora_adapters"] == []
        admin = nvllm.login()
        body = {"base_model": "base", "lora_name": "new-lora", "lora_path": "/loras/new"}
        loaded = nvllm.request("POST", "/api/adapter/load", token=admin, body=body).data
        assert [(r["node_id"], r["ok"]) for r in loaded["nodes"]] == [(NODE, True)]
        wait_for(lambda: len(node_status(nvllm, worker_token).get("adapters", [])) == 2, 5, "the new adapter")
        answer = nvllm.request("POST", "/v1/completions", token=admin,
                               body={"model": "new-lora", "prompt": "x", "max_tokens": 2})
        assert answer.status == 200 and answer.json["model"] == "new-lora"
        assert answer.headers["X-NVLLM-Node"] == NODE
        assert agent.stop() == 0

"""LoRA adapters from vLLM's /v1/models and /metrics, and in a node's record."""

from __future__ import annotations

import json

import pytest

from model.adapter import Adapter, AdapterChange, parse_model_list, split_label, validate_adapters
from model.errors import ValidationError
from model.node import Node, NodeInfo, validate_changes
from model.vllm_metrics import parse_load

MODELS = {"object": "list", "data": [
    {"id": "Qwen/Qwen2.5-7B-Instruct", "root": "/models/qwen", "parent": None},
    {"id": "sql-lora", "root": "/loras/sql", "parent": "Qwen/Qwen2.5-7B-Instruct"},
    {"id": "chat-lora", "parent": "Qwen/Qwen2.5-7B-Instruct"},
]}


def test_cards_with_a_parent_are_adapters():
    models, adapters = parse_model_list(json.dumps(MODELS))
    assert models == ["Qwen/Qwen2.5-7B-Instruct"]
    assert adapters == [Adapter("sql-lora", "Qwen/Qwen2.5-7B-Instruct", "/loras/sql"),
                        Adapter("chat-lora", "Qwen/Qwen2.5-7B-Instruct", "")]


def test_a_model_list_of_the_wrong_shape_raises():
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_model_list('{"models": []}')


LORA_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql-lora,chat-lora",waiting_lora_adapters="x"} 1.8e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.75e+09
"""


def test_the_newest_lora_series_is_what_runs_now():
    load = parse_load(LORA_METRICS)
    assert load.running_adapters == ("sql-lora", "chat-lora")
    assert load.waiting_adapters == ("x",)
    info = load.to_node_info()
    assert info["running_lora_adapters"] == ["sql-lora", "chat-lora"]
    assert info["waiting_lora_adapters"] == ["x"]


def test_without_the_lora_gauge_node_info_is_as_before():
    load = parse_load(LORA_METRICS.split("# HELP vllm:lora")[0])
    assert load.running_adapters is None
    assert set(load.to_node_info()) == {"running", "waiting", "kv_cache", "kv_cache_usage"}


def test_labels_split_on_commas_with_or_without_spaces():
    assert split_label("a, b,,c ") == ["a", "b", "c"]
    assert split_label("") == []


@pytest.mark.parametrize("value, field", [
    ("sql", "adapters"),
    ([{"id": "a"}], "adapters[0].parent"),
    ([{"id": "", "parent": "m"}], "adapters[0].id"),
    ([{"id": "a", "parent": "m", "extra": 1}], "adapters[0].extra"),
    ([{"id": "a\n", "parent": "m"}], "adapters[0].id"),
    ([{"id": f"a{i}", "parent": "m"} for i in range(129)], "adapters"),
])
def test_bad_adapters_are_refused_naming_the_field(value, field):
    with pytest.raises(ValidationError) as refused:
        validate_adapters(value)
    assert refused.value.field == field


def test_a_node_round_trips_its_adapters_and_shows_them_only_when_it_has_some():
    node = Node("n", models=["m"], adapters=[Adapter("sql", "m", "/l")],
                node_info=NodeInfo(running_lora_adapters=["sql"], waiting_lora_adapters=[]))
    again = Node.from_redis(node.to_redis())
    assert again == node
    assert again.to_dict(0)["adapters"] == [{"id": "sql", "parent": "m", "root": "/l"}]
    assert again.to_dict(0)["node_info"]["running_lora_adapters"] == ["sql"]
    assert "adapters" not in Node("plain").to_dict(0)
    assert node.serves("sql") and node.serves("m") and not node.serves("other")


def test_node_changes_accept_adapters_and_active_lists():
    clean = validate_changes({"adapters": [{"id": "a", "parent": "m"}],
                              "node_info": {"running_lora_adapters": ["a"], "waiting_lora_adapters": None}},
                             allow_id=False)
    assert clean["adapters"] == [Adapter("a", "m")]
    assert clean["node_info"] == {"running_lora_adapters": ["a"], "waiting_lora_adapters": None}
    with pytest.raises(ValidationError, match="node_info.running_lora_adapters"):
        validate_changes({"node_info": {"running_lora_adapters": "a"}}, allow_id=False)


def test_a_load_needs_base_model_and_path_an_unload_only_the_name():
    load = AdapterChange.from_payload({"base_model": "m", "lora_name": "a", "lora_path": "/p"}, load=True)
    assert load.to_vllm() == {"lora_name": "a", "lora_path": "/p"}
    with pytest.raises(ValidationError, match="lora_path"):
        AdapterChange.from_payload({"base_model": "m", "lora_name": "a"}, load=True)
    with pytest.raises(ValidationError, match="lora_path: unknown field"):
        AdapterChange.from_payload({"lora_name": "a", "lora_path": "/p"}, load=False)
    assert AdapterChange.from_payload({"lora_name": "a"}, load=False).to_vllm() == {"lora_name": "a"}

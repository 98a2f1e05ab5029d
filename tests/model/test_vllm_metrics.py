"""The /metrics parser on samples in the exact format of current, older and data-parallel vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.vllm_metrics import Load, MetricsError, parse_load

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_current_vllm_v1_single_engine():
    load = parse_load(fixture("vllm_current.txt"))
    assert load == Load(running=3, waiting=2, kv_cache_usage=0.4375)


def test_older_vllm_uses_gpu_cache_usage_and_counts_swapped_as_waiting():
    load = parse_load(fixture("vllm_older.txt"))
    # 5 waiting + 1 swapped (preempted to CPU, waiting to resume)
    assert load == Load(running=2, waiting=6, kv_cache_usage=0.8125)


def test_data_parallel_sums_counts_and_averages_kv_usage_over_engines():
    load = parse_load(fixture("vllm_data_parallel.txt"))
    assert (load.running, load.waiting) == (6, 1)
    assert load.kv_cache_usage == pytest.approx((0.62 + 0.18) / 2)


def test_transition_releases_exporting_both_names_use_the_current_one():
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.3\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
    )
    assert parse_load(text) == Load(running=1, waiting=0, kv_cache_usage=0.3)


def test_series_of_several_model_names_are_summed():
    text = (
        'vllm:num_requests_running{model_name="a"} 2.0\n'
        'vllm:num_requests_running{model_name="b"} 3.0\n'
        'vllm:num_requests_waiting{model_name="a"} 4.0\n'
    )
    assert parse_load(text) == Load(running=5, waiting=4, kv_cache_usage=None)


def test_untyped_exposition_without_help_lines_parses():
    assert parse_load("vllm:num_requests_waiting 7\n").waiting == 7


def test_out_of_range_and_non_finite_values_are_tamed():
    text = (
        'vllm:num_requests_running{engine="0"} -1.0\n'
        'vllm:num_requests_waiting{engine="0"} NaN\n'
        'vllm:kv_cache_usage_perc{engine="0"} 1.7\n'
    )
    assert parse_load(text) == Load(running=0, waiting=0, kv_cache_usage=1.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
        "# TYPE vllm:num_requests_running gauge\n",  # stats disabled: families without samples
        'process_open_fds 12.0\nvllm:kv_cache_usage_perc{engine="0"} 0.2\n',
    ],
)
def test_a_page_without_request_counts_is_an_error(text):
    with pytest.raises(MetricsError):
        parse_load(text)


def test_text_that_is_not_prometheus_is_an_error():
    with pytest.raises(MetricsError):
        parse_load("<html><body>Not Found</body></html>\n")


@pytest.mark.parametrize(
    ("usage", "kv_cache"),
    [(None, 0), (0.0, 0), (0.4375, 44), (0.999, 100), (1.0, 100)],
)
def test_node_info_carries_usage_as_fraction_and_whole_percent(usage, kv_cache):
    info = Load(running=3, waiting=2, kv_cache_usage=usage).to_node_info()
    assert info == {"running": 3, "waiting": 2, "kv_cache": kv_cache, "kv_cache_usage": usage}


def test_node_info_passes_nvllm_validation():
    from model.node import NodeInfo

    for name in ("vllm_current.txt", "vllm_older.txt", "vllm_data_parallel.txt"):
        info = parse_load(fixture(name)).to_node_info()
        assert NodeInfo.validate(info) == info


def test_the_agent_and_the_poller_share_one_parser_outside_the_agent():
    import ast

    import agent.vllm
    import model.vllm_metrics
    import service.probe

    assert agent.vllm.parse_load is service.probe.parse_load is model.vllm_metrics.parse_load
    root = Path(__file__).resolve().parents[2]
    for path in (root / "service").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "agent" or n.startswith("agent.") for n in names), path.name

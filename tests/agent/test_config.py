"""Agent settings: flags over environment over defaults, each bad value named."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig, ConfigError, default_node_id, load_config

BASE_ENV = {"NVLLM_SERVER": "http://nvllm.internal:5000", "NVLLM_TOKEN": "env-token"}


def load(argv=(), env=None, **kwargs) -> AgentConfig:
    kwargs.setdefault("hostname", lambda: "gpu-7.cluster.local")
    kwargs.setdefault("route_address", lambda target: "10.1.2.3")
    return load_config(list(argv), BASE_ENV if env is None else env, **kwargs)


def test_defaults():
    config = load()
    assert config.server == "http://nvllm.internal:5000"
    assert config.token == "env-token"
    assert config.vllm_url == "http://127.0.0.1:8000"
    assert config.node_id == "gpu-7-8000"
    # vLLM on loopback: advertise the address on the route to nvllm instead.
    assert (config.advertise_address, config.advertise_port) == ("10.1.2.3", 8000)
    assert (config.interval, config.timeout) == (10.0, 30)
    assert (config.node_type, config.remark, config.drain_grace) == ("worker", None, 30.0)
    assert (config.log_level, config.log_json) == ("INFO", False)


def test_every_option_is_read_from_the_environment():
    env = {
        **BASE_ENV,
        "VLLM_URL": "http://10.0.0.5:8001/",
        "VLLM_API_KEY": "vllm-key",
        "NVLLM_NODE_ID": "node-a",
        "NVLLM_ADVERTISE_ADDRESS": "gpu-a.example",
        "NVLLM_ADVERTISE_PORT": "9001",
        "NVLLM_HEARTBEAT_INTERVAL": "2.5",
        "NVLLM_NODE_TIMEOUT": "20",
        "NVLLM_NODE_TYPE": "h100",
        "NVLLM_REMARK": "GPU节点1",
        "NVLLM_DRAIN_GRACE": "120",
        "NVLLM_LOG_LEVEL": "debug",
        "NVLLM_LOG_JSON": "true",
    }
    config = load(env=env)
    assert config.vllm_url == "http://10.0.0.5:8001"
    assert config.vllm_api_key == "vllm-key"
    assert (config.node_id, config.advertise_address, config.advertise_port) == ("node-a", "gpu-a.example", 9001)
    assert (config.interval, config.timeout, config.drain_grace) == (2.5, 20, 120.0)
    assert (config.node_type, config.remark) == ("h100", "GPU节点1")
    assert (config.log_level, config.log_json) == ("DEBUG", True)


def test_flags_override_the_environment():
    env = {**BASE_ENV, "NVLLM_NODE_ID": "from-env", "NVLLM_HEARTBEAT_INTERVAL": "7", "VLLM_URL": "http://a:1"}
    config = load(
        ["--server", "https://lb.example/", "--token", "flag-token", "--node-id", "from-flag",
         "--interval", "0.5", "--vllm", "http://b:2", "--log-json"],
        env,
    )
    assert config.server == "https://lb.example"
    assert config.token == "flag-token"
    assert config.node_id == "from-flag"
    assert (config.interval, config.timeout) == (0.5, 2)
    assert (config.vllm_url, config.advertise_address, config.advertise_port) == ("http://b:2", "b", 2)
    assert config.log_json is True


def test_an_empty_variable_counts_as_unset():
    config = load(env={**BASE_ENV, "NVLLM_NODE_ID": "", "NVLLM_HEARTBEAT_INTERVAL": ""})
    assert (config.node_id, config.interval) == ("gpu-7-8000", 10.0)


def test_advertised_address_and_port_follow_a_reachable_vllm_url():
    config = load(["--vllm", "https://10.9.8.7"])
    assert (config.advertise_address, config.advertise_port, config.node_id) == ("10.9.8.7", 443, "gpu-7-443")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "[::1]", "[::]"])
def test_loopback_and_wildcard_vllm_hosts_advertise_the_route_to_nvllm(host):
    targets = []

    def route(target: str) -> str:
        targets.append(target)
        return "192.168.5.5"

    config = load(["--vllm", f"http://{host}:8000"], route_address=route)
    assert config.advertise_address == "192.168.5.5"
    assert targets == ["nvllm.internal"]


def test_without_a_route_the_vllm_host_is_kept():
    assert load(route_address=lambda target: None).advertise_address == "127.0.0.1"


def test_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("file-token\n", encoding="utf-8")
    env = {"NVLLM_SERVER": "http://n:5000", "NVLLM_TOKEN_FILE": str(path)}
    assert load(env=env).token == "file-token"
    # a flag beats a variable, whichever kind
    assert load(["--token-file", str(path)], {**env, "NVLLM_TOKEN": "env-token"}).token == "file-token"
    assert load(["--token", "flag-token"], env).token == "flag-token"


def test_the_token_stays_out_of_repr():
    assert "env-token" not in repr(load())


def test_default_node_id_is_stable_and_valid():
    assert default_node_id("gpu-7.cluster.local", 8000) == "gpu-7-8000"
    assert default_node_id("_odd host!", 80) == "odd-host-80"
    assert len(default_node_id("x" * 300, 8000)) == 128


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"NVLLM_TOKEN": "t"}, "--server"),
        ([], {"NVLLM_SERVER": "http://n"}, "--token"),
        (["--server", "nvllm:5000"], BASE_ENV, "--server"),
        (["--vllm", "ftp://x"], BASE_ENV, "--vllm"),
        (["--vllm", "http://x:99999"], BASE_ENV, "--vllm"),
        (["--interval", "fast"], BASE_ENV, "--interval"),
        (["--interval", "0"], BASE_ENV, "--interval"),
        (["--interval", "nan"], BASE_ENV, "--interval"),
        (["--timeout", "1.5"], BASE_ENV, "--timeout"),
        (["--timeout", "10"], BASE_ENV, "--timeout"),  # not longer than the 10 s interval
        (["--advertise-port", "0"], BASE_ENV, "--advertise-port"),
        (["--advertise-port", "70000"], BASE_ENV, "--advertise-port"),
        (["--advertise-port", "http"], BASE_ENV, "--advertise-port"),
        (["--timeout", "100000"], BASE_ENV, "--timeout"),
        (["--advertise-address", "bad_host!"], BASE_ENV, "--advertise-address"),
        (["--node-id", "a:b"], BASE_ENV, "--node-id"),
        (["--node-id=-a"], BASE_ENV, "--node-id"),
        (["--node-type", "gpu worker"], BASE_ENV, "--node-type"),
        (["--remark", "x" * 257], BASE_ENV, "--remark"),
        (["--drain-grace", "-1"], BASE_ENV, "--drain-grace"),
        (["--log-level", "loud"], BASE_ENV, "--log-level"),
        (["--advertise-address", "http://x/"], BASE_ENV, "--advertise-address"),
        ([], {**BASE_ENV, "NVLLM_LOG_JSON": "maybe"}, "--log-json"),
        (["--token-file", "/nonexistent/token"], BASE_ENV, "--token-file"),
    ],
)
def test_bad_values_are_refused_by_name(argv, env, named):
    with pytest.raises(ConfigError, match=named):
        load(argv, env)


def test_errors_never_echo_the_token(tmp_path):
    path = tmp_path / "empty"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(["--token-file", str(path)], {"NVLLM_SERVER": "http://n"})
    assert "env-token" not in str(info.value)


def test_unknown_flags_exit_like_argparse():
    with pytest.raises(SystemExit) as info:
        load(["--no-such-flag"])
    assert info.value.code == 2


def test_derived_timings():
    config = load(["--interval", "10", "--timeout", "600"])
    assert config.request_timeout == 5.0
    assert config.backoff_cap == 60.0
    fast = load(["--interval", "0.5"])
    assert (fast.request_timeout, fast.backoff_cap) == (1.0, 2.0)

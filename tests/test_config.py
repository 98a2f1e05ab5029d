"""Settings.from_env: every variable parsed into its type, bad values named."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from config import Settings, SettingsError, documented_variables

ENV_FIELDS = [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


def kind(spec: dataclasses.Field) -> str:
    """int, float, bool, choice or text, from the parser a field declares."""
    return spec.metadata["parse"].__qualname__.split(".")[0].lstrip("_")


def test_no_environment_gives_the_defaults():
    assert Settings.from_env({}) == Settings()


def test_defaults_are_safe():
    settings = Settings()
    assert settings.debug is False
    assert settings.host == "127.0.0.1" and settings.port == 5000
    assert settings.jwt_secret is None  # generated at run time, never a literal
    assert settings.admin_password is None
    assert settings.cors_origins == ()
    assert settings.redis_prefix == "nvllm"


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"NVLLM_PORT": "8080"}, "port", 8080),
        ({"NVLLM_PORT": " 8080 "}, "port", 8080),
        ({"NVLLM_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
        ({"NVLLM_DEBUG": "yes"}, "debug", True),
        ({"NVLLM_DEBUG": "TRUE"}, "debug", True),
        ({"NVLLM_DEBUG": "0"}, "debug", False),
        ({"NVLLM_DEBUG": ""}, "debug", False),
        ({"NVLLM_LOG_JSON": "on"}, "log_json", True),
        ({"NVLLM_LOG_LEVEL": "DEBUG"}, "log_level", "DEBUG"),
        ({"REDIS_URL": "redis://10.0.0.5:6379/2"}, "redis_url", "redis://10.0.0.5:6379/2"),
        ({"REDIS_URL": ""}, "redis_url", None),
        ({"NVLLM_REDIS_PREFIX": "fleet-a"}, "redis_prefix", "fleet-a"),
        ({"NVLLM_REDIS_TIMEOUT": "0.5"}, "redis_timeout", 0.5),
        ({"NVLLM_JWT_SECRET": "s3cret-" * 5}, "jwt_secret", "s3cret-" * 5),
        ({"NVLLM_JWT_SECRET": ""}, "jwt_secret", None),
        ({"NVLLM_TOKEN_TTL": "3600"}, "token_ttl", 3600),
        ({"NVLLM_ADMIN_PASSWORD": "choose-a-long-one"}, "admin_password", "choose-a-long-one"),
        ({"NVLLM_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7,::1"}, "trusted_proxies",
         (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"), ipaddress.ip_network("::1/128"))),
        ({"NVLLM_TRUSTED_PROXIES": ""}, "trusted_proxies", ()),
        ({"NVLLM_AUTH_MAX_STALE": "0"}, "auth_max_stale", 0),
        ({"NVLLM_LOGIN_MAX_FAILURES": "3"}, "login_max_failures", 3),
        ({"NVLLM_LOGIN_WINDOW": "60"}, "login_window", 60),
        ({"NVLLM_CORS_ORIGINS": "https://a.example, https://b.example,,"}, "cors_origins",
         ("https://a.example", "https://b.example")),
        ({"NVLLM_CORS_ORIGINS": ""}, "cors_origins", ()),
        ({"NVLLM_NODE_RETENTION": "0"}, "node_retention", 0),
        ({"NVLLM_NODE_RETENTION": "86400"}, "node_retention", 86400),
    ],
    ids=lambda v: repr(v)[:50],
)
def test_values_are_parsed_into_their_types(env, field, value):
    assert getattr(Settings.from_env(env), field) == value


BAD = {
    "int": ["abc", "1.5", "", "-1", "99999999999999"],
    "float": ["abc", "", "-1", "nan", "inf", "1e9"],
    "bool": ["maybe", "2", "y e s"],
    "choice": ["nonsense", ""],
}
BAD_CASES = [
    (spec.metadata["env"], raw)
    for spec in ENV_FIELDS
    for raw in BAD.get(kind(spec), [])
]


@pytest.mark.parametrize(("var", "raw"), BAD_CASES, ids=lambda v: repr(v))
def test_bad_values_are_rejected_naming_the_variable(var, raw):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({var: raw})
    assert var in str(caught.value)


def test_every_numeric_and_flag_variable_is_checked():
    checked = {var for var, _ in BAD_CASES}
    untyped = {f.metadata["env"] for f in ENV_FIELDS if kind(f) not in BAD}
    assert checked | untyped == {f.metadata["env"] for f in ENV_FIELDS}
    assert {"NVLLM_PORT", "NVLLM_DEBUG", "NVLLM_LOG_LEVEL", "NVLLM_REDIS_TIMEOUT"} <= checked


def test_port_bounds():
    assert Settings.from_env({"NVLLM_PORT": "1"}).port == 1
    assert Settings.from_env({"NVLLM_PORT": "65535"}).port == 65535
    for raw in ("0", "65536"):
        with pytest.raises(SettingsError, match="NVLLM_PORT"):
            Settings.from_env({"NVLLM_PORT": raw})


def test_unrelated_variables_are_ignored():
    assert Settings.from_env({"PATH": "/bin", "NVLLM_UNKNOWN": "x", "HOME": "/root"}) == Settings()


def test_overrides_win_over_the_environment():
    settings = Settings.from_env({"NVLLM_PORT": "8080"}, port=9090, password_hash_n=2**4)
    assert settings.port == 9090 and settings.password_hash_n == 2**4


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]
    assert Settings().replace(port=1).port == 1


def test_from_env_reads_the_real_environment(monkeypatch):
    import os

    monkeypatch.setenv("NVLLM_PORT", "7000")
    monkeypatch.setenv("NVLLM_LOGIN_MAX_FAILURES", "2")
    settings = Settings.from_env(os.environ)
    assert (settings.port, settings.login_max_failures) == (7000, 2)


def test_the_autouse_fixture_cleared_the_environment():
    import os

    assert not [k for k in os.environ if k.startswith("NVLLM_") or k == "REDIS_URL"]


def test_every_variable_is_documented_once():
    documented = documented_variables()
    names = [var for var, _, _ in documented]
    assert len(names) == len(set(names)) == len(ENV_FIELDS)
    assert all(doc for _, _, doc in documented)
    assert all(var == "REDIS_URL" or var.startswith("NVLLM_") for var in names)


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("NVLLM_JWT_SECRET", "x"),
        ("NVLLM_JWT_SECRET", "a" * 31),
        ("NVLLM_ADMIN_PASSWORD", "a"),
        ("NVLLM_ADMIN_PASSWORD", "short-pw"),
        ("NVLLM_ADMIN_PASSWORD", "password1234"),
        ("NVLLM_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("NVLLM_TRUSTED_PROXIES", "proxy.internal"),
    ],
)
def test_weak_or_bad_security_settings_stop_nvllm(var, raw):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({var: raw})
    assert var in str(caught.value)
    if var != "NVLLM_TRUSTED_PROXIES" and len(raw) > 1:
        assert raw not in str(caught.value)  # a secret is never echoed


def test_a_secret_of_32_bytes_is_enough():
    assert Settings.from_env({"NVLLM_JWT_SECRET": "a" * 32}).jwt_secret == "a" * 32


def test_production_hashes_at_owasps_cost():
    assert Settings().password_hash_n == 2**17

"""Settings: read from the environment once, validated, frozen."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTING_POLICIES = ("load", "round_robin", "random", "least_inflight")


class SettingsError(ValueError):
    """A variable of the environment holds a value nvllm cannot use."""


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _float(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return parse


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _text(name: str, raw: str) -> str:
    return raw


def _optional_text(name: str, raw: str) -> str | None:
    return raw or None


def _store_url(name: str, raw: str) -> str | None:
    from model.store_url import check_store_url

    try:
        return check_store_url(raw) if raw else None
    except ValueError as exc:
        raise SettingsError(f"{name} {exc}") from None


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


MIN_SECRET_BYTES = 32


def _secret(name: str, raw: str) -> str | None:
    """HS256 with a short secret falls to an offline guess from any one token."""
    if raw and len(raw.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{name} must be at least {MIN_SECRET_BYTES} bytes; leave it unset to have one generated")
    return raw or None


def _new_password(name: str, raw: str) -> str | None:
    """The bootstrap admin's password passes the rule every password must."""
    from model.user import password_problem

    problem = password_problem(raw) if raw else None
    if problem:
        raise SettingsError(f"{name} {problem}")
    return raw or None


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name} must be comma-separated addresses or CIDRs, got {raw!r}") from None


def _node_networks(name: str, raw: str) -> tuple[str, ...] | None:
    """Comma-separated CIDRs (a bare address is a /32 or /128); empty = nvllm's default."""
    parts = tuple(part.strip() for part in raw.split(",") if part.strip())
    for part in parts:
        try:
            ipaddress.ip_network(part)
        except ValueError:
            raise SettingsError(
                f"{name} must be comma-separated networks like 10.0.0.0/8 (no host bits set), got {part!r}"
            ) from None
    return parts or None


def _env(var: str, parse: Callable[[str, str], Any], default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": var, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Everything nvllm can be told. Each field names its environment variable."""

    host: str = _env("NVLLM_HOST", _text, "127.0.0.1", "address to listen on")
    port: int = _env("NVLLM_PORT", _int(1, 65535), 5000, "port to listen on")
    workers: int = _env(
        "NVLLM_WORKERS", _int(0, 64), 0, "server worker processes; 0 = one per usable CPU core (at most 64)"
    )
    debug: bool = _env("NVLLM_DEBUG", _bool, False, "Flask debug mode (never in production)")
    log_level: str = _env(
        "NVLLM_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "log level"
    )
    log_json: bool = _env("NVLLM_LOG_JSON", _bool, False, "one JSON object per log line")

    redis_url: str | None = _env(
        "REDIS_URL", _store_url, None,
        "external Redis/Valkey (redis://, rediss://, unix://, or redis+sentinel://); unset = embedded store"
    )
    redis_prefix: str = _env("NVLLM_REDIS_PREFIX", _text, "nvllm", "prefix of every Redis key")
    redis_timeout: float = _env(
        "NVLLM_REDIS_TIMEOUT", _float(0.05, 60), 2.0, "Redis connect/read timeout, seconds"
    )
    data_dir: str = _env("NVLLM_DATA_DIR", _text, "./data", "embedded store's data directory")

    jwt_secret: str | None = _env(
        "NVLLM_JWT_SECRET", _secret, None, "token signing secret, 32+ bytes; unset = generated once"
    )
    token_ttl: int = _env(
        "NVLLM_TOKEN_TTL", _int(60, 10 * 365 * 86400), 12 * 3600, "login token lifetime, s"
    )
    admin_password: str | None = _env(
        "NVLLM_ADMIN_PASSWORD", _new_password, None, "bootstrap admin's password (the password rule applies)"
    )
    login_max_failures: int = _env(
        "NVLLM_LOGIN_MAX_FAILURES", _int(1, 10_000), 5,
        "failed logins per username and client address before back-off (10x per name or address alone)",
    )
    login_window: int = _env(
        "NVLLM_LOGIN_WINDOW", _int(1, 86400), 300, "failed-login counting window and longest back-off, s"
    )
    cors_origins: tuple[str, ...] = _env(
        "NVLLM_CORS_ORIGINS", _origins, (), "comma-separated origins allowed by CORS"
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _env(
        "NVLLM_TRUSTED_PROXIES", _networks, (),
        "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed; none by default",
    )
    auth_max_stale: float = _env(
        "NVLLM_AUTH_MAX_STALE", _float(0, 3600), 60.0,
        "while Redis is down, tokens of users checked this recently still work, s",
    )

    node_retention: int = _env(
        "NVLLM_NODE_RETENTION", _int(0, 365 * 86400), 3600, "how long expired nodes stay, s"
    )
    allowed_networks: tuple[str, ...] | None = _env(
        "NVLLM_ALLOWED_NETWORKS", _node_networks, None,
        "CIDRs node addresses may be in; unset = private ranges, plus loopback while NVLLM_HOST is loopback",
    )
    upstream_key_networks: tuple[str, ...] | None = _env(
        "NVLLM_UPSTREAM_KEY_NETWORKS", _node_networks, None,
        "CIDRs of nodes that get NVLLM_UPSTREAM_API_KEY; unset = the allowed networks",
    )
    max_nodes: int = _env("NVLLM_MAX_NODES", _int(1, 100_000), 1024, "most nodes registered at once")
    max_nodes_per_account: int = _env(
        "NVLLM_MAX_NODES_PER_ACCOUNT", _int(1, 100_000), 256, "most nodes one account may have registered"
    )

    routing: str = _env(
        "NVLLM_ROUTING", _choice(*ROUTING_POLICIES), "load", "routing policy for /v1 requests"
    )
    affinity_slack: float = _env(
        "NVLLM_AFFINITY_SLACK", _float(0, 100), 0.15,
        "prefix affinity holds while the affine node costs <= (1+slack) x the cheapest",
    )
    fleet_refresh: float = _env(
        "NVLLM_FLEET_REFRESH", _float(0.05, 10), 0.5, "seconds between fleet-view refreshes"
    )
    eject_after: int = _env(
        "NVLLM_EJECT_AFTER", _int(1, 100), 3, "consecutive failures that eject a node"
    )
    upstream_connect_timeout: float = _env(
        "NVLLM_UPSTREAM_CONNECT_TIMEOUT", _float(0.05, 60), 2.0, "connect timeout to a node, s"
    )
    upstream_stream_timeout: float = _env(
        "NVLLM_UPSTREAM_STREAM_TIMEOUT", _float(0.1, 3600), 30.0,
        "streamed requests: longest silence from a node, s; before the first chunk the request goes "
        "to another node, after it the stream is cut",
    )
    upstream_read_timeout: float = _env(
        "NVLLM_UPSTREAM_READ_TIMEOUT", _float(0.1, 86400), 300.0,
        "non-streamed requests: longest wait for a node's answer, s",
    )
    upstream_retries: int = _env(
        "NVLLM_UPSTREAM_RETRIES", _int(0, 10), 2, "other nodes tried before the first byte"
    )
    upstream_api_key: str | None = _env(
        "NVLLM_UPSTREAM_API_KEY", _optional_text, None, "sent to nodes started with --api-key"
    )
    max_proxy_body: int = _env(
        "NVLLM_MAX_PROXY_BODY", _int(1024, 1 << 31), 4 * 1024 * 1024, "largest /v1 JSON request body, bytes"
    )
    max_upload_body: int = _env(
        "NVLLM_MAX_UPLOAD_BODY", _int(1024, 1 << 31), 32 * 1024 * 1024,
        "largest /v1 multipart/form-data body (audio uploads), bytes",
    )
    response_ttl: int = _env(
        "NVLLM_RESPONSE_TTL", _int(60, 30 * 86400), 86400,
        "how long nvllm remembers which node holds a stored response (Responses API), s",
    )
    max_inflight_per_user: int = _env(
        "NVLLM_MAX_INFLIGHT_PER_USER", _int(0, 1_000_000), 256,
        "/v1 requests one user may have in flight in one worker process; 0 = no cap",
    )
    header_timeout: float = _env(
        "NVLLM_HEADER_TIMEOUT", _float(0.5, 600), 10.0, "longest a client may take to send a request's headers, s"
    )
    body_timeout: float = _env(
        "NVLLM_BODY_TIMEOUT", _float(0.5, 3600), 30.0, "longest a client may take to send a request's body, s"
    )
    max_connections_per_client: int = _env(
        "NVLLM_MAX_CONNECTIONS_PER_CLIENT", _int(0, 1_000_000), 1024,
        "connections one client address may hold per worker process; 0 = no cap",
    )
    shutdown_delay: float = _env(
        "NVLLM_SHUTDOWN_DELAY", _float(0, 300), 0.0,
        "on SIGTERM, seconds to keep accepting, /readyz answering 503, before the listener closes",
    )
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _env(
        "NVLLM_METRICS_ALLOW", _networks, (), "comma-separated networks (CIDR) that may read /metrics; unset = any"
    )
    metrics_token: bool = _env(
        "NVLLM_METRICS_TOKEN", _bool, False, "/metrics requires a Bearer token (any role)"
    )

    probe_interval: float = _env(
        "NVLLM_PROBE_INTERVAL", _float(0, 3600), 5.0,
        "poll each node's /health and /metrics this often, s; 0 = off",
    )

    # scrypt's work factor. Not an environment variable: production keeps the
    # default (model/user.py HASH_N); tests turn it down so a login costs microseconds.
    password_hash_n: int = 2**17

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Parse every known variable; raise SettingsError naming a bad one."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            var = spec.metadata.get("env")
            if var is not None and var in env:
                values[spec.name] = spec.metadata["parse"](var, env[var])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def documented_variables() -> list[tuple[str, Any, str]]:
    """(variable, default, meaning) for every setting read from the environment."""
    return [
        (spec.metadata["env"], spec.default, spec.metadata["doc"])
        for spec in dataclasses.fields(Settings)
        if "env" in spec.metadata
    ]

"""The agent's settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from model.errors import ValidationError
from model.node import validate_changes

DEFAULT_VLLM = "http://127.0.0.1:8000"
DEFAULT_INTERVAL = 10.0
DEFAULT_DRAIN_GRACE = 30.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A flag or variable holds a value the agent cannot use; the text names it."""


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, and what it means."""

    flag: str
    env: str | None
    default: str
    help: str
    is_switch: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS = (
    Option("--server", "NVLLM_SERVER", "(required)", "nvllm's base URL, e.g. http://nvllm.internal:5000"),
    Option("--token", "NVLLM_TOKEN", "(required)",
           "a worker-role token; prefer the variable or --token-file, since flags show in `ps`"),
    Option("--token-file", "NVLLM_TOKEN_FILE", "-", "read the token from this file instead"),
    Option("--vllm", "VLLM_URL", DEFAULT_VLLM, "the vLLM server's base URL, as the agent reaches it"),
    Option("--vllm-api-key", "VLLM_API_KEY", "-", "vLLM's --api-key, sent to its /v1/models"),
    Option("--node-id", "NVLLM_NODE_ID", "<hostname>-<advertise port>", "the node's id in nvllm"),
    Option("--advertise-address", "NVLLM_ADVERTISE_ADDRESS", "the --vllm host; if that is a loopback or "
           "wildcard address, this host's address on the route to nvllm", "address nvllm sends requests to"),
    Option("--advertise-port", "NVLLM_ADVERTISE_PORT", "the --vllm port", "port nvllm sends requests to"),
    Option("--interval", "NVLLM_HEARTBEAT_INTERVAL", f"{DEFAULT_INTERVAL:g}", "seconds between heartbeats"),
    Option("--timeout", "NVLLM_NODE_TIMEOUT", "3 x interval, rounded up", "the node's `timeout`: seconds "
           "without a heartbeat before nvllm shows it offline"),
    Option("--node-type", "NVLLM_NODE_TYPE", "worker", "the node's `node_type`"),
    Option("--remark", "NVLLM_REMARK", "-", "the node's `remark` (nvllm's default when unset)"),
    Option("--drain-grace", "NVLLM_DRAIN_GRACE", f"{DEFAULT_DRAIN_GRACE:g}",
           "on SIGTERM, seconds to wait for in-flight requests before deregistering anyway"),
    Option("--log-level", "NVLLM_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Option("--log-json", "NVLLM_LOG_JSON", "off", "one JSON object per log line", is_switch=True),
)


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent was told, parsed and checked."""

    server: str
    token: str = field(repr=False)
    node_id: str
    advertise_address: str
    advertise_port: int
    vllm_url: str = DEFAULT_VLLM
    vllm_api_key: str | None = field(default=None, repr=False)
    interval: float = DEFAULT_INTERVAL
    timeout: int = 30
    node_type: str = "worker"
    remark: str | None = None
    drain_grace: float = DEFAULT_DRAIN_GRACE
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def request_timeout(self) -> float:
        """Per HTTP request: long enough for a busy server, short enough that
        one hung call cannot cost the node its liveness."""
        return min(5.0, max(1.0, self.interval))

    @property
    def backoff_cap(self) -> float:
        # Waiting longer than a node timeout gains nothing: by then the node
        # shows offline anyway, and the sooner a retry lands, the sooner it is back.
        return max(self.interval, min(float(self.timeout), 60.0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Registers a vLLM server with nvllm and keeps its load fresh.",
        epilog="Each flag overrides its environment variable.",
    )
    for opt in OPTIONS:
        env = f"${opt.env}; " if opt.env else ""
        text = f"{opt.help} ({env}default: {opt.default})"
        if opt.is_switch:
            parser.add_argument(opt.flag, action="store_const", const="1", default=None, help=text)
        else:
            parser.add_argument(opt.flag, default=None, metavar=opt.dest.upper(), help=text)
    return parser


def load_config(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    hostname: Callable[[], str] = socket.gethostname,
    route_address: Callable[[str], str | None] | None = None,
) -> AgentConfig:
    """Parse flags (exiting on unknown ones, as argparse does) and environment.
    Raises ConfigError naming the first bad value."""
    args = vars(build_parser().parse_args(list(argv)))
    raw = {opt.dest: _pick(opt, args, environ) for opt in OPTIONS}
    route_address = route_address or outbound_address

    server = _url("--server", _required(raw, "server"))
    vllm_url = _url("--vllm", raw["vllm"] or DEFAULT_VLLM)
    interval = _number("--interval", raw["interval"], DEFAULT_INTERVAL, 0.1, 3600)
    port = _port(raw["advertise_port"], vllm_url)
    node = {
        "node_id": raw["node_id"] or default_node_id(hostname(), port),
        "node_type": raw["node_type"] or "worker",
        "node_address": raw["advertise_address"] or default_address(vllm_url, server, route_address),
        "node_port": port,
        "timeout": _timeout(raw["timeout"], interval),
        "remark": raw["remark"],
    }
    _check_node_fields(node)
    return AgentConfig(
        server=server,
        token=_token(args, environ),
        node_id=node["node_id"],
        advertise_address=node["node_address"],
        advertise_port=port,
        vllm_url=vllm_url,
        vllm_api_key=raw["vllm_api_key"] or None,
        interval=interval,
        timeout=node["timeout"],
        node_type=node["node_type"],
        remark=node["remark"],
        drain_grace=_number("--drain-grace", raw["drain_grace"], DEFAULT_DRAIN_GRACE, 0, 86400),
        log_level=_log_level(raw["log_level"]),
        log_json=_switch("--log-json", raw["log_json"]),
    )


def _pick(opt: Option, args: dict[str, Any], environ: Mapping[str, str]) -> str | None:
    """The flag if given, else the variable if set and not empty."""
    if args.get(opt.dest) is not None:
        return args[opt.dest]
    value = environ.get(opt.env, "") if opt.env else ""
    return value or None


# --- defaults that depend on the host ---


def default_node_id(hostname: str, port: int) -> str:
    """<short hostname>-<port>: stable across restarts, so a restarted agent takes
    over its node instead of leaving a twin to expire."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", hostname.split(".")[0]).strip("._-") or "node"
    suffix = f"-{port}"
    return name[: 128 - len(suffix)] + suffix


def default_address(
    vllm_url: str, server: str, route_address: Callable[[str], str | None]
) -> str:
    """The vLLM URL's host, unless nvllm could not reach it there (loopback or
    wildcard): then this host's address on the route to nvllm."""
    host = urlsplit(vllm_url).hostname or "127.0.0.1"
    if not _is_local(host):
        return host
    return route_address(urlsplit(server).hostname or "127.0.0.1") or host


def outbound_address(target: str) -> str | None:
    """The local address the kernel would use to reach `target`. Connecting a
    UDP socket only picks a route; no packet is sent."""
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def cleartext_warning(server: str) -> str | None:
    """A warning when the token would cross the network unencrypted: an
    http:// nvllm URL to a host other than this one."""
    parts = urlsplit(server)
    if parts.scheme != "http" or _is_local(parts.hostname or ""):
        return None
    return (f"NVLLM_SERVER {parts.scheme}://{parts.netloc} is plain HTTP to another host: the agent's token "
            "crosses the network readable by anyone on the path; put a TLS terminator in front of nvllm "
            "and use its https:// URL")


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


# --- value checks: each returns the clean value or raises ConfigError ---


def _required(raw: dict[str, str | None], dest: str) -> str:
    value = raw[dest]
    if not value:
        opt = next(o for o in OPTIONS if o.dest == dest)
        raise ConfigError(f"{opt.flag} (or ${opt.env}) is required")
    return value


def _url(flag: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} must be an http:// or https:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{flag} has a bad port: {value!r}") from None
    return value.rstrip("/")


def _number(flag: str, value: str | None, default: float, low: float, high: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a number of seconds, got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise ConfigError(f"{flag} must be between {low:g} and {high:g}, got {value}")
    return number


def _timeout(value: str | None, interval: float) -> int:
    if value is None:
        return max(1, math.ceil(3 * interval))
    try:
        timeout = int(value)
    except ValueError:
        raise ConfigError(f"--timeout must be a whole number of seconds, got {value!r}") from None
    if timeout <= interval:
        raise ConfigError(
            f"--timeout ({timeout}) must be longer than --interval ({interval:g}), "
            "or the node expires between heartbeats"
        )
    return timeout


def _port(value: str | None, vllm_url: str) -> int:
    if value is None:
        parts = urlsplit(vllm_url)
        return parts.port or (443 if parts.scheme == "https" else 80)
    if not value.isdigit():
        raise ConfigError(f"--advertise-port must be a port number, got {value!r}")
    return int(value)


# The node's fields as flags, to name the flag in an error.
NODE_FLAGS = {
    "node_id": "--node-id",
    "node_type": "--node-type",
    "node_address": "--advertise-address",
    "node_port": "--advertise-port",
    "timeout": "--timeout",
    "remark": "--remark",
}


def _check_node_fields(node: dict[str, Any]) -> None:
    """nvllm's own registration checks, run at startup: a bad value stops the
    agent here with its flag named, instead of in an endless loop of 400s."""
    try:
        validate_changes({k: v for k, v in node.items() if v is not None}, allow_id=True)
    except ValidationError as exc:
        shown = repr(node.get(exc.field))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ConfigError(f"{NODE_FLAGS.get(exc.field, exc.field)} {exc.reason}, got {shown}") from None


def _log_level(value: str | None) -> str:
    level = (value or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _switch(flag: str, value: str | None) -> bool:
    lowered = (value or "").strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{flag} must be true or false, got {value!r}")


def _token(args: dict[str, Any], environ: Mapping[str, str]) -> str:
    """--token, --token-file, $NVLLM_TOKEN, $NVLLM_TOKEN_FILE: the first one
    set wins, so a flag beats either variable. The token is never echoed."""
    sources = (
        (args.get("token"), False),
        (args.get("token_file"), True),
        (environ.get("NVLLM_TOKEN"), False),
        (environ.get("NVLLM_TOKEN_FILE"), True),
    )
    for value, is_file in sources:
        if value:
            return _read_token_file(value) if is_file else value.strip()
    raise ConfigError("--token (or $NVLLM_TOKEN, or --token-file) is required")


def _read_token_file(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--token-file: cannot read {path!r}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"--token-file {path!r} is empty")
    return text.splitlines()[0].strip()

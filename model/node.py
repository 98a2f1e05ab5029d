"""Node and NodeInfo: validation of request JSON, API JSON, and the Redis hash."""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from model.adapter import Adapter, adapters_from_json, adapters_to_json, validate_adapter_names, validate_adapters
from model.errors import ValidationError

# A node id becomes part of a Redis key, so it may never hold ':', '*', '?',
# '[' or whitespace (see dao/keys.py). \Z, not $: $ also matches before a
# trailing newline.
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
NODE_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
HOST_LABEL_PATTERN = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
MAX_REMARK = 256
MAX_MODELS = 64
MAX_MODEL_NAME = 256
MAX_TIMEOUT = 86400
MAX_COUNT = 10**9
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


def format_time(ts: float) -> str:
    """UTC, second resolution, as the seed shows: 2024-01-01T00:00:00."""
    return datetime.fromtimestamp(ts, UTC).strftime(TIME_FORMAT)


# --- field checks: each returns the clean value or raises ValidationError ---


def _int_field(name: str, value: Any, low: int, high: int) -> int:
    # bool is a subclass of int; JSON true is not a port number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, "must be an integer")
    if not low <= value <= high:
        raise ValidationError(name, f"must be between {low} and {high}")
    return value


def _fraction_field(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(name, "must be a number")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValidationError(name, "must be between 0 and 1")
    return float(value)


def _str_field(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, "must be a string")
    return value


def _pattern_field(name: str, value: Any, pattern: re.Pattern[str], rule: str) -> str:
    if not pattern.match(_str_field(name, value)):
        raise ValidationError(name, rule)
    return value


def validate_node_id(value: Any, name: str = "node_id") -> str:
    return _pattern_field(
        name,
        value,
        NODE_ID_PATTERN,
        "must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
    )


def _address_field(value: Any) -> str:
    text = _str_field("node_address", value)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        # A zone (fe80::1%eth0) names an interface of whoever reads it.
        if "%" in text:
            raise ValidationError("node_address", "must not carry an IPv6 zone (%...)")
        return str(address)
    host = text[:-1] if text.endswith(".") else text
    labels = host.split(".")
    # An all-numeric last label is a mistyped IPv4 address (192.168.1.300),
    # never a host name (RFC 3696, section 2).
    if (
        0 < len(host) <= 253
        and all(HOST_LABEL_PATTERN.match(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return text
    raise ValidationError("node_address", "must be an IPv4/IPv6 address or a DNS host name")


def _models_field(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValidationError("models", "must be a list of model names")
    if len(value) > MAX_MODELS:
        raise ValidationError("models", f"must hold at most {MAX_MODELS} names")
    for name in value:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_MODEL_NAME:
            raise ValidationError("models", f"each name must be a string of 1-{MAX_MODEL_NAME} chars")
        if any(ord(ch) < 32 for ch in name):
            raise ValidationError("models", "names may not hold control characters")
    return list(dict.fromkeys(value))


def _status_field(value: Any) -> NodeStatus:
    try:
        return NodeStatus(_str_field("node_status", value))
    except ValueError:
        raise ValidationError("node_status", "must be one of online, offline, draining") from None


def _remark_field(value: Any) -> str:
    text = _str_field("remark", value)
    if len(text) > MAX_REMARK:
        raise ValidationError("remark", f"must be at most {MAX_REMARK} characters")
    return text


@dataclass
class NodeInfo:
    """A node's load, as its agent or a probe last reported it.

    `running`, `waiting` and `kv_cache` are the seed's fields. `kv_cache_usage`
    is optional: the fraction (0-1) of KV-cache blocks in use, as vLLM's
    `vllm:kv_cache_usage_perc` reports it; the balancer prefers it to `kv_cache`,
    whose unit the seed leaves open. `running_lora_adapters` and
    `waiting_lora_adapters` are optional too: the LoRA adapters of the requests
    vLLM runs and queues now (`vllm:lora_requests_info`), which the balancer
    prefers for a request naming one of them.
    """

    running: int = 0
    waiting: int = 0
    kv_cache: int = 0
    kv_cache_usage: float | None = None
    running_lora_adapters: list[str] | None = None
    waiting_lora_adapters: list[str] | None = None

    @staticmethod
    def validate(payload: Any, prefix: str = "node_info") -> dict[str, Any]:
        """The fields present in `payload`, checked; unknown fields are rejected."""
        if not isinstance(payload, dict):
            raise ValidationError(prefix, "must be an object")
        known = {f.name for f in fields(NodeInfo)}
        clean: dict[str, Any] = {}
        for key, value in payload.items():
            name = f"{prefix}.{key}"
            if key not in known:
                raise ValidationError(name, "unknown field")
            if key == "kv_cache_usage":
                clean[key] = None if value is None else _fraction_field(name, value)
            elif key in _ADAPTER_LISTS:
                clean[key] = None if value is None else validate_adapter_names(name, value)
            else:
                clean[key] = _int_field(name, value, 0, MAX_COUNT)
        return clean

    def merged(self, changes: dict[str, Any]) -> NodeInfo:
        return NodeInfo(**{**self.to_dict(include_unset=True), **changes})

    def to_dict(self, include_unset: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache": self.kv_cache,
        }
        if self.kv_cache_usage is not None or include_unset:
            data["kv_cache_usage"] = self.kv_cache_usage
        for name in _ADAPTER_LISTS:
            value = getattr(self, name)
            if value is not None or include_unset:
                data[name] = None if value is None else list(value)
        return data

    def adapter_active(self, name: str) -> bool:
        """The adapter is in the engine's batch or queue now."""
        return name in (self.running_lora_adapters or ()) or name in (self.waiting_lora_adapters or ())


_ADAPTER_LISTS = ("running_lora_adapters", "waiting_lora_adapters")


# Field name -> check, for every field a client may send.
_CHECKS = {
    "node_id": validate_node_id,
    "node_type": lambda v: _pattern_field(
        "node_type", v, NODE_TYPE_PATTERN, "must be 1-64 characters of A-Z a-z 0-9 . _ -"
    ),
    "node_address": _address_field,
    "node_port": lambda v: _int_field("node_port", v, 1, 65535),
    "node_status": _status_field,
    "node_info": NodeInfo.validate,
    "remark": _remark_field,
    "timeout": lambda v: _int_field("timeout", v, 1, MAX_TIMEOUT),
    "models": _models_field,
    "adapters": validate_adapters,
}


def validate_changes(payload: Any, *, allow_id: bool) -> dict[str, Any]:
    """Check the fields a client sent; reject unknown ones and a non-object body."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    clean: dict[str, Any] = {}
    for key, value in payload.items():
        check = _CHECKS.get(key)
        if check is None or (key == "node_id" and not allow_id):
            raise ValidationError(key, "unknown field")
        clean[key] = check(value)
    return clean


@dataclass
class Node:
    """A vLLM server known to the balancer. Defaults are the seed's."""

    node_id: str
    node_type: str = "master"
    node_address: str = "0.0.0.0"
    node_port: int = 8000
    node_status: NodeStatus = NodeStatus.OFFLINE
    node_info: NodeInfo = field(default_factory=NodeInfo)
    remark: str = "doc"
    timeout: int = 60
    models: list[str] = field(default_factory=list)
    # LoRA adapters the node serves, with the base model each extends (from
    # vLLM's /v1/models, by the agent or the poller).
    adapters: list[Adapter] = field(default_factory=list)
    create_time: float = 0.0
    update_time: float = 0.0
    # Set by the balancer's poller when /health fails; cleared only by a good
    # poll (a re-registration keeps it). Not a client field.
    probe_failing: bool = False
    # The account that created the node; "" for one created before nvllm
    # recorded owners (only admins may change those). Not a client field.
    owner: str = ""

    @classmethod
    def from_payload(cls, payload: Any, *, now: float) -> Node:
        """A new node from a register request; a missing node_id becomes a UUID."""
        clean = validate_changes(payload, allow_id=True)
        info = NodeInfo(**clean.pop("node_info", {}))
        node_id = clean.pop("node_id", None) or str(uuid.uuid4())
        return cls(node_id=node_id, node_info=info, create_time=now, update_time=now, **clean)

    # --- liveness ---

    @property
    def expires_at(self) -> float:
        return self.update_time + self.timeout

    def alive(self, now: float) -> bool:
        return now - self.update_time <= self.timeout

    def effective_status(self, now: float) -> NodeStatus:
        """An expired node is offline, whatever it last said."""
        return self.node_status if self.alive(now) else NodeStatus.OFFLINE

    def routable(self, now: float) -> bool:
        return self.alive(now) and self.node_status is NodeStatus.ONLINE and not self.probe_failing

    @property
    def url(self) -> str:
        host = self.node_address
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.node_port}"

    def serves(self, model: str | None) -> bool:
        """A node that lists no models is taken to serve any model."""
        return not model or not self.models or model in self.models or self.adapter(model) is not None

    def adapter(self, name: str | None) -> Adapter | None:
        """The node's LoRA adapter of that name, if it has one."""
        return next((a for a in self.adapters if a.id == name), None) if name else None

    # --- conversions ---

    def to_dict(self, now: float, *, include_address: bool = True) -> dict[str, Any]:
        """The API JSON: the seed's fields in the seed's order, plus `models`.
        Without `include_address`, node_address and node_port are left out."""
        data = {
            "node_id": self.node_id,
            "node_type": self.node_type,
            "node_address": self.node_address,
            "node_port": self.node_port,
            "node_status": self.effective_status(now).value,
            "node_info": self.node_info.to_dict(),
            "remark": self.remark,
            "timeout": self.timeout,
            "models": list(self.models),
            "create_time": format_time(self.create_time),
            "update_time": format_time(self.update_time),
        }
        # Only when there are any, so a node without LoRA reads as the seed's.
        if self.adapters:
            data["adapters"] = [a.to_dict() for a in self.adapters]
        if not include_address:
            del data["node_address"], data["node_port"]
        return data

    def to_redis(self) -> dict[str, str]:
        """A flat str -> str hash. node_info is spread over `info:<name>` fields
        so that a heartbeat can merge it field by field inside Redis."""
        mapping = {
            "node_id": self.node_id,
            "node_type": self.node_type,
            "node_address": self.node_address,
            "node_port": str(self.node_port),
            "node_status": self.node_status.value,
            "remark": self.remark,
            "timeout": str(self.timeout),
            "models": json.dumps(self.models),
            "adapters": adapters_to_json(self.adapters),
            "create_time": repr(self.create_time),
            "update_time": repr(self.update_time),
            "probe_failing": "1" if self.probe_failing else "0",
            "owner": self.owner,
        }
        mapping.update(info_to_redis(self.node_info.to_dict()))
        return mapping

    @classmethod
    def from_redis(cls, mapping: dict[str, str]) -> Node:
        """Every field has a default, so a record written by an older nvllm loads."""
        info = NodeInfo()
        for key, value in mapping.items():
            if key.startswith("info:") and value != "":
                name = key[5:]
                if name == "kv_cache_usage":
                    info.kv_cache_usage = float(value)
                elif name in _ADAPTER_LISTS:
                    setattr(info, name, _json_list(value))
                elif name in ("running", "waiting", "kv_cache"):
                    setattr(info, name, int(value))
        try:
            status = NodeStatus(mapping.get("node_status", "offline"))
        except ValueError:
            status = NodeStatus.OFFLINE
        return cls(
            node_id=mapping["node_id"],
            node_type=mapping.get("node_type", "master"),
            node_address=mapping.get("node_address", "0.0.0.0"),
            node_port=int(mapping.get("node_port", 8000)),
            node_status=status,
            node_info=info,
            remark=mapping.get("remark", "doc"),
            timeout=int(mapping.get("timeout", 60)),
            models=json.loads(mapping.get("models", "[]")),
            adapters=adapters_from_json(mapping.get("adapters", "[]")),
            create_time=float(mapping.get("create_time", 0)),
            update_time=float(mapping.get("update_time", 0)),
            probe_failing=mapping.get("probe_failing") == "1",
            owner=mapping.get("owner", ""),
        )


@dataclass(frozen=True)
class Actor:
    """Who asks for a node write: an account, and whether it is an admin (who
    may change any node; others only the nodes they created)."""

    name: str
    admin: bool = False


@dataclass(frozen=True)
class NodeLimits:
    """NVLLM_MAX_NODES and NVLLM_MAX_NODES_PER_ACCOUNT."""

    total: int = 1024
    per_account: int = 256


def info_to_redis(info: dict[str, Any]) -> dict[str, str]:
    """node_info fields as hash fields; an unset optional field is stored as '',
    a list as JSON."""
    return {
        f"info:{k}": "" if v is None else json.dumps(v) if isinstance(v, list) else repr(v)
        for k, v in info.items()
    }


def _json_list(text: str) -> list[str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def changes_to_redis(changes: dict[str, Any]) -> dict[str, str]:
    """Validated update fields as the hash fields they overwrite."""
    mapping: dict[str, str] = {}
    for key, value in changes.items():
        if key == "node_info":
            mapping.update(info_to_redis(value))
        elif key == "models":
            mapping[key] = json.dumps(value)
        elif key == "adapters":
            mapping[key] = adapters_to_json(value)
        elif isinstance(value, NodeStatus):
            mapping[key] = value.value
        else:
            mapping[key] = str(value)
    return mapping

"""Node and NodeInfo: validation of request JSON, API JSON, and the Redis hash."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from model.adapter import (
    MAX_ADAPTERS,
    Adapter,
    adapters_from_json,
    adapters_to_json,
    validate_adapter_names,
    validate_adapters,
)
from model.adapter import MAX_NAME as MAX_ADAPTER_NAME
from model.adapter import MAX_ROOT as MAX_ADAPTER_ROOT
from model.errors import ValidationError
from model.schema import Choice, Custom, Fields, Integer, Items, Number, Text

# A node id becomes part of a Redis key, so it may never hold ':', '*', '?',
# '[' or whitespace (see dao/keys.py). Unanchored: model/schema.py anchors them.
NODE_ID_CHARS = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NODE_TYPE_CHARS = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
HOST_LABEL_PATTERN = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
MAX_REMARK = 256
MAX_MODELS = 64
MAX_MODEL_NAME = 256
MAX_TIMEOUT = 86400
MAX_COUNT = 10**9
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_MODEL_NAME_ERROR = f"each name must be a string of 1-{MAX_MODEL_NAME} chars"


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


def format_time(ts: float) -> str:
    """UTC, second resolution, as the seed shows: 2024-01-01T00:00:00."""
    return datetime.fromtimestamp(ts, UTC).strftime(TIME_FORMAT)


# --- field rules (model/schema.py): each checks a value and describes it ---

NODE_ID = Text(
    NODE_ID_CHARS,
    "must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
    description="The node's id; a UUID when left out on register.",
)


def validate_node_id(value: Any, name: str = "node_id") -> str:
    return NODE_ID.check(name, value)


def _address_field(value: Any) -> str:
    if not isinstance(value, str):
        raise ValidationError("node_address", "must be a string")
    text = value
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


NODE_ADDRESS = Custom(
    _address_field,
    # Every IPv4/IPv6 literal and host name is made of these; the check is finer.
    {"type": "string", "minLength": 1, "maxLength": 254, "pattern": "^[A-Za-z0-9.:-]+$"},
    also="It must be an IPv4 or IPv6 address (no zone) or a DNS host name (labels of 1-63 letters, digits "
    "or inner hyphens, at most 253 characters, the last label not all digits), and resolve to an address "
    "in NVLLM_ALLOWED_NETWORKS (403 otherwise).",
    description="Where the node's vLLM server listens; 0.0.0.0 (the default) means no address yet.",
)

NODE_STATUS = Choice(
    tuple(s.value for s in NodeStatus),
    "draining: no new requests, the running ones finish. An expired node shows as offline.",
)

NODE_INFO = Fields(
    {
        "running": Integer(0, MAX_COUNT, "Requests the node is generating for."),
        "waiting": Integer(0, MAX_COUNT, "Requests queued on the node."),
        "kv_cache": Integer(0, MAX_COUNT, "KV-cache usage (the agent reports whole percent)."),
        "kv_cache_usage": Number(0, 1, nullable=True, description="Fraction of KV-cache blocks in use (vLLM's "
                                 "vllm:kv_cache_usage_perc); null clears it."),
        **{
            name: Custom(
                lambda value, name=name: None if value is None else validate_adapter_names(f"node_info.{name}", value),
                {"type": ["array", "null"], "maxItems": MAX_ADAPTERS,
                 "items": {"type": "string", "minLength": 1, "maxLength": MAX_ADAPTER_NAME}},
                "names may not hold control characters; duplicates are dropped",
                f"LoRA adapters of the requests vLLM {verb} now (vllm:lora_requests_info); null clears it.",
            )
            for name, verb in (("running_lora_adapters", "runs"), ("waiting_lora_adapters", "queues"))
        },
    },
    description="The node's load; an update merges it field by field.",
    type_error="must be an object",
)

# Every field a client may send to register a node (an update: all but node_id).
NODE_FIELDS = Fields(
    {
        "node_id": NODE_ID,
        "node_type": Text(NODE_TYPE_CHARS, "must be 1-64 characters of A-Z a-z 0-9 . _ -",
                          description="master, worker, ..."),
        "node_address": NODE_ADDRESS,
        "node_port": Integer(1, 65535, "The vLLM server's port."),
        "node_status": NODE_STATUS,
        "node_info": NODE_INFO,
        "remark": Text(max_length=MAX_REMARK, description="Free text."),
        "timeout": Integer(1, MAX_TIMEOUT, "Seconds after the last heartbeat at which the node counts as offline."),
        "models": Items(
            Text("[^\\x00-\\x1f]*", "names may not hold control characters", min_length=1,
                 max_length=MAX_MODEL_NAME, type_error=_MODEL_NAME_ERROR, short_error=_MODEL_NAME_ERROR,
                 long_error=_MODEL_NAME_ERROR),
            MAX_MODELS,
            "Models the node serves; [] serves any. Duplicates are dropped.",
            type_error="must be a list of model names",
            count_error=f"must hold at most {MAX_MODELS} names",
        ),
        "adapters": Custom(
            validate_adapters,
            {"type": "array", "maxItems": MAX_ADAPTERS, "items": {
                "type": "object", "required": ["id", "parent"], "additionalProperties": False,
                "properties": {"id": {"type": "string", "minLength": 1, "maxLength": MAX_ADAPTER_NAME},
                               "parent": {"type": "string", "minLength": 1, "maxLength": MAX_ADAPTER_NAME},
                               "root": {"type": "string", "maxLength": MAX_ADAPTER_ROOT}}}},
            "names may not hold control characters; a repeated id keeps its first entry",
            "LoRA adapters the node serves, as vLLM's /v1/models lists them (parent: the base model).",
        ),
    },
    description="A node's fields; every one is optional, with the seed's defaults.",
)
NODE_UPDATE_FIELDS = NODE_FIELDS.without("node_id")

# Query parameters of the node reads: a misspelt filter (?stauts=online) is
# refused, not ignored into a list of every node.
_MODEL_FILTER = Text(description="Only nodes serving this model (a node listing no models serves any).")
NODE_FILTERS = Fields(
    {"status": NODE_STATUS, "model": _MODEL_FILTER, "type": Text(description="Only nodes of this node_type.")},
    unknown_error="unknown query parameter",
)
SELECT_QUERY = Fields({"model": _MODEL_FILTER}, unknown_error="unknown query parameter")


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
        return NODE_INFO.check(prefix, payload)

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


def validate_changes(payload: Any, *, allow_id: bool) -> dict[str, Any]:
    """Check the fields a client sent; reject unknown ones and a non-object body."""
    rules = NODE_FIELDS if allow_id else NODE_UPDATE_FIELDS
    clean = rules.check(None, payload)
    if "node_status" in clean:
        clean["node_status"] = NodeStatus(clean["node_status"])
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

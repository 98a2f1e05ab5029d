"""LoRA adapters as vLLM reports them: model cards with a `parent`, and the
adapters its engine is running or queueing now.

Shared by the agent (its heartbeats), service/probe.py (polling nodes that have
no agent) and the balancer; it imports nothing but the standard library,
model/errors.py and model/schema.py (standard library only), so the agent can carry it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model.errors import ValidationError
from model.schema import Fields, Text

MAX_ADAPTERS = 128  # per node; a node's record must fit the 64 KiB /api body
MAX_NAME = 256
MAX_ROOT = 1024
# vLLM's V1 engine labels this gauge with the adapters of its running and
# waiting requests; each new combination of labels is a new series, and the
# value is when it was last set, so the newest series is the current one.
LORA_INFO = "vllm:lora_requests_info"
RUNNING_LABEL = "running_lora_adapters"
WAITING_LABEL = "waiting_lora_adapters"


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter on a node: its name, the base model it extends, and
    where vLLM loaded it from (vLLM's model card `root`)."""

    id: str
    parent: str
    root: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "parent": self.parent, "root": self.root}


def _name(field: str, value: Any, limit: int = MAX_NAME, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise ValidationError(field, f"must be a string of {'0' if empty else '1'}-{limit} characters")
    if any(ord(ch) < 32 for ch in value):
        raise ValidationError(field, "may not hold control characters")
    return value


def validate_adapters(value: Any) -> list[Adapter]:
    """A node's `adapters` field: a list of {"id", "parent", "root"?}."""
    if not isinstance(value, list):
        raise ValidationError("adapters", "must be a list of {id, parent, root} objects")
    if len(value) > MAX_ADAPTERS:
        raise ValidationError("adapters", f"must hold at most {MAX_ADAPTERS} adapters")
    found: dict[str, Adapter] = {}
    for i, item in enumerate(value):
        where = f"adapters[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(where, "must be an object with id and parent")
        unknown = set(item) - {"id", "parent", "root"}
        if unknown:
            raise ValidationError(f"{where}.{sorted(unknown)[0]}", "unknown field")
        adapter = Adapter(
            id=_name(f"{where}.id", item.get("id")),
            parent=_name(f"{where}.parent", item.get("parent")),
            root=_name(f"{where}.root", item.get("root", ""), MAX_ROOT, empty=True),
        )
        found.setdefault(adapter.id, adapter)
    return list(found.values())


def validate_adapter_names(field: str, value: Any) -> list[str]:
    """node_info's running_lora_adapters / waiting_lora_adapters."""
    if not isinstance(value, list):
        raise ValidationError(field, "must be a list of adapter names")
    if len(value) > MAX_ADAPTERS:
        raise ValidationError(field, f"must hold at most {MAX_ADAPTERS} names")
    return list(dict.fromkeys(_name(field, name) for name in value))


def adapters_to_json(adapters: list[Adapter]) -> str:
    return json.dumps([a.to_dict() for a in adapters])


def adapters_from_json(text: str) -> list[Adapter]:
    """The stored form back; an entry that does not parse is dropped, not fatal."""
    try:
        items = json.loads(text or "[]")
    except ValueError:
        return []
    return [
        Adapter(str(i["id"]), str(i["parent"]), str(i.get("root") or ""))
        for i in items if isinstance(i, dict) and i.get("id") and i.get("parent")
    ] if isinstance(items, list) else []


def parse_model_list(body: bytes | str) -> tuple[list[str], list[Adapter]]:
    """(base model ids, adapters) of a vLLM /v1/models answer: a card with a
    `parent` is a LoRA adapter of that model. Raises ValueError for an answer
    that is not an OpenAI model list."""
    data = json.loads(body)["data"]
    if not isinstance(data, list):
        raise ValueError("data is not a list")
    models: list[str] = []
    adapters: list[Adapter] = []
    for card in data:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str) or not card["id"]:
            continue
        parent = card.get("parent")
        if isinstance(parent, str) and parent:
            root = card.get("root")
            adapters.append(Adapter(card["id"], parent, root if isinstance(root, str) else ""))
        else:
            models.append(card["id"])
    return list(dict.fromkeys(models)), adapters[:MAX_ADAPTERS]


def split_label(value: str) -> list[str]:
    """A comma-separated label value as names ("a,b", "a, b" and "" alike)."""
    return [name.strip() for name in value.split(",") if name.strip()][:MAX_ADAPTERS]


def _name_rule(limit: int, description: str) -> Text:
    """The rule _name applies, as a schema rule: the same checks and errors."""
    error = f"must be a string of 1-{limit} characters"
    return Text(r"[^\x00-\x1f]*", "may not hold control characters", min_length=1, max_length=limit,
                type_error=error, short_error=error, long_error=error, description=description)


_LORA_NAME = _name_rule(MAX_NAME, "The adapter's name, as clients will send it in `model`.")
_BASE_MODEL = _name_rule(MAX_NAME, "The base model: the adapter goes to every live node serving it.")
ADAPTER_LOAD = Fields(
    {"lora_name": _LORA_NAME, "base_model": _BASE_MODEL,
     "lora_path": _name_rule(MAX_ROOT, "Where each node loads it from (a path on the node, as vLLM takes it).")},
    required=("lora_name", "base_model", "lora_path"),
)
ADAPTER_UNLOAD = Fields(
    {"lora_name": _LORA_NAME,
     "base_model": _name_rule(MAX_NAME, "Only on the nodes of this base model (default: every node holding it).")},
    required=("lora_name",),
)


@dataclass(frozen=True)
class AdapterChange:
    """An admin's request to load or unload an adapter on the nodes of a base model."""

    lora_name: str
    base_model: str | None = None
    lora_path: str | None = None

    @classmethod
    def from_payload(cls, payload: Any, *, load: bool) -> AdapterChange:
        """{"lora_name", "base_model", "lora_path"} for a load; an unload needs
        only lora_name (base_model narrows it). Unknown fields are rejected."""
        clean = (ADAPTER_LOAD if load else ADAPTER_UNLOAD).check(None, payload)
        return cls(clean["lora_name"], clean.get("base_model"), clean.get("lora_path"))

    def to_vllm(self) -> dict[str, str]:
        """The body of vLLM's /v1/load_lora_adapter or /v1/unload_lora_adapter."""
        body = {"lora_name": self.lora_name}
        if self.lora_path is not None:
            body["lora_path"] = self.lora_path
        return body

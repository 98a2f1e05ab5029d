"""Rules for request JSON that both check a value and describe it in JSON
Schema. The validators of model/ are built from these, and the OpenAPI
description (api/openapi.py) reads the same objects, so the two cannot drift.

Each rule's `check(name, value)` returns the clean value or raises
ValidationError naming the field; `schema()` is its JSON Schema (2020-12, as
OpenAPI 3.1 uses). A rule whose check is stricter than any JSON Schema can say
(a password's strength, a host name's shape) says so in `also`: the schema is
then a necessary condition, and the sentence is in its description.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from model.errors import ValidationError

INTEGER_NOTE = "a JSON integer written without a fraction or exponent (8000, not 8000.0)"


def _between(low: float, high: float) -> str:
    return f"must be between {low} and {high}"


class Rule:
    """One field's check and its JSON Schema."""

    description: str = ""
    also: str = ""  # what the check enforces beyond the schema

    def check(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        try:
            self.check("value", value)
        except ValidationError:
            return False
        return True

    def documented(self) -> dict[str, Any]:
        """The schema with its description and what the check adds to it."""
        out = self.schema()
        text = " ".join(t for t in (self.description, self.also) if t)
        if text:
            out["description"] = text
        if self.also:
            out["x-nvllm-also"] = self.also
        return out


@dataclass(frozen=True)
class Integer(Rule):
    """An integer in [low, high]. A bool (JSON true) is not one, and neither is
    8000.0: JSON Schema calls that an integer, so the schema says so in words."""

    low: int
    high: int
    description: str = ""
    type_error: str = "must be an integer"
    range_error: str = ""

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(name, self.type_error)
        if not self.low <= value <= self.high:
            raise ValidationError(name, self.range_error or _between(self.low, self.high))
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}

    def documented(self) -> dict[str, Any]:
        out = super().documented()
        out["description"] = " ".join(t for t in (self.description, f"({INTEGER_NOTE})") if t)
        return out


@dataclass(frozen=True)
class Number(Rule):
    """A finite number in [low, high]; null too when `nullable`."""

    low: float
    high: float
    nullable: bool = False
    description: str = ""

    def check(self, name: str, value: Any) -> float | None:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(name, "must be a number")
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise ValidationError(name, _between(self.low, self.high))
        return float(value)

    def schema(self) -> dict[str, Any]:
        kind: Any = ["number", "null"] if self.nullable else "number"
        return {"type": kind, "minimum": self.low, "maximum": self.high}


@dataclass(frozen=True)
class Text(Rule):
    """A string of min_length..max_length characters matching `pattern` (a
    regular expression without anchors, in the common subset of Python's and
    ECMA-262's syntax), then passing `extra` (a function returning why not, or
    None), which only `also` describes."""

    pattern: str | None = None
    rule: str = ""  # the error when the pattern does not match
    min_length: int = 0
    max_length: int | None = None
    description: str = ""
    type_error: str = "must be a string"
    short_error: str = ""
    long_error: str = ""
    extra: Callable[[str], str | None] | None = None
    also: str = ""
    schema_extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # \Z, not $: in Python $ also matches before a trailing newline.
        compiled = re.compile(f"^(?:{self.pattern})\\Z") if self.pattern is not None else None
        object.__setattr__(self, "_compiled", compiled)

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(name, self.type_error)
        if len(value) < self.min_length:
            short = f"must be at least {self.min_length} characters"
            raise ValidationError(name, self.short_error or self.rule or short)
        if self.max_length is not None and len(value) > self.max_length:
            long = f"must be at most {self.max_length} characters"
            raise ValidationError(name, self.long_error or self.rule or long)
        if self._compiled is not None and not self._compiled.match(value):  # type: ignore[attr-defined]
            raise ValidationError(name, self.rule)
        problem = self.extra(value) if self.extra else None
        if problem:
            raise ValidationError(name, problem)
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        if self.min_length:
            out["minLength"] = self.min_length
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if self.pattern is not None:
            out["pattern"] = f"^(?:{self.pattern})$"
        out.update(self.schema_extra)
        return out


@dataclass(frozen=True)
class Boolean(Rule):
    """true or false, nothing else (not 1, not "yes")."""

    description: str = ""
    type_error: str = "must be true or false"

    def check(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(name, self.type_error)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Choice(Rule):
    """One of a few strings."""

    values: tuple[str, ...]
    description: str = ""

    def check(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise ValidationError(name, "must be one of " + ", ".join(self.values))
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True)
class Items(Rule):
    """A list of at most max_items values, each passing `item`; an item's error
    is raised under the list's name. Duplicates are dropped, not refused."""

    item: Rule
    max_items: int
    description: str = ""
    type_error: str = "must be a list"
    count_error: str = ""

    def check(self, name: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValidationError(name, self.type_error)
        if len(value) > self.max_items:
            raise ValidationError(name, self.count_error or f"must hold at most {self.max_items} items")
        return list(dict.fromkeys(self.item.check(name, v) for v in value))

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "maxItems": self.max_items, "items": self.item.documented()}


@dataclass(frozen=True)
class Custom(Rule):
    """A check written as a function, with the JSON Schema it must satisfy
    and a sentence for what it adds (tests hold the two to each other)."""

    function: Callable[[Any], Any]
    json_schema: Mapping[str, Any]
    also: str
    description: str = ""

    def check(self, name: str, value: Any) -> Any:
        return self.function(value)

    def schema(self) -> dict[str, Any]:
        return dict(self.json_schema)


@dataclass(frozen=True)
class Fields(Rule):
    """A JSON object of known fields. Unknown fields are refused first (the
    first in sorted order is named), then each field present is checked in
    the order declared; a missing `required` field is checked as null, so its
    error says what it must be. The error names `prefix.field`, or just
    `field` at the top of a body (whose own errors name `body`)."""

    fields: Mapping[str, Rule]
    required: tuple[str, ...] = ()
    description: str = ""
    type_error: str = "must be a JSON object"
    unknown_error: str = "unknown field"

    def check(self, name: str | None, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValidationError(name or "body", self.type_error)
        unknown = sorted(k for k in value if k not in self.fields)
        if unknown:
            # A name that is empty or odd ("", " ", "a:b") is quoted, so the text still reads.
            key = unknown[0] if re.fullmatch(r"[\w.-]{1,64}", unknown[0]) else repr(unknown[0][:64])
            raise ValidationError(self._name(name, key), self.unknown_error)
        clean: dict[str, Any] = {}
        for key, rule in self.fields.items():
            if key in value or key in self.required:
                clean[key] = rule.check(self._name(name, key), value.get(key))
        return clean

    @staticmethod
    def _name(prefix: str | None, key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def without(self, *names: str) -> Fields:
        """The same object less some fields (an update may not change node_id)."""
        kept = {k: v for k, v in self.fields.items() if k not in names}
        required = tuple(r for r in self.required if r in kept)
        return Fields(kept, required, self.description, self.type_error, self.unknown_error)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {k: r.documented() for k, r in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        return out

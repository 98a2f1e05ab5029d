"""Model aliases: a client-facing model name mapped to a model the fleet serves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from model.errors import ValidationError

# Names as clients send them in `model`: letters, digits and the punctuation
# model names use (Qwen/Qwen2.5-72B-Instruct, gpt-4o, llama3:8b, org/x@v2).
ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}\Z")
MAX_MODEL_NAME = 256
MAX_ALIASES = 1024


@dataclass(frozen=True)
class Alias:
    """`alias` is what clients ask for; `model` what the nodes serve. A listed
    alias appears in GET /v1/models; a hidden one only routes."""

    alias: str
    model: str
    listed: bool = True

    @classmethod
    def from_payload(cls, payload: Any) -> Alias:
        """A set request {"alias", "model", "listed"?}; unknown fields are rejected."""
        if not isinstance(payload, dict):
            raise ValidationError("body", "must be a JSON object")
        for key in payload:
            if key not in ("alias", "model", "listed"):
                raise ValidationError(key, "unknown field")
        alias = validate_alias(payload.get("alias"))
        model = payload.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_NAME:
            raise ValidationError("model", f"must be a model name of 1-{MAX_MODEL_NAME} characters")
        if any(ord(ch) < 32 for ch in model):
            raise ValidationError("model", "may not hold control characters")
        if model == alias:
            raise ValidationError("model", "must differ from the alias")
        listed = payload.get("listed", True)
        if not isinstance(listed, bool):
            raise ValidationError("listed", "must be true or false")
        return cls(alias, model, listed)

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "model": self.model, "listed": self.listed}


def validate_alias(value: Any) -> str:
    if not isinstance(value, str) or not ALIAS_PATTERN.match(value):
        raise ValidationError(
            "alias", "must be 1-256 characters of A-Z a-z 0-9 . _ : / @ + - starting with a letter or digit"
        )
    return value

"""Model aliases: a client-facing model name mapped to a model the fleet serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.errors import ValidationError
from model.schema import Boolean, Fields, Text

# Names as clients send them in `model`: letters, digits and the punctuation
# model names use (Qwen/Qwen2.5-72B-Instruct, gpt-4o, llama3:8b, org/x@v2).
MAX_MODEL_NAME = 256
MAX_ALIASES = 1024
_ALIAS_RULE = "must be 1-256 characters of A-Z a-z 0-9 . _ : / @ + - starting with a letter or digit"
ALIAS_NAME = Text(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}", _ALIAS_RULE, type_error=_ALIAS_RULE,
                  description="The model name clients send.")
_MODEL_RULE = f"must be a model name of 1-{MAX_MODEL_NAME} characters"
SERVED_MODEL = Text(r"[^\x00-\x1f]*", "may not hold control characters", min_length=1, max_length=MAX_MODEL_NAME,
                    type_error=_MODEL_RULE, short_error=_MODEL_RULE, long_error=_MODEL_RULE,
                    description="The served model (or adapter) it stands for; not the alias itself.")
ALIAS_SET = Fields(
    {"alias": ALIAS_NAME, "model": SERVED_MODEL,
     "listed": Boolean(description="Shown in GET /v1/models (default true); a hidden alias still routes.")},
    required=("alias", "model"),
)


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
        clean = ALIAS_SET.check(None, payload)
        if clean["model"] == clean["alias"]:
            raise ValidationError("model", "must differ from the alias")
        return cls(clean["alias"], clean["model"], clean.get("listed", True))

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "model": self.model, "listed": self.listed}


def validate_alias(value: Any) -> str:
    return ALIAS_NAME.check("alias", value)

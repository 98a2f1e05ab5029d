"""OpenAI/vLLM wire shapes: request parsing, response bodies, SSE chunks and error JSON."""

from __future__ import annotations

import base64
import json
import random
import struct
import uuid
import zlib
from functools import lru_cache
from typing import Any

from fakevllm.engine import tokenize

FILLER = (
    "the quick brown fox jumps over a lazy dog while seven bright stars shine above "
    "quiet hills and rivers run toward distant silver seas"
).split()


class BadRequest(ValueError):
    """A request vLLM would refuse with 400."""


def dumps(obj: Any) -> bytes:
    # Compact separators, as Starlette's JSONResponse and pydantic emit.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": err_type, "param": param, "code": code}})


def token_text(i: int, chat: bool) -> str:
    word = FILLER[i % len(FILLER)]
    return word if chat and i == 0 else " " + word


@lru_cache(maxsize=256)
def filler_text(n: int, chat: bool) -> str:
    return "".join(token_text(i, chat) for i in range(n))


def model_permission(created: int) -> dict[str, Any]:
    return {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False}


def render_chat(messages: Any) -> list[str]:
    """Flatten messages with a minimal chat template and tokenize them."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    parts = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object")
        content = msg.get("content") or ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|{msg.get('role', 'user')}|>\n{content}\n")
    parts.append("<|assistant|>\n")
    return tokenize("".join(parts))


def prompt_list(prompt: Any, field: str = "prompt") -> list[list[Any]]:
    """Token lists for a str, list[str], list[int] or list[list[int]] prompt."""
    if isinstance(prompt, str):
        return [tokenize(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [tokenize(p) for p in prompt]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise BadRequest(f"'{field}' must be a string, a list of strings or a list of token ids")


def max_tokens(body: dict[str, Any], default: int) -> int:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {value}.")
    return value


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def stream_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, created: int, model: str, texts: list[str], prompt_tokens: int,
                  completion_tokens: int) -> dict[str, Any]:
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                        "audio": None, "function_call": None, "tool_calls": [], "reasoning": None},
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        for i, text in enumerate(texts)
    ]
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "service_tier": None, "system_fingerprint": None,
            "usage": usage(prompt_tokens, completion_tokens), "prompt_logprobs": None,
            "kv_transfer_params": None}


def completion_response(rid: str, created: int, model: str, texts: list[str], prompt_tokens: int,
                        completion_tokens: int) -> dict[str, Any]:
    choices = [
        {"index": i, "text": text, "logprobs": None, "finish_reason": "length",
         "stop_reason": None, "prompt_logprobs": None}
        for i, text in enumerate(texts)
    ]
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
            "kv_transfer_params": None}


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Builds the SSE chunks of one streamed chat or text completion."""

    def __init__(self, rid: str, created: int, model: str, chat: bool, usage_every: bool) -> None:
        self.head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": model}
        self.chat = chat
        self.usage_every = usage_every

    def _chunk(self, choices: list[dict[str, Any]], used: dict[str, int] | None) -> bytes:
        chunk: dict[str, Any] = {**self.head, "choices": choices}
        if used is not None:
            chunk["usage"] = used
        return sse(chunk)

    def role(self, index: int, prompt_tokens: int) -> bytes:
        choice = {"index": index, "delta": {"role": "assistant", "content": ""},
                  "logprobs": None, "finish_reason": None}
        used = stream_usage(prompt_tokens, 0) if self.usage_every else None
        return self._chunk([choice], used)

    def token(self, index: int, i: int, last: bool, prompt_tokens: int) -> bytes:
        text = token_text(i, self.chat)
        choice: dict[str, Any] = (
            {"index": index, "delta": {"content": text}} if self.chat else {"index": index, "text": text}
        )
        choice["logprobs"] = None
        choice["finish_reason"] = "length" if last else None
        if last or not self.chat:
            choice["stop_reason"] = None
        used = stream_usage(prompt_tokens, i + 1) if self.usage_every else None
        return self._chunk([choice], used)

    def final_usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._chunk([], stream_usage(prompt_tokens, completion_tokens))


def embedding(tokens: list[Any], dim: int) -> list[float]:
    """A deterministic unit vector derived from the input tokens."""
    rng = random.Random(zlib.crc32(repr(tokens).encode()))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def embeddings_response(rid: str, created: int, model: str, vectors: list[list[float]],
                        prompt_tokens: int, encoding: str) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(vectors):
        value: Any = vec
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"index": i, "object": "embedding", "embedding": value})
    return {"id": rid, "object": "list", "created": created, "model": model, "data": data,
            "usage": usage(prompt_tokens, 0)}

"""What routing needs of a request, read from its JSON body."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

BLOCK_CHARS = 256  # prompt characters per prefix block (~64 tokens)
MAX_BLOCKS = 64  # hash at most the first 16K characters
DEFAULT_OUT_TOKENS = 256  # when the body sets no max_tokens
MAX_OUT_TOKENS = 8192
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class RouteRequest:
    """Read by the policies, never written: what they decide is a Decision."""

    model: str | None = None
    blocks: list[bytes] = field(default_factory=list)  # chained prefix hashes
    prompt_chars: int = 0
    out_tokens: int = DEFAULT_OUT_TOKENS
    # The client's own name for the conversation or cache it belongs to, when
    # it gives one: OpenAI's `prompt_cache_key`, else the X-Session-ID header,
    # else `user`. A hint beside prefix matching, never instead of it.
    session: str | None = None

    @property
    def prompt_tokens(self) -> float:
        return self.prompt_chars / CHARS_PER_TOKEN


def prompt_text(body: dict[str, Any]) -> str:
    """The text a prefix cache would see first: chat messages, prompt or input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p.get("text", "") for p in content if isinstance(p, dict)
                )
            parts.append(f"{message.get('role', '')}:{content if isinstance(content, str) else ''}\n")
        return "".join(parts)
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return value[0]
    return ""


def prefix_blocks(text: str) -> list[bytes]:
    """Chained hashes of whole blocks: block k's hash covers blocks 0..k."""
    blocks = []
    digest = b""
    encoded = text[: BLOCK_CHARS * MAX_BLOCKS]
    for start in range(0, len(encoded) - BLOCK_CHARS + 1, BLOCK_CHARS):
        chunk = encoded[start : start + BLOCK_CHARS].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + chunk, digest_size=8).digest()
        blocks.append(digest)
    return blocks


def out_tokens(body: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, MAX_OUT_TOKENS)
    return DEFAULT_OUT_TOKENS


MAX_SESSION_CHARS = 256


def session_hint(body: dict[str, Any], header: str | None = None) -> str | None:
    """The most specific name a client gave for the conversation: a cache key
    names one conversation (or one shared prompt), a session header one chat,
    a user many chats."""
    for kind, value in (("cache", body.get("prompt_cache_key")), ("session", header), ("user", body.get("user"))):
        if isinstance(value, str) and value:
            return f"{kind}:{value[:MAX_SESSION_CHARS]}"
    return None


def route_request(body: dict[str, Any], session_header: str | None = None) -> RouteRequest:
    model = body.get("model")
    text = prompt_text(body)
    return RouteRequest(
        model=model if isinstance(model, str) else None,
        blocks=prefix_blocks(text),
        prompt_chars=len(text),
        out_tokens=out_tokens(body),
        session=session_hint(body, session_header),
    )

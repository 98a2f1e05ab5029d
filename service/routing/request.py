"""What routing knows of a request: read once by service/shape.py, then only read."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # else `user` (or Anthropic's metadata.user_id). A hint beside prefix
    # matching, never instead of it.
    session: str | None = None
    # Only this node may serve it: it holds the stored response the request names.
    pinned_node: str | None = None

    @property
    def prompt_tokens(self) -> float:
        return self.prompt_chars / CHARS_PER_TOKEN

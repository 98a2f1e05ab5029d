"""Every client route nvllm forwards to a node, and what it never forwards:
one list, read by the views (which paths exist), the request shaper (how each
is routed) and the README's table."""

from __future__ import annotations

from dataclasses import dataclass

from model.errors import Forbidden, MethodNotAllowed, NotFound

POST = frozenset({"POST"})
GET = frozenset({"GET"})
# What a path under /v1 that is not in the table may be called with: vLLM keeps
# adding routes, and a client of a newer one must not find nvllm in the way.
PASSTHROUGH_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Route:
    """One forwarded route. `{response_id}` in a path stands for one segment:
    the id of a stored response, which pins the request to the node holding it."""

    path: str
    methods: frozenset[str]
    # Its answer is generated token by token, holding a batch slot for it;
    # embeddings, scores and tokenizer calls hold one only for their prefill.
    generates: bool = True
    anthropic: bool = False  # the Anthropic Messages API: its errors in Anthropic's shape
    creates_response: bool = False  # its answer names a stored response to remember (Responses API)
    # How a stream's tokens show, for routing's first-token and per-token
    # measures: each occurrence of `token_event` is about one token, and the
    # `first_token_event`-th is the first token. Chat sends its role first;
    # the Anthropic and Responses streams send several events before any text.
    token_event: bytes = b"data:"
    first_token_event: int = 2

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/"))


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", POST),
    Route("/v1/completions", POST, first_token_event=1),
    Route("/v1/embeddings", POST, generates=False),
    Route("/v1/responses", POST, creates_response=True, token_event=b"event: response.output_text.delta",
          first_token_event=1),
    # DELETE: OpenAI's SDK has it; the node holding the response answers for it.
    Route("/v1/responses/{response_id}", frozenset({"GET", "DELETE"})),
    Route("/v1/responses/{response_id}/cancel", POST),
    Route("/v1/responses/{response_id}/input_items", GET),
    Route("/v1/audio/transcriptions", POST),
    Route("/v1/audio/translations", POST),
    Route("/v1/messages", POST, anthropic=True, token_event=b"event: content_block_delta", first_token_event=1),
    Route("/v1/messages/count_tokens", POST, generates=False, anthropic=True),
    Route("/v1/rerank", POST, generates=False),
    Route("/rerank", POST, generates=False),
    Route("/v2/rerank", POST, generates=False),
    Route("/v2/embed", POST, generates=False),
    Route("/score", POST, generates=False),
    Route("/v1/score", POST, generates=False),
    Route("/classify", POST, generates=False),
    Route("/pooling", POST, generates=False),
    Route("/tokenize", POST, generates=False),
    Route("/detokenize", POST, generates=False),
    Route("/invocations", POST),
)

# vLLM's control endpoints: they change or stop the server for every client
# (many answer without the --api-key), so no client reaches them through nvllm.
# Those outside /v1 have no route in nvllm at all; these are under /v1, where
# everything else passes through, so they are refused by name.
CONTROL_V1 = frozenset({"load_lora_adapter", "unload_lora_adapter"})
CONTROL_ROOT = (
    "/pause", "/resume", "/is_paused", "/sleep", "/wake_up", "/is_sleeping", "/update_weights",
    "/collective_rpc", "/reset_prefix_cache", "/reset_mm_cache", "/start_profile", "/stop_profile",
    "/scale_elastic_ep", "/is_scaling_elastic_ep", "/server_info",
)

def root_paths() -> list[tuple[str, frozenset[str]]]:
    """(path, methods) of the forwarded routes outside /v1: each needs a view of its own."""
    return [(r.path, r.methods) for r in ROUTES if not r.path.startswith("/v1/")]


def resolve(method: str, path: str) -> Route:
    """The route a checked path (no query) is forwarded as: its table entry, or
    a pass-through one for any other path under /v1. Raises MethodNotAllowed
    (with the methods the path takes), Forbidden (a control endpoint) or NotFound."""
    segments = tuple(path[1:].split("/"))
    for route in ROUTES:
        if _matches(route.segments, segments):
            if method not in route.methods:
                raise MethodNotAllowed(method, route.methods)
            return route
    if segments[0] != "v1" or len(segments) < 2:
        raise NotFound(f"path {path!r} is not a route of nvllm")
    if segments[1] in CONTROL_V1:
        raise Forbidden(f"{path} is a vLLM control endpoint: nvllm never forwards it for a client")
    if method not in PASSTHROUGH_METHODS:
        raise MethodNotAllowed(method, PASSTHROUGH_METHODS)
    return Route(path, PASSTHROUGH_METHODS)


def response_id_in_path(path: str) -> str | None:
    """The stored response a path names (/v1/responses/{id}, and anything below
    it, whichever the method): such a request must reach the node holding it."""
    segments = path[1:].split("/")
    if len(segments) >= 3 and segments[0] == "v1" and segments[1] == "responses":
        return segments[2]
    return None


def is_anthropic(path: str) -> bool:
    """Errors on this path go out in Anthropic's shape (what its SDK parses)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def is_forwarded(path: str) -> bool:
    """A client path of the OpenAI-compatible surface: its errors go out in OpenAI's shape."""
    return path.startswith("/v1/") or path == "/v1" or any(path == p for p, _ in root_paths())


def label(path: str) -> str | None:
    """A forwarded path as metrics name it: its route's pattern
    (/v1/responses/{response_id}), "/v1/models", or "other" for any other /v1
    path (clients choose those, so they must not make series of their own);
    None for a path nvllm does not forward."""
    if path == "/v1/models":
        return path
    segments = tuple(path[1:].split("/"))
    for route in ROUTES:
        if _matches(route.segments, segments):
            return route.path
    return "other" if path.startswith("/v1/") else None


def _matches(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    return len(pattern) == len(segments) and all(
        p == s or (p.startswith("{") and p.endswith("}")) for p, s in zip(pattern, segments, strict=True)
    )

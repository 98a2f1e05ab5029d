"""What routing needs of a client's request, read once at the door: its model,
prompt, token estimates, stream flag, session and affinity keys, and the body
as it came, re-sent whole on every retry. JSON, multipart/form-data (audio
uploads: only the small fields are read, never the file) and bodiless
requests; routing code never parses a body."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from email.message import Message
from typing import Any

from model.errors import BadRequest
from service import routes
from service.routing.request import BLOCK_CHARS, DEFAULT_OUT_TOKENS, MAX_BLOCKS, MAX_OUT_TOKENS, RouteRequest

# What a route that generates nothing (embeddings, scores, tokenizer calls)
# holds a batch slot for, in tokens: its prefill, then one step.
NO_GENERATION_TOKENS = 1
# Response ids become part of a Redis key: vLLM's and OpenAI's are resp_<hex>.
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
FORM_FIELDS = frozenset({"model", "stream"})
MAX_FORM_VALUE = 1024  # bytes of a small form field read; a model name is far shorter
MAX_SESSION_CHARS = 256
DELIMITER_END = re.compile(rb"[ \t]*\r\n")  # after a boundary that starts a part: padding, then the line's end
# Content-Type headers already parsed: a client sends the same one with every
# request, and the email package's parser is slow. Bounded: cleared when full.
_MEDIA_TYPES: dict[str, tuple[str, str | None]] = {}
MAX_MEDIA_TYPES = 256


@dataclass
class Shaped:
    """A client request ready to forward."""

    method: str
    target: str  # path and query, as sent to the node
    body: bytes | None  # exactly what the client sent; None: no body
    route: RouteRequest
    stream: bool
    anthropic: bool = False
    response_id: str | None = None  # a stored response the request must reach
    creates_response: bool = False  # the answer names a response to remember
    # What was read of the body: a JSON object (`is_json`: re-encodable, e.g. to
    # rename its model), or a form's small fields; {} for anything else.
    fields: dict[str, Any] = field(default_factory=dict)
    is_json: bool = False
    boundary: bytes | None = None  # a multipart body's, to rewrite one of its fields
    token_event: bytes = b"data:"  # see routes.Route
    first_token_event: int = 2


def shape_request(
    method: str, path: str, query: str, content_type: str | None, body: bytes, headers: Mapping[str, str]
) -> Shaped:
    """A checked path (no query), its checked query string, and the request's
    Content-Type, whole body and headers, shaped for routing. Raises
    BadRequest naming what is wrong, or what routes.resolve raises."""
    route = routes.resolve(method, path)
    mimetype, boundary = _media_type(content_type)
    fields = _fields(mimetype, boundary, body)
    is_form = mimetype == "multipart/form-data"
    is_json = not is_form and bool(fields)
    request = route_request(fields, headers.get("X-Session-ID"), generates=route.generates)
    response_id = routes.response_id_in_path(path)
    where = "path"
    if response_id is None and route.creates_response and fields.get("previous_response_id") is not None:
        response_id, where = fields["previous_response_id"], "previous_response_id"
    if response_id is not None:
        if not isinstance(response_id, str) or not RESPONSE_ID.fullmatch(response_id):
            raise BadRequest(f"{where}: not a response id (1-128 of A-Za-z0-9_-)")
        # The node holding the response answers for it, whatever model it names.
        request = replace(request, model=None)
    return Shaped(
        method=method,
        target=path + (f"?{query}" if query else ""),
        body=body if body or method not in ("GET", "DELETE", "HEAD") else None,
        route=request,
        stream=_stream(fields, query),
        anthropic=route.anthropic,
        response_id=response_id,
        creates_response=route.creates_response,
        fields=fields,
        is_json=is_json,
        boundary=boundary.encode("latin-1") if is_form and boundary else None,
        token_event=route.token_event,
        first_token_event=route.first_token_event,
    )


def route_request(body: dict[str, Any], session_header: str | None = None, *, generates: bool = True) -> RouteRequest:
    """The model, prompt blocks, token estimates and session hint of a request
    body (and its X-Session-ID header)."""
    model = body.get("model")
    text = prompt_text(body)
    return RouteRequest(
        model=model if isinstance(model, str) and model else None,
        blocks=prefix_blocks(text),
        prompt_chars=len(text),
        out_tokens=out_tokens(body) if generates else NO_GENERATION_TOKENS,
        session=session_hint(body, session_header),
    )


def session_hint(body: dict[str, Any], header: str | None = None) -> str | None:
    """The most specific name a client gave for the conversation: a cache key
    names one conversation (or one shared prompt), a session header one chat,
    a user many chats (OpenAI's `user` or `safety_identifier`, Anthropic's
    metadata.user_id)."""
    metadata = body.get("metadata")
    anthropic_user = metadata.get("user_id") if isinstance(metadata, dict) else None
    for kind, value in (("cache", body.get("prompt_cache_key")), ("session", header), ("user", body.get("user")),
                        ("user", body.get("safety_identifier")), ("user", anthropic_user)):
        if isinstance(value, str) and value:
            return f"{kind}:{value[:MAX_SESSION_CHARS]}"
    return None


def prompt_text(body: dict[str, Any]) -> str:
    """The text a prefix cache would see first: the system prompt (Anthropic's
    `system`, the Responses API's `instructions`), then chat messages (or a
    Responses input list), or the prompt, input or query."""
    parts = []
    for key in ("system", "instructions"):
        system = _text_of(body.get(key))
        if system:
            parts.append(f"system:{system}\n")
    messages = body.get("messages")
    if not isinstance(messages, list):
        items = body.get("input")
        messages = items if isinstance(items, list) and items and isinstance(items[0], dict) else None
    if messages is not None:
        for message in messages:
            if isinstance(message, dict):
                parts.append(f"{message.get('role', '')}:{_text_of(message.get('content'))}\n")
        return "".join(parts)
    for key in ("prompt", "input", "query", "text_1", "queries", "text"):
        value = body.get(key)
        if isinstance(value, str):
            return "".join(parts) + value
        if isinstance(value, list) and value and isinstance(value[0], str):
            return "".join(parts) + value[0]
    return "".join(parts)


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
    """The most tokens the answer may have: chat's, the Responses API's and Anthropic's names for it."""
    for key in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return min(value, MAX_OUT_TOKENS)
    return DEFAULT_OUT_TOKENS


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text of its parts (OpenAI's and Anthropic's content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    """(mimetype, multipart boundary) of a Content-Type header."""
    if not content_type:
        return "", None
    known = _MEDIA_TYPES.get(content_type)
    if known is not None:
        return known
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    parsed = header.get_content_type(), boundary if isinstance(boundary, str) else None
    # A multipart boundary is per request: remembering it would only fill the table.
    if parsed[1] is None:
        if len(_MEDIA_TYPES) >= MAX_MEDIA_TYPES:
            _MEDIA_TYPES.clear()
        _MEDIA_TYPES[content_type] = parsed
    return parsed


def _fields(mimetype: str, boundary: str | None, body: bytes) -> dict[str, Any]:
    """What routing reads of the body: a JSON object, or a form's small fields."""
    if mimetype == "multipart/form-data":
        if not boundary:
            raise BadRequest("multipart/form-data body: the Content-Type names no boundary")
        return form_fields(body, boundary.encode("latin-1"), FORM_FIELDS)
    if not body:
        return {}
    json_type = mimetype in ("", "application/json") or mimetype.endswith("+json")
    try:
        payload = json.loads(body)
    # RecursionError: nesting deep enough to exhaust the parser, e.g. "[[[[...".
    except (ValueError, UnicodeDecodeError, RecursionError):
        if json_type:
            raise BadRequest("request body must be valid JSON") from None
        return {}  # a body of another type goes as it came, routed by nothing in it
    if not isinstance(payload, dict):
        if json_type:
            raise BadRequest("request body must be a JSON object")
        return {}
    return payload


def form_fields(body: bytes, boundary: bytes, names: frozenset[str]) -> dict[str, str]:
    """The values of the named small fields of a multipart/form-data body
    (RFC 7578). File parts are skipped, never decoded: only their headers are
    read. Raises BadRequest for a body that is not well framed, or that names
    one of these fields twice (nodes differ on which one wins, so routing by
    one could send the request where the other is not served)."""
    found: dict[str, str] = {}
    for name, is_file, start, end in _form_parts(body, boundary):
        if name in names and not is_file:
            if name in found:
                raise BadRequest(f"multipart/form-data body: more than one {name!r} field")
            found[name] = body[start : min(end, start + MAX_FORM_VALUE)].decode("utf-8", "replace")
    return found


def with_form_field(body: bytes, boundary: bytes, name: str, value: str) -> bytes:
    """The multipart/form-data body with the content of its field `name` (the
    one form_fields read: not a file) replaced by `value`; every other byte
    as it came, the file parts included. A body without that field comes
    back unchanged. `value` holds no control characters (a served model
    name), so it cannot end its part early."""
    for part, is_file, start, end in _form_parts(body, boundary):
        if part == name and not is_file:
            return body[:start] + value.encode("utf-8") + body[end:]
    return body


def _form_parts(body: bytes, boundary: bytes) -> Iterator[tuple[str | None, bool, int, int]]:
    """(field name, is a file, where its content starts, where it ends) of
    each part. Raises BadRequest for a body that is not well framed."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter) and _ends_delimiter(body, len(delimiter)):
        start = 0
    else:  # a preamble, then the first delimiter line
        start = _next_delimiter(body, delimiter, 0)
        if start < 0:
            raise BadRequest("multipart/form-data body: no part starts with the boundary")
        start += 2
    pos = start + len(delimiter)
    while not body.startswith(b"--", pos):
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise BadRequest("multipart/form-data body: a part's headers do not end")
        end = _next_delimiter(body, delimiter, head_end)
        if end < 0:
            raise BadRequest("multipart/form-data body: it does not end with the boundary")
        name, is_file = _disposition(body[pos:head_end].decode("latin-1"))
        yield name, is_file, head_end + 4, end
        pos = end + 2 + len(delimiter)


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> int:
    """Where the next delimiter line begins (its CRLF), at or after `start`;
    -1 when there is none. As RFC 2046 has it (and the nodes' parsers read
    it), `--boundary` ends a part only when followed by `--` or by optional
    blanks and CRLF: a file holding `--boundary-x` is not cut there."""
    marker = b"\r\n" + delimiter
    at = body.find(marker, start)
    while at >= 0 and not _ends_delimiter(body, at + len(marker)):
        at = body.find(marker, at + 1)
    return at


def _ends_delimiter(body: bytes, pos: int) -> bool:
    return body.startswith(b"--", pos) or DELIMITER_END.match(body, pos) is not None


def _disposition(headers: str) -> tuple[str | None, bool]:
    """(field name, is a file) from a part's Content-Disposition."""
    for line in headers.strip().split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            header = Message()
            header["content-disposition"] = value.strip()
            name = header.get_param("name", header="content-disposition")
            filename = header.get_param("filename", header="content-disposition")
            return (name if isinstance(name, str) else None), filename is not None
    return None, False


def _stream(fields: dict[str, Any], query: str) -> bool:
    value = fields.get("stream")
    if isinstance(value, str):  # a form field, or retrieve's ?stream=true
        return value.strip().lower() in ("true", "1")
    if value is True:
        return True
    return any(pair in ("stream=true", "stream=True", "stream=1") for pair in query.split("&"))


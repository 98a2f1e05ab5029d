"""The OpenAPI 3.1 description of every route, built from the app itself: its
URL map (so no route is left out), the role each view's require_role enforces,
and the rules of model/ that check request bodies and parameters (so what is
described is what is validated). Served at /openapi.json by api/docs.py."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

from model.adapter import ADAPTER_LOAD, ADAPTER_UNLOAD
from model.alias import ALIAS_NAME, ALIAS_SET
from model.node import NODE_FIELDS, NODE_FILTERS, NODE_ID, NODE_INFO, NODE_UPDATE_FIELDS, SELECT_QUERY
from model.schema import Fields, Rule, Text
from model.user import JTI, LOGIN, NEW_USER, ROLE, TOKEN_REQUEST, USER_CHANGES, USERNAME, Role
from service import routes
from service.routes import Route
from service.shape import RESPONSE_ID

OPENAPI_VERSION = "3.1.0"
PARAMETER = r"<(?:[^:<>]+:)?([^<>]+)>"  # a werkzeug rule's <converter:name>
JSON = "application/json"
BEARER = [{"bearer": []}]

# What each status means on nvllm's own answers (README, "API reference").
ERRORS = {
    400: "Malformed JSON, a wrong type, an out-of-range value or an unknown field; the text names it.",
    401: "No, bad, expired or revoked token (WWW-Authenticate: Bearer).",
    403: "Your role may not do this, or the address is not allowed.",
    404: "Unknown node, user or route.",
    409: "Conflict: the user exists, the last admin cannot go, or a node limit is reached.",
    413: "Request body too large.",
    429: "Too many requests; see Retry-After.",
    500: "Unexpected; a generic text, the details are in the log under the trace id.",
    502: "Every node tried failed before answering.",
    503: "Storage unreachable, or no routable node; see Retry-After.",
}
API_ERRORS = (400, 413, 500, 503)  # any /api route may answer these
AUTH_ERRORS = (401, 403)

TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$",
        "description": "UTC, to the second: 2024-01-01T00:00:00."}
TRACE_ID = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}


def envelope(data: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's success envelope around `data`; the HTTP status equals code."""
    return {
        "type": "object",
        "properties": {
            "message": {"const": "success"},
            "status": {"const": "success"},
            "code": {"const": 200},
            "data": dict(data),
            "trace_id": TRACE_ID,
        },
        "required": ["message", "status", "code", "data", "trace_id"],
        "additionalProperties": False,
    }


ERROR_ENVELOPE = {
    "type": "object",
    "description": "The seed's error envelope: `error` names what was wrong; the HTTP status equals code.",
    "properties": {
        "message": {"const": "error"},
        "status": {"const": "error"},
        "code": {"type": "integer", "minimum": 400, "maximum": 599},
        "error": {"type": "string", "minLength": 1},
        "trace_id": TRACE_ID,
    },
    "required": ["message", "status", "code", "error", "trace_id"],
    "additionalProperties": False,
}
OPENAI_ERROR = {
    "type": "object",
    "description": "OpenAI's error shape, so OpenAI SDKs report nvllm's /v1 errors well.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string"},
                "code": {"type": "integer"},
            },
            "required": ["message", "type", "code"],
        }
    },
    "required": ["error"],
}
ANTHROPIC_ERROR = {
    "type": "object",
    "description": "Anthropic's error shape, so the Anthropic SDK reports nvllm's /v1/messages errors well.",
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string", "minLength": 1}},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}


def _obj(properties: Mapping[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    out = {"type": "object", "properties": dict(properties), "required": required or list(properties)}
    out.update(extra)
    return out


# --- what the routes answer (built from the request rules where they overlap) ---

_node_fields = {k: r.documented() for k, r in NODE_FIELDS.fields.items()}
_node_fields["node_info"] = _obj(
    {k: r.documented() for k, r in NODE_INFO.fields.items()}, ["running", "waiting", "kv_cache"]
)
NODE = _obj(
    {**_node_fields, "create_time": TIME, "update_time": TIME},
    # adapters: listed only when the node has some.
    [k for k in (*NODE_FIELDS.fields, "create_time", "update_time")
     if k not in ("node_address", "node_port", "adapters")],
    description="A node. The user role sees no node_address and node_port.",
)
NODE_STATUS_DATA = {
    **NODE,
    "properties": {
        **NODE["properties"],
        "alive": {"type": "boolean", "description": "now - update_time <= timeout"},
        "seconds_since_update": {"type": "number", "minimum": 0},
        "routable": {"type": "boolean", "description": "alive, online, not ejected, not failing polls"},
        "probe_failing": {"type": "boolean"},
        "inflight": {"type": "integer", "minimum": 0, "description": "requests in flight, from every instance"},
        "owner": {"type": ["string", "null"], "description": "the account that registered it (admins only)"},
    },
    "required": [*NODE["required"], "alive", "seconds_since_update", "routable", "probe_failing", "inflight"],
}
SELECTED = {
    **NODE,
    "properties": {
        **NODE["properties"],
        "url": {"type": "string", "description": "workers and admins only"},
        "reason": {"type": "string", "description": "why this node: policy, affinity depth, cost"},
    },
    "required": [*NODE["required"], "reason"],
}
_rate = {"type": "number", "minimum": 0}
_seconds = {"type": ["number", "null"], "minimum": 0, "description": "seconds; null without streamed answers"}
_count = {"type": "integer", "minimum": 0}
STATS = _obj(
    {"requests_per_s": _rate, "errors_per_s": _rate, "tokens_per_s": _rate, "ttft_p50": _seconds,
     "ttft_p99": _seconds, "requests_1m": _count, "errors_1m": _count, "output_tokens_1m": _count},
    description="Rates over the last 10 s; tokens/s and time to first token over the last minute; counted "
    "by every nvllm worker and instance together.",
)
FLEET_STATS = _obj(
    {
        "window": _obj({"bucket_seconds": _count, "rate_seconds": _count, "minute_seconds": _count,
                        "until": {"type": "integer"}}),
        "totals": _obj({name: _count for name in ("nodes", "alive", "routable", "draining", "running", "waiting",
                                                  "inflight", "instances")} | {"stats": STATS}),
        "nodes": {"type": "array", "items": {
            **NODE_STATUS_DATA,
            "properties": {**NODE_STATUS_DATA["properties"], "stats": STATS, "ejected_by": {
                **_count, "description": "how many nvllm workers have it out of rotation after failures"}},
            # A node lists adapters only when it has some.
            "required": [*(k for k in NODE_STATUS_DATA["required"] if k != "adapters"), "ejected_by", "stats"],
        }},
        "models": {"type": "array", "items": _obj({"model": {"type": "string"}, "nodes": _count,
                                                   "routable": _count, "stats": STATS})},
        "aliases": {"type": "array", "description": "Model aliases, sorted; the user role sees only listed ones.",
                    "items": _obj({**{k: r.documented() for k, r in ALIAS_SET.fields.items()}, "routable": {
                        **_count, "description": "routable nodes serving the model it stands for"}})},
        "series": {"type": "array", "items": _obj({"t": {"type": "integer"}, "requests": _count, "errors": _count,
                                                   "tokens": _count})},
    }
)
USER = _obj({"username": USERNAME.documented(), "role": ROLE.documented(), "create_time": TIME})
TOKEN = _obj({"token": {"type": "string"}, "expires_in": {"type": "integer"}, "role": ROLE.documented()})
MINTED = _obj({**TOKEN["properties"], "jti": JTI.documented()})
STATUS_TEXT = _obj({"status": {"type": "string"}})
MODEL_LIST = _obj(
    {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": _obj({"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                           "owned_by": {"type": "string"},
                           "root": {"type": "string", "description": "a base model's own name, where vLLM loaded "
                                    "an adapter from, or the model an alias stands for"},
                           "parent": {"type": ["string", "null"], "description": "an adapter's base model"}}),
        },
    }
)
ALIAS = _obj({k: r.documented() for k, r in ALIAS_SET.fields.items()})
_node_ids = {"type": "array", "items": NODE_ID.documented()}
ADAPTER = _obj({"id": {"type": "string"}, "parent": {"type": "string"}, "root": {"type": "string"},
                "nodes": _node_ids, "active_on": {**_node_ids, "description": "where vLLM runs or queues it now"}})
ADAPTER_RESULT = _obj(
    {
        "lora_name": {"type": "string"},
        "base_model": {"type": ["string", "null"]},
        "ok": {"type": "boolean", "description": "every node took the change"},
        "nodes": {"type": "array", "items": _obj({
            "node_id": NODE_ID.documented(), "ok": {"type": "boolean"},
            "status": {"type": "integer", "description": "the node's HTTP status; 0: no connection"},
            "message": {"type": "string", "description": "the node's answer, shortened"}})},
    }
)
FORWARDED_BODY = {
    "type": "object",
    "description": "Any OpenAI-compatible request body; `model` picks the nodes that may serve it, `stream` "
    "asks for server-sent events, `max_tokens` (or max_completion_tokens) and the prompt feed the routing.",
    "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"},
                   "max_tokens": {"type": "integer"}},
}
# One path segment as a node's router reads it (service/paths.py allows a few
# more characters; these need no percent-encoding, which nvllm refuses).
SEGMENT = Text(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", "", description="The path under /v1, one or more segments.")

# Path parameters, by the name the routes give them.
PATH_PARAMETERS: dict[str, Rule] = {
    "node_id": NODE_ID,
    "username": USERNAME,
    "jti": JTI,
    "subpath": SEGMENT,
    "asset": Text(r"[A-Za-z0-9._-]+", "", description="A file of Swagger UI."),
    "name": ALIAS_NAME,
    "response_id": Text(RESPONSE_ID.pattern, "not a response id (1-128 of A-Za-z0-9_-)",
                        description="A stored response's id (resp_...)."),
    "file": Text(r"[A-Za-z0-9._-]+", "", description="A file of the dashboard (static/)."),
}


@dataclass(frozen=True)
class Operation:
    """What the URL map cannot tell about one route: its summary, the rule its
    body is checked with, its query parameters, what `data` it answers with,
    and the error codes it adds to the common ones."""

    summary: str
    body: Rule | None = None
    query: Fields | None = None
    data: Mapping[str, Any] | None = None  # inside the envelope
    answer: Mapping[str, Any] | None = None  # a body of its own (no envelope)
    media: str = JSON
    errors: tuple[int, ...] = ()
    envelope: bool = True  # errors in the seed's envelope (else OpenAI's shape)
    tag: str = "nodes"
    forwarded: bool = False  # the node's answer, passed through
    anthropic: bool = False  # errors in Anthropic's shape
    form: Mapping[str, Any] | None = None  # a multipart/form-data body (else JSON)
    bodiless: bool = False


ANY_TEXT = {"type": "string"}
# Keyed by endpoint (blueprint.view). A route missing here is described from
# its docstring alone, generically (a forwarded /v1 route, a page).
OPERATIONS: dict[str, Operation] = {
    "user.login": Operation("Log in: a token for the Bearer header", LOGIN, data=TOKEN, errors=(401, 429),
                            tag="users"),
    "user.all_users": Operation("Every user (never a password hash)", data={"type": "array", "items": USER},
                                tag="users"),
    "user.register": Operation("Create a user", NEW_USER, data=USER, errors=(409,), tag="users"),
    "user.update": Operation("Change a user's password or role; revokes its tokens", USER_CHANGES, data=USER,
                             errors=(409,), tag="users"),
    "user.delete": Operation("Remove a user; its tokens stop working within seconds",
                             data=_obj({"username": USERNAME.documented(), "deleted": {"const": True}}),
                             errors=(409,), tag="users"),
    "user.mint_token": Operation("Mint a long-lived token (e.g. for an agent)", TOKEN_REQUEST, data=MINTED,
                                 tag="users"),
    "user.revoke_token": Operation("Revoke one token by its jti",
                                   data=_obj({"jti": JTI.documented(), "revoked": {"const": True}}), tag="users"),
    "node.register": Operation("Register (upsert) a node", NODE_FIELDS, data=NODE, errors=(409,)),
    "node.update": Operation("Change a node's fields; always a heartbeat", NODE_UPDATE_FIELDS, data=NODE),
    "node.delete": Operation("Remove a node",
                             data=_obj({"node_id": NODE_ID.documented(), "deleted": {"const": True}})),
    "node.get_node": Operation("One node", data=NODE),
    "node.status": Operation("One node with its live state", data=NODE_STATUS_DATA),
    "node.select": Operation("The node the balancer would pick now (503 when none)", query=SELECT_QUERY,
                             data=SELECTED),
    "node.all_nodes": Operation("Every node, sorted by node_id", query=NODE_FILTERS,
                                data={"type": "array", "items": NODE}),
    "stats.fleet_stats": Operation("Every node's live state and request statistics, every model, fleet totals",
                                   data=FLEET_STATS),
    "dashboard.root": Operation("Redirects to /dashboard", answer=ANY_TEXT, media="text/html", tag="operations"),
    "dashboard.dashboard": Operation("The status dashboard (it asks for a login)", answer=ANY_TEXT,
                                     media="text/html", tag="operations"),
    "dashboard.static": Operation("The dashboard's script and style", answer=ANY_TEXT, media="*/*", errors=(404,),
                                  tag="operations"),
    "health.healthz": Operation("The process is up", answer=STATUS_TEXT, tag="operations"),
    "health.readyz": Operation("Storage answers and the instance is not stopping (503 otherwise)",
                               answer=STATUS_TEXT, errors=(503,), tag="operations"),
    "health.metrics": Operation("Prometheus metrics of this nvllm process", answer=ANY_TEXT,
                                media="text/plain", errors=(401, 403), tag="operations"),
    "proxy.models": Operation("The models of the routable nodes", answer=MODEL_LIST, envelope=False,
                              tag="openai"),
    "adapter.all_adapters": Operation("Every LoRA adapter on a live node: lineage, holders, where active",
                                      data={"type": "array", "items": ADAPTER}, tag="models"),
    "adapter.load": Operation("Load a LoRA adapter on every live node of a base model", ADAPTER_LOAD,
                              data=ADAPTER_RESULT, errors=(404,), tag="models"),
    "adapter.unload": Operation("Unload a LoRA adapter (from a base model's nodes, or every node holding it)",
                                ADAPTER_UNLOAD, data=ADAPTER_RESULT, errors=(404,), tag="models"),
    "alias.all_aliases": Operation("Every model alias, sorted", data={"type": "array", "items": ALIAS},
                                   tag="models"),
    "alias.set_alias": Operation("Create or replace a model alias", ALIAS_SET, data=ALIAS, errors=(409,),
                                 tag="models"),
    "alias.delete": Operation("Remove a model alias", data=_obj({"alias": ALIAS_NAME.documented()}),
                              errors=(404,), tag="models"),
    "docs.openapi": Operation("This description", answer={"type": "object"}, tag="operations"),
    "docs.ui": Operation("Swagger UI for this description", answer=ANY_TEXT, media="text/html",
                         tag="operations"),
    "docs.asset": Operation("Swagger UI's files", answer=ANY_TEXT, media="*/*", errors=(404,),
                            tag="operations"),
}
FORWARDED = Operation(
    "Forwarded to one routable node serving the body's model",
    answer={"description": "The node's answer, passed through as it streams."},
    media="*/*",
    errors=(400, 401, 403, 413, 429, 502, 503),
    envelope=False,
    tag="openai",
    forwarded=True,
)
_BY_MODEL = "routed by model, prompt affinity and load"
_PINNED = "from the node holding it (it was created there)"
# service/routes.py's table, each route as clients know it.
ROUTE_SUMMARIES: dict[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): f"Chat completions, {_BY_MODEL}",
    ("POST", "/v1/completions"): f"Completions, {_BY_MODEL}",
    ("POST", "/v1/embeddings"): f"Embeddings, {_BY_MODEL}",
    ("POST", "/v1/responses"): "Create a response (Responses API); with previous_response_id it goes to the node "
    "holding that one",
    ("GET", "/v1/responses/{response_id}"): f"Retrieve a stored response, {_PINNED}",
    ("DELETE", "/v1/responses/{response_id}"): f"Delete a stored response, {_PINNED}",
    ("POST", "/v1/responses/{response_id}/cancel"): f"Cancel a background response, {_PINNED}",
    ("GET", "/v1/responses/{response_id}/input_items"): f"A stored response's input items, {_PINNED}",
    ("POST", "/v1/audio/transcriptions"): "Transcribe an audio upload, routed by the form's model",
    ("POST", "/v1/audio/translations"): "Translate an audio upload into English, routed by the form's model",
    ("POST", "/v1/messages"): f"Anthropic's Messages API, {_BY_MODEL}",
    ("POST", "/v1/messages/count_tokens"): "Anthropic's token count of a Messages request",
    ("POST", "/v1/rerank"): "Rerank documents against a query (vLLM)",
    ("POST", "/rerank"): "Rerank documents against a query (vLLM)",
    ("POST", "/v2/rerank"): "Rerank documents against a query, Cohere's v2 shape (vLLM)",
    ("POST", "/v2/embed"): "Embeddings, Cohere's v2 shape (vLLM)",
    ("POST", "/score"): "Score text pairs (vLLM)",
    ("POST", "/v1/score"): "Score text pairs (vLLM)",
    ("POST", "/classify"): "Classify texts (vLLM)",
    ("POST", "/pooling"): "A pooling model's raw output (vLLM)",
    ("POST", "/tokenize"): "Tokenize a prompt or chat messages (vLLM)",
    ("POST", "/detokenize"): "Token ids back to text (vLLM)",
    ("POST", "/invocations"): "SageMaker's entry point: a chat, completion or embeddings body (vLLM)",
}
AUDIO_FORM = {
    "type": "object",
    "description": "Only `model` and `stream` are read by nvllm; the file is forwarded unread.",
    "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"},
                   "model": {"type": "string"}, "stream": {"type": "string", "enum": ["true", "false"]}},
    "required": ["file", "model"],
}


def route_operation(route: Route, method: str) -> Operation:
    """A route of service/routes.py's table, described as clients call it."""
    return Operation(
        ROUTE_SUMMARIES.get((method, route.path), FORWARDED.summary),
        answer=FORWARDED.answer,
        media="*/*",
        errors=FORWARDED.errors + ((404,) if "{" in route.path else ()),
        envelope=False,
        tag="anthropic" if route.anthropic else "openai",
        forwarded=True,
        anthropic=route.anthropic,
        form=AUDIO_FORM if route.path.startswith("/v1/audio/") else None,
        bodiless=method in ("GET", "DELETE") or route.path.endswith("/cancel"),
    )


def _table_route(rule: str) -> Route | None:
    return next((r for r in routes.ROUTES if r.path == rule), None)


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes."""
    # OpenAPI allows one template per shape: token/<username> (POST) and
    # token/<jti> (DELETE) become token/{username_or_jti}, each with its schema.
    shapes: dict[str, list[Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            shapes.setdefault(re.sub(PARAMETER, "{}", rule.rule), []).append(rule)
    paths: dict[str, dict[str, Any]] = {}
    for shape, rules in sorted(shapes.items()):
        positions = zip(*(_path_names(r.rule) for r in rules), strict=True)
        names = ["_or_".join(sorted(set(p))) for p in positions]
        path = shape.format(*(f"{{{n}}}" for n in names))
        for rule in sorted(rules, key=lambda r: r.rule):
            view = app.view_functions[rule.endpoint]
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                paths.setdefault(path, {})[method.lower()] = describe(rule.endpoint, rule.rule, method, view, names)
    # The table's routes under /v1 share one view (the pass-through); each is
    # described on its own, as the SDKs call it.
    forward = app.view_functions.get("proxy.forward")
    for route in routes.ROUTES if forward is not None else ():
        if route.path.startswith("/v1/"):
            rule = re.sub(r"\{([^}]+)\}", r"<\1>", route.path)
            for method in sorted(route.methods):
                paths.setdefault(route.path, {})[method.lower()] = describe(
                    "proxy.forward", rule, method, forward, _path_names(rule), route_operation(route, method))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nvllm",
            "version": "1",
            "description": "A load balancer for vLLM fleets. Every /api route answers in the seed's envelope, "
            "its HTTP status equal to `code`; /v1 speaks OpenAI's API and forwards to the fleet. Log in with "
            "POST /api/user/login and send the token as `Authorization: Bearer <token>`. Roles: "
            "admin > worker > user, each may do what the roles below it may.",
        },
        "tags": [{"name": n} for n in ("users", "nodes", "models", "openai", "anthropic", "operations")],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": ERROR_ENVELOPE, "OpenAIError": OPENAI_ERROR, "AnthropicError": ANTHROPIC_ERROR},
            "headers": {"X-Trace-ID": {"description": "The request's trace id (echoed when sent)",
                                       "schema": TRACE_ID}},
        },
    }


def describe(endpoint: str, rule: str, method: str, view: Any, names: list[str],
             op: Operation | None = None) -> dict[str, Any]:
    """One operation: the table's entry (or `op`), the view's docstring and its
    role; `names` are its path parameters' names in the document."""
    if op is None:
        route = _table_route(rule)
        op = OPERATIONS.get(endpoint) or (
            route_operation(route, method) if route else FORWARDED if rule.startswith("/v1/") else None)
    doc = inspect.getdoc(view) or ""
    role: Role | None = getattr(view, "nvllm_role", None)
    summary = op.summary if op else doc.split("\n", 1)[0]
    text = [doc] if doc and doc.split("\n", 1)[0] != summary else []
    if role is not None:
        text.append(f"Role: {role.value} or above.")
    # The table's routes share the pass-through view: their path tells them apart.
    named = endpoint + (re.sub(r"[^A-Za-z0-9]+", "_", rule) if endpoint == "proxy.forward" and op is not FORWARDED
                        else "")
    out: dict[str, Any] = {
        "operationId": f"{named}.{method.lower()}",
        "summary": summary,
        "description": "\n\n".join(text) or summary,
        "tags": [op.tag if op else "pages"],
        "security": BEARER if role is not None else ([{}, *BEARER] if endpoint == "health.metrics" else []),
    }
    if role is not None:
        out["x-nvllm-role"] = role.value
    op = op or Operation(summary, answer=ANY_TEXT, media="*/*", envelope=not rule.startswith("/v1"))
    given = zip(names, _path_names(rule), strict=True)
    parameters = [_parameter(shown, "path", PATH_PARAMETERS[name], True) for shown, name in given]
    if op.query is not None:
        parameters += [_parameter(name, "query", r, False) for name, r in op.query.fields.items()]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": False, "content": {JSON: {"schema": op.body.documented()}},
                              "description": "JSON; an empty body counts as {}."}
    elif op.forwarded and not op.bodiless and method not in ("GET", "DELETE"):
        media = {"multipart/form-data": {"schema": dict(op.form)}} if op.form else {JSON: {"schema": FORWARDED_BODY}}
        out["requestBody"] = {"required": True, "content": media}
    out["responses"] = _responses(op, role, rule)
    return out


def _path_names(rule: str) -> list[str]:
    return re.findall(PARAMETER, rule)


def _parameter(name: str, where: str, rule: Rule, required: bool) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": rule.documented()}


def _responses(op: Operation, role: Role | None, rule: str) -> dict[str, Any]:
    headers = {"X-Trace-ID": {"$ref": "#/components/headers/X-Trace-ID"}}
    if op.data is not None:
        ok = {"description": "success", "headers": headers, "content": {JSON: {"schema": envelope(op.data)}}}
    elif op.forwarded:
        ok = {"description": "The node's answer: JSON, or server-sent events when `stream` is true.",
              "headers": headers, "content": {JSON: {}, "text/event-stream": {}}}
    else:
        ok = {"description": "success", "headers": headers, "content": {op.media: {"schema": dict(op.answer or {})}}}
    responses: dict[str, Any] = {"200": ok}
    codes = set(op.errors) | {500}
    if rule.startswith("/api/"):
        codes |= set(API_ERRORS)
    if role is not None:
        codes |= set(AUTH_ERRORS)
    if _path_names(rule):
        codes |= {400, 404}
    error: dict[str, Any] = {"$ref": "#/components/schemas/" + ("Error" if op.envelope else "OpenAIError")}
    if op.anthropic:
        # nvllm's own errors are Anthropic's shape; a node's own pass on as it
        # came, and vLLM answers some of them (a body it cannot parse) in OpenAI's.
        error = {"anyOf": [{"$ref": "#/components/schemas/AnthropicError"}, error]}
    for code in sorted(codes):
        content: dict[str, Any] = {JSON: {"schema": error}}
        if op.forwarded and code < 500:
            content["*/*"] = {}  # or the node's own answer with that status, passed on
        responses[str(code)] = {"description": ERRORS[code], "headers": headers, "content": content}
    if op.forwarded:
        responses["4XX"] = {"description": "The node's own answer, passed on as it came (nvllm's own errors "
                            "are in OpenAI's shape, as above).", "content": {"*/*": {}}}
    return responses

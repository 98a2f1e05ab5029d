"""The proxy's pure parts: reading vLLM's in-band load report, and which
headers cross to a node and back."""

from __future__ import annotations

import pytest

from fakevllm.engine import Engine
from fakevllm.metrics import orca_header
from service.proxy import LOAD_HEADER, Proxy, UpstreamConfig, parse_load_header

# --- endpoint-load-metrics ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('JSON {"named_metrics": {"num_requests_waiting": 3.0, "kv_cache_usage_perc": 0.25}}', (3, None, 0.25)),
        ('JSON {"num_requests_waiting": 1, "num_requests_running": 4, "kv_cache_utilization": 0.5}', (1, 4, 0.5)),
        ('json {"named_metrics": {"gpu_cache_usage_perc": 0.75}}', (None, None, 0.75)),
        ("TEXT named_metrics.num_requests_waiting=2.0, named_metrics.kv_cache_usage_perc=0.1", (2, None, 0.1)),
        ("TEXT num_requests_running=7, num_requests_waiting=0", (0, 7, None)),
        ('  JSON {"named_metrics": {"num_requests_waiting": 5}}  ', (5, None, None)),
    ],
)
def test_load_header_forms(value, expected):
    assert parse_load_header(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "JSON {not json",
        "JSON [1, 2]",
        'JSON "text"',
        "TEXT num_requests_waiting=lots",
        "PROTO \x08\x01",
        'JSON {"named_metrics": {"num_requests_waiting": -1, "kv_cache_usage_perc": true}}',
        'JSON {"named_metrics": {"num_requests_waiting": "3"}}',
    ],
)
def test_load_header_garbage_says_nothing(value):
    assert parse_load_header(value) == (None, None, None)


def test_load_header_kv_usage_is_capped_at_one():
    assert parse_load_header('JSON {"kv_cache_usage_perc": 1.7}') == (None, None, 1.0)


@pytest.mark.parametrize("fmt", ["JSON", "TEXT"])
def test_load_header_as_the_fake_vllm_writes_it(fmt):
    engine = Engine(max_num_seqs=4, kv_tokens=1024, step_time=0.01)
    header = orca_header(fmt, engine)[LOAD_HEADER]
    assert parse_load_header(header) == (0, None, 0.0)


# --- headers ---


@pytest.fixture
def proxy() -> Proxy:
    return Proxy(fleet=None, policy=None, config=UpstreamConfig())  # type: ignore[arg-type]


CLIENT_HEADERS = {
    "Authorization": "Bearer client-token",
    "Cookie": "session=secret",
    "Host": "nvllm.example",
    "Content-Length": "42",
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
    "Connection": "keep-alive",
    "Keep-Alive": "timeout=5",
    "Transfer-Encoding": "chunked",
    "TE": "trailers",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic eA==",
    "X-Trace-ID": "client-chosen",
    "X-Request-Id": "client-chosen",
    "endpoint-load-metrics-format": "TEXT",
    "OpenAI-Organization": "org-1",
    "User-Agent": "OpenAI/Python",
    "X-Forwarded-For": "10.0.0.1",
    "Metadata-Flavor": "Google",
    "X-Session-Id": "s-1",
}


def test_request_headers_keep_only_what_vllm_needs(proxy):
    sent = proxy._request_headers(CLIENT_HEADERS, "trace-1")
    assert sent == {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "User-Agent": "OpenAI/Python",
        "X-Session-Id": "s-1",
        "X-Trace-ID": "trace-1",
        "X-Request-Id": "trace-1",
        "endpoint-load-metrics-format": "JSON",
    }


def test_request_headers_drop_credentials_whatever_their_case(proxy):
    sent = proxy._request_headers({"authorization": "Bearer x", "COOKIE": "a=b", "cookie": "c=d"}, "t")
    assert {k.lower() for k in sent} == {"x-trace-id", "x-request-id", "endpoint-load-metrics-format"}


class FakeResponse:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = _Headers(headers)


class _Headers:
    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def items(self):
        return list(self._items)


def test_response_headers_keep_only_what_describes_the_answer():
    upstream = FakeResponse(
        [
            ("Content-Type", "text/event-stream"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("Set-Cookie", "node=1"),
            ("endpoint-load-metrics", 'JSON {"named_metrics": {}}'),
            ("Cache-Control", "no-cache"),
            ("x-request-id", "trace-1"),
            ("Content-Length", "1000"),
            ("Access-Control-Allow-Origin", "*"),
            ("Server", "uvicorn"),
            ("X-Internal", "1"),
        ]
    )
    assert Proxy._response_headers(upstream) == [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("x-request-id", "trace-1"),
    ]


# --- what the relay tells routing of a stream's tokens ---


class Recording:
    """A policy that only records the events it is told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def progress(self, ticket, tokens, now):
        self.events.append(("progress", tokens))

    def first_token(self, ticket, now):
        self.events.append(("first_token",))

    def done(self, ticket, now):
        self.events.append(("done",))


class Scripted:
    """A node's streamed answer, chunk by chunk."""

    status = 200

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    def read1(self, size: int) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    def release_conn(self) -> None:
        pass


class Fleet:
    def record_success(self, state):
        pass

    def release(self, state):
        pass


def relayed(chunks: list[bytes], tokens: tuple[bytes, int]) -> list[tuple]:
    policy = Recording()
    proxy = Proxy(fleet=Fleet(), policy=policy, config=UpstreamConfig())  # type: ignore[arg-type]
    state = type("S", (), {"node_id": "n"})()
    body = proxy._relay(state, Scripted(chunks[1:]), True, 0.0, chunks[0], 1, tokens=tokens)
    assert b"".join(body) == b"".join(chunks)
    return policy.events


def test_each_generating_route_says_how_its_tokens_show():
    from service.routes import resolve

    assert (resolve("POST", "/v1/messages").token_event, resolve("POST", "/v1/messages").first_token_event) == (
        b"event: content_block_delta", 1)
    assert resolve("POST", "/v1/responses").token_event == b"event: response.output_text.delta"
    assert resolve("POST", "/v1/chat/completions").first_token_event == 2  # the role comes first
    assert resolve("POST", "/v1/completions").first_token_event == 1


def sse(event: str) -> bytes:
    return f'event: {event}\ndata: {{"type": "{event}"}}\n\n'.encode()


def test_an_anthropic_streams_first_token_is_its_first_text_delta():
    chunks = [sse("message_start") + sse("content_block_start"), sse("ping"),
              sse("content_block_delta"), sse("content_block_delta") * 2, sse("message_stop")]
    events = relayed(chunks, (b"event: content_block_delta", 1))
    assert events == [("progress", 1), ("first_token",), ("progress", 3), ("done",)]


def test_a_chat_streams_first_event_is_its_role():
    chunks = [b'data: {"role"}\n\n', b'data: {"a"}\n\n', b'data: {"b"}\n\ndata: {"c"}\n\n', b"data: [DONE]\n\n"]
    events = relayed(chunks, (b"data:", 2))
    assert events == [("progress", 0), ("progress", 1), ("first_token",), ("progress", 3), ("progress", 4),
                      ("done",)]

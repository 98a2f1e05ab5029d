"""End-to-end fixtures for the /v1 proxy: nvllm served by a real WSGI server
in a thread on a free 127.0.0.1 port, over fake Redis, in front of fake vLLM
nodes, with the OpenAI SDK as the client.

Everything started here is stopped by the fixture that started it. Timeouts
and intervals are short so that a failure shows within a second or two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import openai
import pytest
import urllib3
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from config import Settings
from fakevllm import FakeVLLM
from main import create_app
from model.node import Node, NodeStatus
from service.fleet import Fleet
from service.user import create_user
from tests.helpers import ADMIN_PASSWORD, PASSWORD, wait_for

FAST = {
    "fleet_refresh": 0.1,
    "eject_after": 2,
    "upstream_connect_timeout": 0.5,
    "upstream_stream_timeout": 1.0,
    "upstream_read_timeout": 5.0,
    "probe_interval": 0.0,  # no node polling: the tests set each node's state
}


@dataclass
class Live:
    """One nvllm instance serving on a free port."""

    app: Flask
    server: BaseWSGIServer
    token: str
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(retries=False))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def fleet(self) -> Fleet:
        return self.app.extensions["nvllm"].proxy.fleet

    def learned(self, node_id: str):
        """What the load policy has learned of the node (a NodeLoad)."""
        return self.app.extensions["nvllm"].proxy.policy.model.node(node_id)

    def sdk(self, token: str | None = None, **options: Any) -> openai.OpenAI:
        options.setdefault("timeout", 10.0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token or self.token, max_retries=0, **options)

    def register(self, node_id: str, port: int, *, models: list[str] | None = None, **fields: Any) -> Node:
        """Save a node straight into the store and refresh this view at once."""
        now = time.time()
        fields.setdefault("node_status", NodeStatus.ONLINE)
        fields.setdefault("timeout", 3600)
        node = Node(node_id, node_address="127.0.0.1", node_port=port, models=models or [],
                    create_time=now, update_time=now, **fields)
        saved = self.app.extensions["nvllm"].nodes.save(node)
        self.fleet.refresh()
        return saved

    def post(self, path: str, body: dict[str, Any], *, token: str | None = None,
             headers: dict[str, str] | None = None, **options: Any) -> urllib3.BaseHTTPResponse:
        sent = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        options.setdefault("timeout", 10.0)
        return self.http.request("POST", self.url + path, json=body, headers=sent, **options)

    def get(self, path: str, *, token: str | None = None) -> urllib3.BaseHTTPResponse:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.http.request("GET", self.url + path, headers=headers, timeout=10.0)

    def served_by(self, n: int = 1, *, model: str = "fake-model", stream: bool = False,
                  prompt: str = "hi") -> list[str]:
        """Send `n` completions one after another; the node that served each.
        Each is waited for until nvllm has released it too (the client can have
        the whole answer a moment before), so the next one is routed on a
        settled view."""
        client = self.sdk()
        nodes = []
        for _ in range(n):
            raw = client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=2,
                                                              stream=stream)
            if stream:
                assert len(list(raw.parse())) == 2
            else:
                assert raw.parse().choices[0].text
            nodes.append(raw.headers["X-NVLLM-Node"])
            wait_for(lambda: self.inflight(nodes[-1]) == 0, 2, f"nvllm to release its request to {nodes[-1]}")
        return nodes

    def open_stream(self, body: dict[str, Any] | None = None, *, token: str | None = None,
                    headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """A streamed completion whose first chunk has arrived; the caller reads
        on or closes it."""
        body = {"model": "fake-model", "prompt": "x", "max_tokens": 200, "stream": True, **(body or {})}
        response = self.post("/v1/completions", body, token=token, headers=headers, preload_content=False)
        assert response.status == 200, response.data
        assert response.read1(65536).startswith(b"data:")
        return response

    def inflight(self, node_id: str) -> int:
        state = self.fleet.get(node_id)
        return state.local_inflight if state else 0


@pytest.fixture
def clock() -> Callable[[], float]:
    """Live servers run on the wall clock (breaker cooldowns, node liveness)."""
    return time.time


@pytest.fixture
def settings() -> Settings:
    # scrypt's cost turned down, as in tests/conftest.py: logins cost microseconds.
    return Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4, **FAST)


@pytest.fixture
def start_nvllm(server: fakeredis.FakeServer, settings: Settings) -> Iterator[Callable[..., Live]]:
    """start_nvllm(**setting_changes): another nvllm instance on the same fake
    Redis, so two calls make two instances of one deployment."""
    started: list[tuple[Live, threading.Thread]] = []

    def start(**changes: Any) -> Live:
        redis = fakeredis.FakeRedis(server=server, decode_responses=True)
        app = create_app(settings.replace(**changes), redis_client=redis, clock=time.time)
        wsgi = make_server("127.0.0.1", 0, app, threaded=True)
        # An accept that would block (a connection gone between the select and
        # the accept) times out instead, so shutdown() can never hang the suite.
        wsgi.socket.settimeout(1.0)
        thread = threading.Thread(target=wsgi.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="nvllm-test-server", daemon=True)
        thread.start()
        live = Live(app, wsgi, token=_user_token(app, f"user{len(started)}"))
        started.append((live, thread))
        return live

    yield start
    for live, thread in started:
        live.server.shutdown()
        thread.join(timeout=5)
        live.fleet.close()
        live.http.clear()


@pytest.fixture
def nvllm(start_nvllm) -> Live:
    return start_nvllm()


@pytest.fixture
def start_fake() -> Iterator[Callable[..., FakeVLLM]]:
    """start_fake(models, **options): a fake vLLM node on a free port."""
    started: list[FakeVLLM] = []

    def start(models: tuple[str, ...] | list[str] = ("fake-model",), **options: Any) -> FakeVLLM:
        options.setdefault("step_time", 0.002)
        options.setdefault("prefill_time_per_token", 0.0)
        fake = FakeVLLM(models=models, **options).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def _user_token(app: Flask, username: str) -> str:
    stores = app.extensions["nvllm"]
    user = create_user(stores.users, {"username": username, "password": PASSWORD, "role": "user"},
                       now=time.time(), hash_n=2**4)
    return stores.tokens.issue(user, 3600)

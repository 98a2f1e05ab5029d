"""Integration fixtures: a real embedded store, and nvllm as a real process
(`python main.py`) on a free port.

The store is session-scoped and flushed before each test. Every service is
started by `start_service`, which waits for /healthz and always stops it.
Nothing here touches a developer's Redis or ./data: every service gets a
temporary NVLLM_DATA_DIR, and NVLLM_*/REDIS_URL from the environment are
dropped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import urllib3

from server.store import STATE_FILE, EmbeddedStore, run_embedded
from tests.helpers import wait_for  # noqa: F401 - re-exported to the tests beside it

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "integration-admin-password"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Answer:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def data(self) -> Any:
        body = self.json
        assert self.status == 200 and body["code"] == 200, self.text
        return body["data"]


@dataclass
class Service:
    """One `python main.py` process."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    http: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(maxsize=64, retries=False)
    )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Answer:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
            sent.setdefault("Content-Type", "application/json")
        reply = self.http.request(method, self.base_url + path, body=payload, headers=sent, timeout=timeout)
        return Answer(reply.status, reply.headers, reply.data.decode("utf-8", "replace"))

    def api(self, method: str, path: str, *, token: str | None = None, body: Any = None) -> Any:
        """The `data` of a request that must succeed."""
        return self.request(method, path, token=token, body=body).data

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        answer = self.request("POST", "/api/user/login", body={"username": username, "password": password})
        return answer.data["token"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def store_state(self) -> dict[str, Any]:
        """store.json of its embedded store (while it runs one)."""
        return json.loads((self.data_dir / STATE_FILE).read_text(encoding="utf-8"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal it and wait; the exit code (SIGKILL after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"nvllm did not stop within {timeout} s of signal {sig}\n{self.log()[-3000:]}")
        self.http.clear()
        return self.process.returncode


def service_env(data_dir: Path, redis_url: str | None, extra: dict[str, str | None]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith("NVLLM_") or k == "REDIS_URL")
    }
    env.update(
        NVLLM_DATA_DIR=str(data_dir),
        NVLLM_ADMIN_PASSWORD=ADMIN_PASSWORD,
        NVLLM_LOG_LEVEL="INFO",
        # One worker unless a test asks for more: what a test of one
        # instance sees must not depend on how many cores the machine has.
        NVLLM_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    # A value of None leaves the variable unset: nvllm's own default.
    return {k: v for k, v in env.items() if v is not None}


def run_cli(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` with `stdin` piped in."""
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """One real store for the session, started as nvllm starts its own."""
    with run_embedded(tmp_path_factory.mktemp("store") / "data") as store:
        yield store


@pytest.fixture
def redis_url(session_store: EmbeddedStore) -> str:
    """The session store's URL, emptied for this test."""
    client = redis.Redis.from_url(session_store.url)
    try:
        client.flushall()
    finally:
        client.close()
    return session_store.url


@pytest.fixture
def store_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """start_service(redis_url=None, data_dir=None, **env) -> a ready Service.
    Without redis_url it runs its embedded store in data_dir."""
    started: list[Service] = []

    def start(redis_url: str | None = None, data_dir: Path | None = None, **extra: str | None) -> Service:
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
        port = free_port()
        log_path = tmp_path / f"nvllm-{len(started)}-{port}.log"
        env = service_env(data_dir, redis_url, extra)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "main.py", "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        service = Service(process, port, data_dir, log_path, env)
        started.append(service)
        _wait_healthy(service)
        return service

    yield start
    for service in started:
        service.stop(signal.SIGTERM)
        service.http.clear()


def _wait_healthy(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not service.alive():
            pytest.fail(f"nvllm exited with {service.process.returncode} while starting:\n{service.log()[-3000:]}")
        try:
            if service.request("GET", "/healthz", timeout=1).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"nvllm did not answer /healthz within {START_TIMEOUT} s:\n{service.log()[-3000:]}")

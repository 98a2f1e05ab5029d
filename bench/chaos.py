"""Faults injected under load, counted request by request.

Each scenario starts its own world: a Redis (redis-server, or a primary, a
replica and three sentinels), three fake vLLM nodes (one process each, so one
can be SIGKILLed), and two nvllm instances on that Redis. Client threads send
streamed chat completions through both instances in turn while the fault is
injected and healed; in the rolling restarts they send through HAProxy in
front of both instances, and in the drain 200 clients hold 200 streams on
the node that is drained. For every scenario it prints:

- sent, ok, and failed before the first byte (by reason): the target is zero;
- streams cut after their first byte, and through what (the node or the
  instance that died): the target is only those;
- the time to recover: the node back in rotation, the API answering again,
  or the dead instance's in-flight counts gone from the shared load.

Runs with nvllm's own environment, Debian's redis-server/redis-sentinel and,
for rolling-restart, Debian's haproxy:

    .venv/bin/python bench/chaos.py                 # every scenario, about 8 minutes
    .venv/bin/python bench/chaos.py node-kill redis-freeze
    .venv/bin/python bench/chaos.py --list
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.redis_ha import RedisHA, free_port  # noqa: E402

MODEL = "fake-model"
# The throwaway instances' admin password: drawn per run, never a constant.
ADMIN_PASSWORD = secrets.token_urlsafe(18)
NODES = 3
CLIENTS = 12  # streams in flight at once, over both instances
MAX_TOKENS = 24  # with the fake's 20 ms steps: a stream lasts about half a second
ENV = {
    "NVLLM_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "NVLLM_REDIS_TIMEOUT": "1",
    "NVLLM_PROBE_INTERVAL": "1",
    # A hung node cuts its streams after this silence (default 30 s; shorter to keep runs short).
    "NVLLM_UPSTREAM_STREAM_TIMEOUT": "3",
    "NVLLM_LOG_LEVEL": "WARNING",
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def wait(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until `predicate()` held; raises TimeoutError."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


class Proc:
    def __init__(self, name: str, args: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.args, self.logdir, self.env = name, args, logdir, env
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.logdir / f"{self.name}.log", "ab") as out:
            # Its own process group: a signal reaches nvllm's workers too, as a crash of the host would.
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(35)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Outcome:
    instance: int
    start: float
    end: float
    status: int  # 0: no HTTP answer
    first_byte: bool
    complete: bool
    node: str = ""
    reason: str = ""


@dataclass
class World:
    logdir: Path
    procs: list[Proc] = field(default_factory=list)
    nodes: list[Proc] = field(default_factory=list)
    node_ports: list[int] = field(default_factory=list)
    nvllm: list[Proc] = field(default_factory=list)
    nvllm_ports: list[int] = field(default_factory=list)
    store: Proc | None = None
    store_port: int = 0
    ha: RedisHA | None = None
    balancer: Balancer | None = None
    node_args: list[str] = field(default_factory=lambda: ["--max-num-seqs", "64"])
    nvllm_env: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    token: str = ""
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(maxsize=64, retries=False))

    # --- building it ---

    def start_store(self) -> None:
        self.store_port = free_port()
        directory = self.logdir / "redis"
        directory.mkdir(exist_ok=True)
        self.store = Proc("redis", [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
                                    "--port", str(self.store_port), "--dir", str(directory), "--save", "",
                                    "--appendonly", "yes"], self.logdir)
        self.redis_url = f"redis://127.0.0.1:{self.store_port}/0"
        wait(self.store_answers, 10, "redis")

    def store_answers(self) -> bool:
        client = redis.Redis(port=self.store_port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start_ha(self) -> None:
        self.ha = RedisHA(self.logdir / "ha", shutil.which("redis-server") or "redis-server",
                          shutil.which("redis-sentinel") or "redis-sentinel").start()
        self.redis_url = self.ha.url

    def start_nodes(self) -> None:
        for i in range(NODES):
            port = free_port()
            self.node_ports.append(port)
            self.nodes.append(Proc(f"node-{i}", [sys.executable, "-m", "fakevllm", "--port", str(port),
                                                 "--model", MODEL, *self.node_args], self.logdir))
        for port in self.node_ports:
            wait(lambda p=port: self.get(f"http://127.0.0.1:{p}/health") == 200, 20, "a fake node")

    def start_nvllm(self, count: int = 2, redis_urls: list[str] | None = None) -> None:
        for i in range(count):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not (k.startswith("NVLLM_") or k == "REDIS_URL")}
            env.update(ENV, **self.nvllm_env, REDIS_URL=(redis_urls or [self.redis_url] * count)[i],
                       NVLLM_DATA_DIR=str(self.logdir / f"data-{i}"))
            self.nvllm_ports.append(port)
            self.nvllm.append(Proc(f"nvllm-{i}", [sys.executable, "main.py", "--port", str(port)], self.logdir, env))
        for i in range(count):
            wait(lambda i=i: self.get(self.url(i) + "/readyz") == 200, 30, "nvllm")

    def login(self) -> None:
        answer = self.http.request("POST", self.url(0) + "/api/user/login",
                                   body=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}),
                                   headers={"Content-Type": "application/json"})
        self.token = json.loads(answer.data)["data"]["token"]

    def register_nodes(self, nodes: list[int] | None = None) -> None:
        self.login()
        for i in range(NODES) if nodes is None else nodes:
            self.register(i)
        for i in range(len(self.nvllm)):
            wait(lambda i=i: self.http.request("GET", self.url(i) + "/v1/models", headers=self.auth(),
                                               timeout=2).data.count(MODEL.encode()), 10, "the nodes routable")

    def register(self, node: int) -> None:
        self.api(0, "POST", "/api/node/node/register", {
            "node_id": f"node-{node}", "node_address": "127.0.0.1", "node_port": self.node_ports[node],
            "node_status": "online", "timeout": 60, "models": [MODEL]})

    def stop(self) -> None:
        for proc in [*self.procs, *self.nvllm, *self.nodes] + ([self.store] if self.store else []):
            proc.stop()
        if self.ha:
            self.ha.stop()

    # --- talking to it ---

    def url(self, instance: int) -> str:
        return f"http://127.0.0.1:{self.nvllm_ports[instance]}"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def get(self, url: str) -> int:
        try:
            return self.http.request("GET", url, timeout=2).status
        except urllib3.exceptions.HTTPError:
            return 0

    def api(self, instance: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
        try:
            answer = self.http.request(method, self.url(instance) + path, headers=self.auth(), timeout=5,
                                       body=None if body is None else json.dumps(body))
        except urllib3.exceptions.HTTPError:
            return 0, {}
        return answer.status, (json.loads(answer.data) if answer.data else {})

    def fault(self, node: int, mode: str | None, **extra: object) -> None:
        self.http.request("POST", f"http://127.0.0.1:{self.node_ports[node]}/fake/fault",
                          body=json.dumps({"mode": mode, **extra}), headers={"Content-Type": "application/json"})

    def served(self, node: int) -> int:
        answer = self.http.request("GET", f"http://127.0.0.1:{self.node_ports[node]}/fake/stats", timeout=2)
        return int(json.loads(answer.data)["completed"])


class Load:
    """`clients` threads, each sending streamed completions of `max_tokens`
    through one of `urls` (thread number mod their count; by default the two
    instances), one after another."""

    def __init__(self, world: World, clients: int = CLIENTS, max_tokens: int = MAX_TOKENS,
                 urls: list[str] | None = None) -> None:
        self.world, self.max_tokens = world, max_tokens
        self.urls = urls or [world.url(i) for i in range(len(world.nvllm))]
        self.outcomes: list[Outcome] = []
        # An instance known dead: its clients go to the other, as behind a TCP balancer.
        self.dead: set[int] = set()
        self.stopping = threading.Event()
        self.http = urllib3.PoolManager(maxsize=clients, retries=False)
        self.threads = [threading.Thread(target=self._client, args=(i % len(self.urls),), daemon=True)
                        for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(40)

    def _client(self, instance: int) -> None:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "tell me"}],
                           "max_tokens": self.max_tokens, "stream": True})
        while not self.stopping.is_set():
            self.outcomes.append(self._one(1 - instance if instance in self.dead else instance, body))

    def _one(self, instance: int, body: str) -> Outcome:
        start = time.monotonic()
        try:
            answer = self.http.request("POST", self.urls[instance] + "/v1/chat/completions", body=body,
                                       headers=self.world.auth(), preload_content=False,
                                       timeout=urllib3.Timeout(connect=2, read=20))
        except urllib3.exceptions.HTTPError as exc:
            time.sleep(0.1)  # a client whose balancer is gone retries after a pause
            return Outcome(instance, start, time.monotonic(), 0, False, False, reason=type(exc).__name__)
        node, first, text = answer.headers.get("X-NVLLM-Node", ""), False, b""
        try:
            for chunk in answer.stream(1024):
                first = first or bool(chunk)
                text += chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Outcome(instance, start, time.monotonic(), answer.status, first, False, node, type(exc).__name__)
        finally:
            answer.release_conn()
        if answer.status != 200:
            time.sleep(0.1)
            reason = f"HTTP {answer.status}: {error_message(text)}"
            return Outcome(instance, start, time.monotonic(), answer.status, False, False, node, reason)
        complete = b"data: [DONE]" in text
        reason = "" if complete else "cut"
        return Outcome(instance, start, time.monotonic(), 200, first, complete, node, reason)


def error_message(body: bytes) -> str:
    """The answer's error text (OpenAI's shape or the API envelope), short:
    two 503s can mean different things."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:60].decode(errors="replace")
    if not isinstance(data, dict):
        return ""
    error = data.get("error")
    text = error.get("message") if isinstance(error, dict) else data.get("message")
    return str(text or "")[:80]


def report(name: str, load: Load, recovery: dict[str, float | None], notes: str = "") -> dict:
    """One JSON line. Requests sent to an instance after it died (connection
    refused: no balancer in front to send them elsewhere) are counted apart."""
    outcomes = load.outcomes
    lost = [o for o in outcomes if o.instance in load.dead and o.status == 0 and not o.first_byte]
    failed = [o for o in outcomes if not o.complete and not o.first_byte and o not in lost]
    cut = [o for o in outcomes if not o.complete and o.first_byte]
    row = {
        "scenario": name,
        "sent": len(outcomes),
        "ok": sum(o.complete for o in outcomes),
        "failed_before_first_byte": len(failed),
        "failed_by_reason": dict(Counter(f"via {o.instance}: {o.reason}" for o in failed)),
        "refused_by_the_dead_instance": len(lost),
        "cut_streams": len(cut),
        "cut_by": dict(Counter(f"via {o.instance}, node {o.node or '?'}" for o in cut)),
        "recovery_s": {k: (round(v, 2) if v is not None else None) for k, v in recovery.items()},
        "notes": notes,
    }
    print(json.dumps(row), flush=True)
    return row


def node_back(world: World, node: int, healed_at: float, timeout: float = 30) -> float | None:
    """Seconds from the heal until the node served a proxied request again."""
    before = world.served(node)
    try:
        wait(lambda: world.served(node) > before, timeout, "the node back in rotation")
    except TimeoutError:
        return None
    return time.monotonic() - healed_at


def api_back(world: World, healed_at: float, timeout: float = 40) -> float | None:
    try:
        for i in range(len(world.nvllm)):
            wait(lambda i=i: world.api(i, "GET", "/api/node/node/all")[0] == 200, timeout, "the API")
    except TimeoutError:
        return None
    return time.monotonic() - healed_at


# --- scenarios: each gets a running world and returns its report ---


def node_fault(mode: str, hold: float, **extra: object) -> Callable[[World], dict]:
    def run(world: World) -> dict:
        with Load(world) as load:
            time.sleep(3)
            world.fault(1, mode, **extra)
            time.sleep(hold)
            world.fault(1, None)
            healed = time.monotonic()
            back = node_back(world, 1, healed)
            time.sleep(2)
        what = "node's first completion after the heal" if mode == "slow" else "node back in rotation"
        how = f" (x{extra['factor']})" if "factor" in extra else ""
        return report(f"node-{mode}", load, {what: back},
                      f"node-1 in fault mode {mode!r}{how} for {hold:.0f} s")
    return run


def node_kill(world: World) -> dict:
    with Load(world) as load:
        time.sleep(3)
        world.nodes[1].signal(signal.SIGKILL)
        time.sleep(5)
        world.nodes[1].start()
        wait(lambda: world.get(f"http://127.0.0.1:{world.node_ports[1]}/health") == 200, 20, "the node restarted")
        healed = time.monotonic()
        back = node_back(world, 1, healed)
        time.sleep(2)
    return report("node-kill", load, {"node back in rotation": back}, "node-1 SIGKILLed, restarted 5 s later")


def instance_kill(world: World) -> dict:
    client = redis.Redis.from_url(world.redis_url, decode_responses=True)
    with Load(world) as load:
        time.sleep(3)
        live = set(client.zrangebyscore("nvllm:instances", time.time(), "+inf"))
        world.nvllm[0].signal(signal.SIGKILL)
        load.dead.add(0)
        killed = time.monotonic()
        others_lease = None
        try:
            wait(lambda: len(set(client.zrangebyscore("nvllm:instances", time.time(), "+inf")) & live) == 1
                 and len(client.keys("nvllm:inflight:*")) <= 1, 30, "the dead instance's lease to end")
            others_lease = time.monotonic() - killed
        except TimeoutError:
            pass
        time.sleep(2)
    client.close()
    return report("instance-kill", load, {"dead instance's load gone": others_lease},
                  "nvllm-0 SIGKILLed while streaming (not restarted); its clients then send to nvllm-1; "
                  "failures 'via 0' are the requests it held")


def redis_down(world: World, freeze: bool, hold: float = 20) -> dict:
    assert world.store is not None
    with Load(world) as load:
        time.sleep(3)
        if freeze:
            world.store.signal(signal.SIGSTOP)
        else:
            world.store.signal(signal.SIGKILL)
        api_during = [world.api(0, "GET", "/api/node/node/all")[0] for _ in range(2)]
        probe_started = time.monotonic()
        world.api(1, "GET", "/api/node/node/all")
        api_answer = time.monotonic() - probe_started
        time.sleep(hold - (time.monotonic() - probe_started))
        if freeze:
            world.store.signal(signal.SIGCONT)
        else:
            world.store.start()
        healed = time.monotonic()
        back = api_back(world, healed)
        time.sleep(2)
    name = "redis-freeze" if freeze else "redis-kill"
    return report(name, load, {"API answering again": back, "API's 503 took": api_answer},
                  f"Redis {'SIGSTOPped' if freeze else 'SIGKILLed'} for {hold:.0f} s; API during: {api_during}")


def redis_failover(world: World) -> dict:
    assert world.ha is not None
    with Load(world) as load:
        time.sleep(3)
        world.ha.kill_primary()
        killed = time.monotonic()
        back = api_back(world, killed)
        time.sleep(2)
    return report("redis-failover", load, {"API answering again after the kill": back},
                  "Sentinel primary SIGKILLed; replica promoted")


class Blackhole:
    """A TCP relay between one instance and Redis that can be cut: once cut,
    it accepts connections and holds them silent (a partition seen from a
    client: nothing refused, nothing answered)."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.links: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.links.append(client)
            if self.cut.is_set():
                continue  # held open, never answered
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.links.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.cut.is_set():  # swallow: the far side hears nothing
                time.sleep(0.05)
            try:
                sink.sendall(data)
            except OSError:
                return

    def heal(self) -> None:
        self.cut.clear()
        for sock in self.links:  # held connections are dropped, as after a partition
            sock.close()
        self.links = []

    def close(self) -> None:
        self.listener.close()
        self.heal()


def instance_partition(world: World) -> dict:
    relay: Blackhole = world.relay  # type: ignore[attr-defined]
    with Load(world) as load:
        time.sleep(3)
        relay.cut.set()
        started = time.monotonic()
        status = world.api(0, "GET", "/api/node/node/all")[0]
        api_answer = time.monotonic() - started
        other = world.api(1, "GET", "/api/node/node/all")[0]
        time.sleep(20 - api_answer)
        relay.heal()
        healed = time.monotonic()
        back = api_back(world, healed)
        time.sleep(2)
    relay.close()
    return report("instance-partition", load, {"API answering again": back, "cut instance's 503 took": api_answer},
                  f"nvllm-0 cut from Redis (black hole) for 20 s; its API {status}, the other's {other}")


DRAIN_STREAMS = 200
# With these, a stream lasts about 5 s, so 200 clients keep about 200 streams
# in flight at some 2,000 tokens/s in all (what 2 shared cores relay well).
DRAIN_NODE_ARGS = ["--max-num-seqs", "256", "--step-time", "0.1"]
DRAIN_TOKENS = 50


def worker_token(world: World) -> str:
    """A worker account's long-lived token, as an operator makes one for an agent."""
    world.api(0, "POST", "/api/user/register", {"username": "chaos-agent", "password": "chaos-agent-password",
                                                "role": "worker"})
    status, body = world.api(0, "POST", "/api/user/token/chaos-agent", {"ttl": 3600})
    assert status == 200, body
    return body["data"]["token"]


def node_status(world: World, node: int) -> tuple[int, dict]:
    status, body = world.api(0, "GET", f"/api/node/node/status/node-{node}")
    return status, body.get("data") or {}


def node_in_flight(world: World, node: int) -> int | None:
    try:
        answer = world.http.request("GET", f"http://127.0.0.1:{world.node_ports[node]}/fake/stats", timeout=2)
    except urllib3.exceptions.HTTPError:
        return None
    return int(json.loads(answer.data)["in_flight"])


def routes_to(world: World, instance: int, nodes: set[str]) -> bool:
    """A short completion through `instance` was answered by one of `nodes`."""
    try:
        answer = world.http.request("POST", world.url(instance) + "/v1/chat/completions", headers=world.auth(),
                                    body=json.dumps({"model": MODEL, "max_tokens": 1,
                                                     "messages": [{"role": "user", "content": "probe"}]}),
                                    timeout=10)
    except urllib3.exceptions.HTTPError:
        return False
    return answer.status == 200 and answer.headers.get("X-NVLLM-Node", "") in nodes


def drain(world: World) -> dict:
    """node-1, registered by a real agent, alone in the fleet until it holds
    DRAIN_STREAMS streams; then the other nodes join and the agent gets
    SIGTERM: it marks the node draining, waits until nvllm has nothing in
    flight to it and vLLM runs nothing, and deletes it."""
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("NVLLM_")}
    agent_env.update(NVLLM_TOKEN=worker_token(world), NVLLM_LOG_LEVEL="INFO")
    agent = Proc("agent-1", [sys.executable, "-m", "agent", "--server", world.url(0),
                             "--vllm", f"http://127.0.0.1:{world.node_ports[1]}", "--node-id", "node-1",
                             "--advertise-address", "127.0.0.1", "--interval", "1", "--drain-grace", "90"],
                 world.logdir, agent_env)
    world.procs.append(agent)
    for i in range(len(world.nvllm)):
        wait(lambda i=i: routes_to(world, i, {"node-1"}), 30, "node-1 routable")
    with Load(world, clients=DRAIN_STREAMS, max_tokens=DRAIN_TOKENS) as load:
        wait(lambda: node_status(world, 1)[1].get("inflight", 0) >= DRAIN_STREAMS - 5, 60,
             f"{DRAIN_STREAMS} streams on node-1")
        world.register(0)
        world.register(2)
        for i in range(len(world.nvllm)):
            wait(lambda i=i: routes_to(world, i, {"node-0", "node-2"}), 30, "the other nodes routable")
        at_drain = node_status(world, 1)[1].get("inflight")
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        drained_at = time.monotonic()
        # The agent deletes the node within moments of nvllm's count reaching
        # 0, so a 404 counts as the 0 this poll missed; the node's own count
        # of requests in flight is read apart.
        times: dict[str, float | None] = {"nvllm's inflight 0": None, "node-1 idle (its own count)": None,
                                          "the agent deleted node-1": None}
        while time.monotonic() - drained_at < 90 and not all(times.values()):
            status, data = node_status(world, 1)
            elapsed = time.monotonic() - drained_at
            if status == 404 or data.get("inflight") == 0:
                times["nvllm's inflight 0"] = times["nvllm's inflight 0"] or elapsed
            if status == 404:
                times["the agent deleted node-1"] = times["the agent deleted node-1"] or elapsed
            if node_in_flight(world, 1) == 0:
                times["node-1 idle (its own count)"] = times["node-1 idle (its own count)"] or elapsed
            time.sleep(0.05)
        code = agent.process.wait(90)
        time.sleep(2)
    return report("node-drain", load, times,
                  f"node-1 held {at_drain} of {DRAIN_STREAMS} clients' streams when its agent got SIGTERM; "
                  f"the agent exited {code}; node-1 completed {world.served(1)} requests in all")


HAPROXY_CONFIG = """\
global
    maxconn 4096
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A connection refused (an instance between its stop and its start) is
    # tried again, on the other instance for the last try.
    retries 3
    option redispatch

frontend clients
    bind 127.0.0.1:{port}
    default_backend nvllm

backend nvllm
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}

frontend stats
    mode http
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


class Balancer:
    """HAProxy in TCP mode in front of the instances, as an operator would run
    it: health checks GET /readyz every 0.5 s (out after 2 failures, back
    after 2 passes)."""

    def __init__(self, world: World) -> None:
        self.port, self.stats_port, self.logdir = free_port(), free_port(), world.logdir
        servers = "\n".join(f"    server nvllm-{i} 127.0.0.1:{port} check"
                            for i, port in enumerate(world.nvllm_ports))
        config = world.logdir / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, stats_port=self.stats_port, servers=servers))
        world.procs.append(Proc("haproxy", [haproxy_binary(), "-db", "-f", str(config)], world.logdir))
        names = {f"nvllm-{i}" for i in range(len(world.nvllm_ports))}
        wait(lambda: set(self.up()) == names, 20, "HAProxy to see every instance up")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> list[str]:
        """The instances HAProxy sends to (its stats page, as CSV)."""
        try:
            answer = urllib3.request("GET", f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2)
        except urllib3.exceptions.HTTPError:
            return []
        rows = csv.DictReader(io.StringIO(answer.data.decode().lstrip("# ")))
        return [row["svname"] for row in rows
                if row["pxname"] == "nvllm" and row["svname"] != "BACKEND" and row["status"] == "UP"]


    def down_reasons(self) -> list[str]:
        """Why HAProxy's checks took a server out, from its log."""
        text = (self.logdir / "haproxy.log").read_text(errors="replace")
        return sorted({m.group(1) for m in re.finditer(r"is DOWN, reason: ([^,]+(?:, code: \d+)?)", text)})


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


# Longer than HAProxy's time to mark a server down here (fall 2 x inter 0.5 s).
SHUTDOWN_DELAY = "1.5"


def rolling_restart(name: str) -> Callable[[World], dict]:
    def run(world: World) -> dict:
        return restart_each(world, name)
    return run


def restart_each(world: World, name: str) -> dict:
    """Each instance in turn: SIGTERM to its server process (as `kill PID`,
    or an orchestrator stopping it), wait for it to exit, start it again, and
    wait until HAProxy's checks have it back before the next."""
    balancer = world.balancer
    assert balancer is not None
    timings: dict[str, float | None] = {}
    codes = []
    with Load(world, urls=[balancer.url]) as load:
        time.sleep(3)
        for i, proc in enumerate(world.nvllm):
            assert proc.process is not None
            started = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            codes.append(proc.process.wait(90))
            stopped = time.monotonic()
            proc.start()
            wait(lambda i=i: f"nvllm-{i}" in balancer.up(), 60, f"nvllm-{i} back in HAProxy")
            timings[f"nvllm-{i} stop took"] = stopped - started
            timings[f"nvllm-{i} back in HAProxy after its start"] = time.monotonic() - stopped
        time.sleep(3)
    delay = world.nvllm_env.get("NVLLM_SHUTDOWN_DELAY", "0")
    return report(name, load, timings,
                  f"both instances behind HAProxy (TCP mode, checks on /readyz), restarted one after the other "
                  f"with SIGTERM, NVLLM_SHUTDOWN_DELAY={delay}; exit codes {codes}; 'via 0' is HAProxy; "
                  f"HAProxy took them out on: {balancer.down_reasons()}")


# name: (the world it needs, the scenario, nvllm's environment beyond ENV)
SCENARIOS: dict[str, tuple[str, Callable[[World], dict], dict[str, str]]] = {
    "node-kill": ("plain", node_kill, {}),
    "node-hang": ("plain", node_fault("hang", 8), {}),
    "node-error500": ("plain", node_fault("error500", 8), {}),
    "node-slow": ("plain", node_fault("slow", 8, factor=5), {}),
    "node-drain": ("drain", drain, {}),
    "instance-kill": ("plain", instance_kill, {}),
    "redis-kill": ("plain", lambda w: redis_down(w, freeze=False), {}),
    "redis-freeze": ("plain", lambda w: redis_down(w, freeze=True), {}),
    "instance-partition": ("relay", instance_partition, {}),
    "redis-failover": ("ha", redis_failover, {}),
    "rolling-restart": ("balancer", rolling_restart("rolling-restart"), {"NVLLM_SHUTDOWN_DELAY": SHUTDOWN_DELAY}),
    "rolling-restart-no-delay": ("balancer", rolling_restart("rolling-restart-no-delay"), {}),
}


def run(name: str) -> dict:
    kind, scenario, env = SCENARIOS[name]
    logdir = Path(tempfile.mkdtemp(prefix=f"nvllm-chaos-{name}-"))
    world = World(logdir, nvllm_env=env)
    log(f"{name}: logs in {logdir}")
    try:
        if kind == "ha":
            world.start_ha()
        else:
            world.start_store()
        if kind == "drain":
            world.node_args = DRAIN_NODE_ARGS
        world.start_nodes()
        if kind == "relay":
            world.relay = Blackhole(world.store_port)  # type: ignore[attr-defined]
            world.start_nvllm(2, [f"redis://127.0.0.1:{world.relay.port}/0", world.redis_url])  # type: ignore
        else:
            world.start_nvllm(2)
        if kind == "drain":
            world.login()  # the scenario registers the nodes itself
        else:
            world.register_nodes()
        if kind == "balancer":
            world.balancer = Balancer(world)
        return scenario(world)
    finally:
        world.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help="names (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; --list shows them")
    for binary in ("redis-server", "redis-sentinel"):
        if not shutil.which(binary):
            parser.error(f"{binary} is not installed (Debian: apt-get install {binary})")
    needs_haproxy = any(SCENARIOS[name][0] == "balancer" for name in args.scenarios or SCENARIOS)
    if needs_haproxy and not os.access(haproxy_binary(), os.X_OK):
        parser.error("haproxy is not installed (Debian: apt-get install haproxy)")
    rows, broken = [], []
    for name in args.scenarios or SCENARIOS:
        try:
            rows.append(run(name))
        except (TimeoutError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            # One scenario's world that would not come up does not stop the others.
            log(f"{name}: did not run to the end: {exc}")
            broken.append(name)
    bad = [r["scenario"] for r in rows if r["failed_before_first_byte"]]
    log(f"{len(rows)} scenario(s); with failures before the first byte: {', '.join(bad) or 'none'}"
        + (f"; not run to the end: {', '.join(broken)}" if broken else ""))
    return 1 if bad or broken else 0


if __name__ == "__main__":
    sys.exit(main())

"""A real highly available Redis on 127.0.0.1 free ports: a primary, one
replica and three sentinels (quorum 2), as Debian's redis-server and
redis-sentinel run them. Used by the Sentinel tests and bench/chaos.py.
Everything it starts, it stops."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

SERVICE = "nvllm"
PASSWORD = "ha-test-password"
# Short, so a failover takes a few seconds: the primary is judged down after
# 1 s of silence, and a failed election is retried after 3 s.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisHA:
    def __init__(self, workdir: Path, redis_server: str, redis_sentinel: str) -> None:
        self.workdir = workdir
        self.redis_server = redis_server
        self.redis_sentinel = redis_sentinel
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}/0"

    def start(self) -> RedisHA:
        self._server("primary")
        self._server("replica", replicaof=self.ports["primary"])
        for i, port in enumerate(self.sentinel_ports):
            self._sentinel(i, port)
        ready = lambda: self.in_sync() and self.sentinels_agree(self.ports["primary"])  # noqa: E731
        self.wait(ready, 20, "replication and sentinels")
        return self

    def _server(self, name: str, replicaof: int | None = None) -> None:
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        args = [self.redis_server, "--bind", "127.0.0.1", "--port", str(self.ports[name]), "--dir", str(directory),
                "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD]
        if replicaof:
            args += ["--replicaof", "127.0.0.1", str(replicaof)]
        self.processes[name] = self._spawn(name, args)

    def _sentinel(self, index: int, port: int) -> None:
        directory = self.workdir / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"  # sentinels rewrite their config: each its own file
        config.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['primary']} 2\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n",
            encoding="utf-8",
        )
        self.processes[f"sentinel-{index}"] = self._spawn(f"sentinel-{index}", [self.redis_sentinel, str(config)])

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def client(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.ports[name], password=PASSWORD, socket_timeout=1, decode_responses=True)

    def sentinel_primary(self, index: int) -> int | None:
        """The primary's port as sentinel `index` names it."""
        client = redis.Redis(port=self.sentinel_ports[index], socket_timeout=1, decode_responses=True)
        try:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(reply[1]) if reply else None
        except redis.RedisError:
            return None
        finally:
            client.close()

    def sentinels_agree(self, port: int) -> bool:
        return all(self.sentinel_primary(i) == port for i in range(len(self.sentinel_ports)))

    def in_sync(self) -> bool:
        """The replica is connected and has everything the primary wrote."""
        primary, replica = self.client("primary"), self.client("replica")
        try:
            info = replica.info("replication")
            return info.get("master_link_status") == "up" and primary.wait(1, 1000) >= 1
        except redis.RedisError:
            return False
        finally:
            primary.close()
            replica.close()

    def kill_primary(self) -> None:
        process = self.processes["primary"]
        process.send_signal(signal.SIGKILL)
        process.wait()

    @staticmethod
    def wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

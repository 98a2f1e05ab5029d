"""Integration fixtures for the agent: nvllm as a process, a worker token, a fake vLLM,
and `python -m agent` as a process. Every process started here is stopped here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

from tests.integration.conftest import (  # noqa: F401 - start_service is a fixture
    ROOT,
    Service,
    start_service,
    wait_for,
)

WORKER = "agent-worker"
WORKER_PASSWORD = "agent-worker-password"
STOP_TIMEOUT = 15.0


@pytest.fixture
def nvllm(start_service: Callable[..., Service]) -> Service:  # noqa: F811 - the fixture
    return start_service()


@pytest.fixture
def restart_nvllm(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """restart(service, while_down=None): stop it, call while_down() (to wait
    for something to notice), and start it again on the same port and data
    dir, as an operator restarting nvllm would. The new process is stopped at
    teardown."""
    started: list[Service] = []

    def restart(old: Service, while_down: Callable[[], object] | None = None) -> Service:
        assert old.stop() == 0
        if while_down is not None:
            while_down()
        log_path = tmp_path / f"nvllm-restarted-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "main.py", "--host", "127.0.0.1", "--port", str(old.port)],
                cwd=ROOT, env=old.env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )
        service = Service(process, old.port, old.data_dir, log_path, old.env)
        started.append(service)
        wait_for(lambda: _healthy(service), 30, "nvllm to answer /healthz after its restart")
        return service

    yield restart
    for service in started:
        service.stop()


def _healthy(service: Service) -> bool:
    if not service.alive():
        pytest.fail(f"nvllm exited with {service.process.returncode}:\n{service.log()[-3000:]}")
    try:
        return service.request("GET", "/healthz", timeout=1).status == 200
    except urllib3.exceptions.HTTPError:
        return False


@pytest.fixture
def worker_token(nvllm: Service) -> str:
    """A worker-role token, made the way an operator would: a worker user, then its login."""
    admin = nvllm.login()
    user = {"username": WORKER, "password": WORKER_PASSWORD, "role": "worker"}
    nvllm.request("POST", "/api/user/register", token=admin, body=user)
    return nvllm.login(WORKER, WORKER_PASSWORD)


@pytest.fixture
def fake_vllm():
    from fakevllm import FakeVLLM

    fake = FakeVLLM(models=["fake-model"]).start()
    yield fake
    fake.stop()


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; SIGKILL (and fail) when it does not leave."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"agent did not exit within {timeout} s of SIGTERM\n{self.log()[-3000:]}")
        return self.process.returncode


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """run_agent(server, token, *flags) -> the running `python -m agent`.
    The token goes in the environment, as the docs advise."""
    started: list[AgentProcess] = []

    def run(server: str, token: str, *flags: str) -> AgentProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NVLLM_", "VLLM_"))}
        env.update(NVLLM_SERVER=server, NVLLM_TOKEN=token, PYTHONUNBUFFERED="1")
        log_path = tmp_path / f"agent-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "agent", *flags],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            )
        agent = AgentProcess(process, log_path)
        started.append(agent)
        return agent

    yield run
    for agent in started:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


__all__ = ["AgentProcess", "wait_for"]

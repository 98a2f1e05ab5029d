"""The service with its embedded store: clean stop on SIGTERM, data kept
across restarts, a store that dies is brought back, and the command line
shares the running service's store."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import free_port, pid_alive, run_cli, wait_for

pytestmark = pytest.mark.integration


def register(service, token: str, node_id: str) -> dict:
    body = {"node_id": node_id, "node_address": "10.0.0.7", "node_status": "online",
            "remark": "GPU节点1", "timeout": 3600, "node_info": {"running": 3, "waiting": 1, "kv_cache": 7}}
    return service.request("POST", "/api/node/node/register", token=token, body=body).data


def test_sigterm_stops_cleanly_and_restart_keeps_every_node(start_service, tmp_path):
    data_dir = tmp_path / "data"
    service = start_service(data_dir=data_dir, NVLLM_WORKERS="2")
    assert f"nvllm listening on {service.base_url} (2 workers)" in service.log()
    token = service.login()
    before = {n: register(service, token, n) for n in (f"gpu-{i:03d}" for i in range(30))}
    store_pid = service.store_state()["pid"]
    assert pid_alive(store_pid)
    # A pooled keep-alive connection must not hold the stop up.
    assert service.request("GET", "/healthz").status == 200

    started = time.monotonic()
    assert service.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    wait_for(lambda: not pid_alive(store_pid), 5, "the store to exit with the service")
    assert not (data_dir / "store.json").exists()
    log = service.log()
    assert "embedded store stopped" in log
    assert "Traceback" not in log

    again = start_service(data_dir=data_dir)
    # The token secret lives in the store too, so tokens outlive a restart.
    listed = again.request("GET", "/api/node/node/all", token=token).data
    assert [n["node_id"] for n in listed] == sorted(before)
    for node in listed:
        kept = before[node["node_id"]]
        for name in ("create_time", "remark", "node_info", "node_address", "timeout"):
            assert node[name] == kept[name], name
    assert again.store_state()["pid"] != store_pid


def test_by_default_one_worker_per_usable_core(start_service):
    from server.cpus import usable_cpus

    service = start_service(NVLLM_WORKERS=None)
    expected = min(usable_cpus(), 64)
    assert f"nvllm listening on {service.base_url} ({expected} worker{'s' if expected > 1 else ''})" in service.log()
    wait_for(lambda: len(worker_pids(service.process.pid)) == expected, 10, f"{expected} workers")
    # Nothing alarming on the console of a plain start (gevent's patching
    # warns of modules nvllm never uses).
    assert "Warning" not in service.log()


def worker_pids(arbiter: int) -> list[int]:
    """gunicorn's workers: the arbiter's children that run Python (not the
    embedded store's server)."""
    try:
        with open(f"/proc/{arbiter}/task/{arbiter}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return [p for p in children if "python" in os.path.basename(os.readlink(f"/proc/{p}/exe"))]


def test_a_killed_embedded_store_is_restarted_with_its_data(start_service, tmp_path):
    service = start_service(data_dir=tmp_path / "data")
    token = service.login()
    register(service, token, "survivor")
    state = service.store_state()
    os.kill(state["pid"], signal.SIGKILL)

    def recovered() -> bool:
        answer = service.request("GET", "/api/node/node/get_node/survivor", token=token)
        assert answer.status in (200, 503), answer.text
        return answer.status == 200

    wait_for(recovered, 10, "the API to recover after the store was killed")
    assert service.alive()
    # store.json is rewritten just after the new store answers.
    wait_for(lambda: service.store_state()["pid"] != state["pid"], 5, "store.json to name the new store")
    assert service.store_state()["port"] == state["port"]
    assert "embedded store restarted" in service.log()


def test_command_line_uses_the_running_services_store(start_service, tmp_path):
    service = start_service(data_dir=tmp_path / "data")
    store_pid = service.store_state()["pid"]

    added = run_cli(["user", "add", "alice", "--role", "worker"], service.env, stdin="alice-password-1\n")
    assert added.returncode == 0, added.stderr
    assert "embedded store started" not in added.stderr  # it borrowed the service's
    listed = run_cli(["user", "list"], service.env)
    assert listed.returncode == 0, listed.stderr
    assert {line.split("\t")[0]: line.split("\t")[1] for line in listed.stdout.splitlines()} == {
        "admin": "admin", "alice": "worker",
    }

    assert service.login("alice", "alice-password-1")
    minted = run_cli(["token", "alice"], service.env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    register(service, token, "agent-node")

    removed = run_cli(["user", "remove", "alice"], service.env)
    assert removed.returncode == 0, removed.stderr
    wait_for(
        lambda: service.request("GET", "/api/node/node/all", token=token).status == 401,
        10, "alice's token to stop working",
    )
    assert service.store_state()["pid"] == store_pid

    # With the service stopped, a command starts the store for itself and
    # stops it again.
    assert service.stop() == 0
    alone = run_cli(["user", "list"], service.env)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.split("\t")[0] == "admin"
    assert not (service.data_dir / "store.json").exists()

    missing = run_cli(["user", "remove", "nobody"], service.env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_a_second_service_on_the_same_data_dir_is_refused(start_service, tmp_path):
    service = start_service(data_dir=tmp_path / "data")
    second = run_cli(["--port", str(free_port())], service.env)
    assert second.returncode == 1
    assert "already runs the embedded store" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert service.alive()
    assert service.login()

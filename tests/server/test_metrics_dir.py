"""The server's metrics directory: private, fresh, removed by the server that
made it (not by a worker leaving), stale ones of killed servers cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.metrics_dir import ENV, metrics_dir, worker_gone


@pytest.fixture
def not_imported(monkeypatch):
    """As in a fresh server process: prometheus_client not imported yet."""
    monkeypatch.delitem(sys.modules, "prometheus_client", raising=False)
    monkeypatch.delenv(ENV, raising=False)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_private_fresh_directory_named_for_the_workers(tmp_path, not_imported):
    with metrics_dir(str(tmp_path)) as path:
        assert path == str(tmp_path / f"metrics.{os.getpid()}") and os.environ[ENV] == path
        assert Path(path).is_dir() and not os.listdir(path)
        assert Path(path).stat().st_mode & 0o777 == 0o700
    assert not Path(path).exists() and ENV not in os.environ


def test_directories_of_servers_no_longer_running_are_removed(tmp_path, not_imported):
    stale, running = tmp_path / f"metrics.{dead_pid()}", tmp_path / f"metrics.{os.getppid()}"
    for directory in (stale, running):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")
    with metrics_dir(str(tmp_path)):
        assert not stale.exists() and running.is_dir()


def test_a_worker_leaving_through_the_same_frames_leaves_it_in_place(tmp_path, not_imported):
    def serve() -> str:
        with metrics_dir(str(tmp_path)) as path:
            worker = os.fork()
            if worker == 0:
                raise SystemExit(0)  # as a gunicorn worker exits
            _, status = os.waitpid(worker, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert Path(path).is_dir()
        return path

    try:
        path = serve()
    except SystemExit:
        os._exit(0)  # the forked worker, past the frames under test
    assert not Path(path).exists()


def test_without_prometheus_client_unimported_there_is_no_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    import prometheus_client  # noqa: F401 - imported, as a worker that imported it early would have

    with metrics_dir(str(tmp_path)) as path:
        assert path is None and ENV not in os.environ
    assert not list(tmp_path.iterdir())


def test_a_gone_workers_live_gauges_are_removed_and_its_counters_kept(tmp_path, monkeypatch):
    for name in ("gauge_livesum_41.db", "gauge_livemax_41.db", "counter_41.db", "gauge_livesum_42.db"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv(ENV, str(tmp_path))
    worker_gone(41)
    assert sorted(os.listdir(tmp_path)) == ["counter_41.db", "gauge_livesum_42.db"]

"""Where the server's worker processes keep their Prometheus values, so that a
scrape answered by any one of them counts the requests of all
(prometheus-client's multiprocess mode).

The directory is private to one server: <NVLLM_DATA_DIR>/metrics.<pid>, made
empty at start (a fresh count, as a restarted single process would have) and
removed at exit; directories left by servers that were killed are removed at
the next start. Another nvllm sharing the data directory keeps its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "metrics."

log = logging.getLogger("nvllm.http")


@contextlib.contextmanager
def metrics_dir(data_dir: str) -> Iterator[str | None]:
    """Name a fresh private directory in PROMETHEUS_MULTIPROC_DIR for the
    workers about to start; yields it (None when multiprocess mode cannot be
    used: prometheus_client was imported already and has chosen in-process
    values)."""
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client imported before the metrics directory was set: metrics are per worker")
        yield None
        return
    path = _make(Path(data_dir))
    owner = os.getpid()
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        yield str(path)
    finally:
        # A worker leaves through this frame too (it was forked inside it):
        # only the server that made the directory removes it.
        if os.getpid() == owner:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            shutil.rmtree(path, ignore_errors=True)


def worker_gone(pid: int) -> None:
    """A worker exited: its live gauges (requests in flight) stop counting.
    Its counters stay in the sum, as they must."""
    path = os.environ.get(ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def _make(data_dir: Path) -> Path:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(data_dir)
        path = data_dir / f"{PREFIX}{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        return path
    except OSError as exc:
        # A data directory that cannot be written (an external Redis needs none).
        log.warning("metrics directory not under %s (%s); using a temporary one", data_dir, exc.strerror)
        return Path(tempfile.mkdtemp(prefix="nvllm-metrics-"))


def _remove_stale(data_dir: Path) -> None:
    for entry in data_dir.glob(f"{PREFIX}*"):
        pid = entry.name.removeprefix(PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

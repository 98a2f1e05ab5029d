"""The embedded store on its own: one store per data directory, found again
by a second process, private files, and a clear error when it cannot start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings
from server.store import SERVICE, STATE_FILE, StoreError, open_store, run_embedded
from tests.integration.conftest import ROOT, free_port, pid_alive, wait_for

pytestmark = pytest.mark.integration

# Prints the URL open_store gives a separate process for the same directory.
OTHER_PROCESS = """
import sys
from config import Settings
from server.store import open_store
with open_store(Settings(data_dir=sys.argv[1])) as url:
    print(url)
"""


def other_process_url(data_dir) -> str:
    result = subprocess.run([sys.executable, "-c", OTHER_PROCESS, str(data_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_redis_url_is_used_as_given(tmp_path):
    with open_store(Settings(redis_url="redis://example.invalid:6379/3", data_dir=str(tmp_path))) as url:
        assert url == "redis://example.invalid:6379/3"
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_borrows_the_running_store(tmp_path):
    data_dir = tmp_path / "data"
    with open_store(Settings(data_dir=str(data_dir)), owner=SERVICE) as url:
        redis.Redis.from_url(url).set("written-by", "owner")
        assert other_process_url(data_dir) == url
        state = json.loads((data_dir / STATE_FILE).read_text())
        assert state["owner"] == SERVICE and state["owner_pid"] == os.getpid()
        assert pid_alive(state["pid"])
        # Another service, though, is refused rather than left depending on us.
        with pytest.raises(StoreError, match="already runs the embedded store"):
            with open_store(Settings(data_dir=str(data_dir)), owner=SERVICE):
                pass
    wait_for(lambda: not pid_alive(state["pid"]), 5, "the store to stop")
    assert not (data_dir / STATE_FILE).exists()
    # Started afresh (new port, new password), with the data kept.
    with open_store(Settings(data_dir=str(data_dir))) as again:
        assert again != url
        assert redis.Redis.from_url(again).get("written-by") == b"owner"


def test_a_commands_store_is_waited_for_not_borrowed(tmp_path):
    """It would vanish under the borrower when its command ends."""
    data_dir = tmp_path / "data"
    with open_store(Settings(data_dir=str(data_dir))) as url:
        waiting = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, str(data_dir)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(0.5)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert out.strip().startswith("redis://") and out.strip() != url


def test_a_stale_state_file_is_ignored(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = {"host": "127.0.0.1", "port": free_port(), "password": "stale", "pid": 1, "owner": "service"}
    (data_dir / STATE_FILE).write_text(json.dumps(stale))
    with open_store(Settings(data_dir=str(data_dir))) as url:
        assert f":{stale['port']}/" not in url
        assert redis.Redis.from_url(url).ping()


def test_the_store_is_private(tmp_path):
    with run_embedded(tmp_path / "data") as store:
        for name in (STATE_FILE, "valkey.conf", "store.lock"):
            mode = stat.S_IMODE((store.data_dir / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        assert stat.S_IMODE(store.data_dir.stat().st_mode) == 0o700
        # Bound to loopback and password-protected: another local user
        # cannot read the users' hashes or the token secret.
        anonymous = redis.Redis(host="127.0.0.1", port=store.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.get("anything")
        config = redis.Redis.from_url(store.url, decode_responses=True)
        assert config.config_get("appendonly") == {"appendonly": "yes"}
        assert config.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert config.config_get("bind") == {"bind": "127.0.0.1"}
        assert config.config_get("protected-mode") == {"protected-mode": "yes"}


def test_a_data_dir_open_to_everyone_is_made_private(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # as a umask of 022 (or an older nvllm) leaves it
    (data_dir / "valkey.log").write_text("")
    os.chmod(data_dir / "valkey.log", 0o644)
    with run_embedded(data_dir) as store:
        redis.Redis.from_url(store.url).set("secret", "x")  # the append-only file gets written
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        written = [p for p in data_dir.rglob("*") if p.is_file()]
        assert any(p.parent.name == "appendonlydir" for p in written)
        for path in [*written, data_dir / "appendonlydir"]:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path.name, oct(path.stat().st_mode))


def test_a_store_that_cannot_start_says_why(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "appendonlydir").mkdir(parents=True)
    (data_dir / "appendonlydir" / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    with pytest.raises(StoreError) as failure:
        with open_store(Settings(data_dir=str(data_dir))):
            pass
    message = str(failure.value)
    assert "exited with code" in message
    assert "valkey.log" in message
    assert len(message.splitlines()) > 1  # the log's tail comes along
    assert not (data_dir / STATE_FILE).exists()


def test_an_unusable_data_dir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot use data directory"):
        with open_store(Settings(data_dir=str(blocker / "data"))):
            pass

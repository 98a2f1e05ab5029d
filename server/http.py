"""Serving nvllm over HTTP: gunicorn with gevent workers in production, Flask's
development server (with the interactive debugger) only under --debug.

gunicorn sets TCP_NODELAY on its TCP listening socket (gunicorn/sock.py,
`TCPSocket.set_options`), and Linux copies it to every accepted connection,
so small streamed chunks (one token per SSE event) leave at once instead of
waiting for Nagle. tests/integration/test_http.py checks it on a live socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import resource
import secrets
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import gevent
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

from config import Settings
from middleware.services import EXTENSION
from server.cpus import usable_cpus
from server.metrics_dir import worker_gone
from server.store import SERVICE, StoreError, open_store
from service.siblings import GROUP_ENV

log = logging.getLogger("nvllm.http")

# Each gevent worker holds this many connections at once: thousands of
# concurrent streams need no more processes, only greenlets.
WORKER_CONNECTIONS = 4096
# gevent workers report to the arbiter from their own loop, so a long stream
# never trips this; it only catches a worker that blocks its loop.
TIMEOUT = 60
# On SIGTERM, requests in flight (streams included) get this long to finish
# once the listener is closed (after NVLLM_SHUTDOWN_DELAY).
GRACEFUL_TIMEOUT = 30
# Once a stop began, a kept-alive connection waits this long after its last
# answer for a next request (then served with "Connection: close"). Its
# client was told keep-alive and sends the next request at once; closing at
# once would lose that request to the race between the close and the send.
STOP_IDLE_GRACE = 1.0
# Longer than the idle timeout of common load balancers in front (60 s), so
# they, not we, close idle connections and never send on a closing one.
KEEPALIVE = 75
# NVLLM_WORKERS=0 (the default) starts one worker per usable core, up to this.
MAX_WORKERS = 64
# Each proxied stream holds two descriptors (client and node).
WANTED_OPEN_FILES = 65536


def serve(settings: Settings, app_factory: Callable[[Settings], Any]) -> int:
    """Serve until SIGTERM or SIGINT; return the process's exit code. Each
    worker builds its app with `app_factory` (main.py passes its own), so this
    module never imports main."""
    address = display_address(settings.host, settings.port)
    try:
        check_bindable(settings.host, settings.port)
    except OSError as exc:
        print(f"nvllm: cannot listen on {address}: {_reason(exc)}", file=sys.stderr)
        return 1
    raise_open_files_limit()
    # Until gunicorn installs its own handlers, SIGTERM unwinds like Ctrl-C,
    # so a store being started is stopped again.
    signal.signal(signal.SIGTERM, _exit_now)
    try:
        with open_store(settings, owner=SERVICE) as url:
            settings = settings.replace(redis_url=url)
            if settings.debug:
                return serve_debug(settings, address, app_factory)
            return serve_gunicorn(settings, address, app_factory)
    except StoreError as exc:
        print(f"nvllm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except SystemExit as exc:
        return _exit_code(exc)


def serve_gunicorn(settings: Settings, address: str, app_factory: Callable[[Settings], Any]) -> int:
    try:
        workers = worker_count(settings)
        note = f" ({workers} worker{'s' if workers > 1 else ''})"
        if workers > 1:
            # The workers of this server find each other by it (service/siblings.py).
            os.environ[GROUP_ENV] = secrets.token_hex(6)
        else:
            os.environ.pop(GROUP_ENV, None)  # not one inherited from whatever started us
        NvllmServer(settings, app_factory=app_factory, on_ready=lambda: _announce(address, note)).run()
    except SystemExit as exc:  # gunicorn always leaves through sys.exit
        return _exit_code(exc)
    return 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    return 1


def worker_count(settings: Settings) -> int:
    """NVLLM_WORKERS, or one worker per core this process may use: every
    core moves bytes, and routing stays consistent across workers through
    the shared load (README, "Several workers")."""
    return settings.workers or min(usable_cpus(), MAX_WORKERS)


def serve_debug(settings: Settings, address: str, app_factory: Callable[[Settings], Any]) -> int:
    """Flask's dev server with the debugger: for development only, since the
    debugger runs any Python for whoever reaches the port."""
    app = app_factory(settings)
    log.warning("debug mode: Flask's development server and debugger; never expose it")
    _announce(address)
    try:
        # No reloader: its second process would need a store of its own.
        app.run(host=settings.host, port=settings.port, debug=True, use_reloader=False, threaded=True)
    finally:
        close_app(app)
    return 0


class NvllmServer(BaseApplication):
    """gunicorn, configured in code. Each worker builds its own app after
    gevent has patched it (no preload), so no socket or client made before
    the fork is shared between workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        app_factory: Callable[[Settings], Any],
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.app_factory = app_factory
        self.on_ready = on_ready
        super().__init__(prog="nvllm")

    def load_config(self) -> None:
        on_ready = self.on_ready
        options = {
            "bind": [gunicorn_bind(self.settings.host, self.settings.port)],
            "worker_class": NvllmWorker,
            "workers": worker_count(self.settings),
            "worker_connections": WORKER_CONNECTIONS,
            "timeout": TIMEOUT,
            # The arbiter's deadline for its workers counts from its own
            # SIGTERM, so it includes the workers' shutdown delay.
            "graceful_timeout": GRACEFUL_TIMEOUT + math.ceil(self.settings.shutdown_delay),
            "keepalive": KEEPALIVE,
            "preload_app": False,
            "accesslog": None,  # the app logs one line per request itself
            "errorlog": "-",
            "loglevel": self.settings.log_level.lower(),
            "logger_class": NvllmGunicornLogger,
            "proc_name": "nvllm",
            # gunicorn's runtime control socket defaults to one path per user
            # ($HOME/.gunicorn/gunicorn.ctl), which two instances would share.
            "control_socket_disable": True,
            "when_ready": lambda _arbiter: on_ready() if on_ready else None,
            "post_fork": lambda _arbiter, _worker: _worker_booting(),
            "worker_exit": lambda _arbiter, worker: close_app(getattr(worker, "wsgi", None)),
            "child_exit": lambda _arbiter, worker: worker_gone(worker.pid),
        }
        for name, value in options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return self.app_factory(self.settings)


def close_app(app: Any) -> None:
    """Stop an app's background work and withdraw its in-flight counts, so
    other instances do not see this one's load after it is gone."""
    services = getattr(app, "extensions", {}).get(EXTENSION)
    if services is None:
        return
    if services.prober is not None:
        services.prober.close()
    services.tokens.close()
    services.aliases.close()
    services.proxy.fleet.close()
    if services.siblings is not None:
        services.siblings.close()
    services.stats.close()  # its last second of request statistics


class NvllmWorker(GeventWorker):
    """gunicorn's gevent worker, with a stop that loses no request:

    - On SIGTERM the worker keeps accepting for NVLLM_SHUTDOWN_DELAY seconds
      while /readyz answers 503 and every answer says "Connection: close",
      so a balancer's health checks take the instance out, and clients on
      kept-alive connections reconnect elsewhere, before the listener
      closes. A second SIGTERM (the arbiter forwards its own; a whole
      process group may get one) changes nothing.
    - Idle kept-alive connections are closed STOP_IDLE_GRACE after their last
      answer, not when KEEPALIVE ends: gunicorn's own stop waits for them,
      so a client holding a pooled connection (an SDK, an agent, a proxy in
      front) would stretch every restart to GRACEFUL_TIMEOUT.
    - Requests in flight still run to the end, for up to GRACEFUL_TIMEOUT
      after the listener closed.

    It also bounds what a slow client can hold (slowloris): a request's
    headers must arrive within NVLLM_HEADER_TIMEOUT, its body within
    NVLLM_BODY_TIMEOUT, and one client address holds at most
    NVLLM_MAX_CONNECTIONS_PER_CLIENT of this worker's connections."""

    def init_process(self) -> None:
        self.idle: dict[Any, _IdleWait] = {}
        self.per_client: dict[str, int] = {}
        self.stopping = False
        settings: Settings = self.app.settings
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.max_per_client = settings.max_connections_per_client
        self.shutdown_delay = settings.shutdown_delay
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        peer = addr[0] if isinstance(addr, tuple) and addr else None
        if peer is not None and self.max_per_client:
            if self.per_client.get(peer, 0) >= self.max_per_client:
                _refuse(client)
                return
            self.per_client[peer] = self.per_client.get(peer, 0) + 1
        try:
            super().handle(listener, _ClientSocket(client, self.header_timeout), addr)
        finally:
            if peer is not None and self.max_per_client:
                left = self.per_client.pop(peer, 1) - 1
                if left > 0:
                    self.per_client[peer] = left

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        if self.stopping:
            req.must_close = True  # gunicorn then answers "Connection: close" and closes after
        if isinstance(sock, _ClientSocket):
            sock.expect_body(self.body_timeout)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if isinstance(sock, _ClientSocket):
                sock.expect_next_request()

    def timeout_ctx(self) -> _IdleWait:
        # gunicorn enters this only around the wait for a connection's next request.
        return _IdleWait(self)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # A signal handler: only flag, and leave the work to the loop.
        if self.stopping:
            return
        self.stopping = True
        gevent.get_hub().loop.run_callback(self._begin_stop)

    def _begin_stop(self) -> None:
        # A worker signalled while it was still loading has no app yet.
        services = getattr(getattr(self, "wsgi", None), "extensions", {}).get(EXTENSION)
        if services is not None:
            services.lifecycle.drain()
        for waiter in list(self.idle.values()):
            waiter.expire(STOP_IDLE_GRACE)
        if self.shutdown_delay > 0:
            log.info("stopping: /readyz answers 503; the listener closes in %gs", self.shutdown_delay)
            gevent.spawn_later(self.shutdown_delay, self._stop_accepting)
        else:
            self._stop_accepting()

    def _stop_accepting(self) -> None:
        # gunicorn's graceful stop: the run loop closes the listener, then
        # waits for the requests in flight.
        super().handle_exit(signal.SIGTERM, None)


class _IdleWait:
    """gunicorn's keep-alive wait (a silent gevent.Timeout) that its worker
    can end early; ending it closes the connection as an idle timeout does."""

    def __init__(self, worker: NvllmWorker) -> None:
        self.worker = worker
        self.began = time.monotonic()
        wait = min(STOP_IDLE_GRACE, worker.cfg.keepalive) if worker.stopping else worker.cfg.keepalive
        self.timeout = gevent.Timeout(wait, False)
        self.greenlet: Any = None
        self.timer: Any = None  # held: a watcher nobody references may never fire

    def __enter__(self) -> gevent.Timeout:
        self.greenlet = gevent.getcurrent()
        self.worker.idle[self.greenlet] = self
        return self.timeout.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        self.worker.idle.pop(self.greenlet, None)
        if self.timer is not None:
            self.timer.stop()
        return self.timeout.__exit__(*exc)

    def expire(self, grace: float) -> None:
        """End the wait once the connection has been idle `grace` seconds."""
        left = self.began + grace - time.monotonic()
        if left <= 0:
            self.timeout.cancel()
            gevent.get_hub().loop.run_callback(self._throw)
        else:
            self.timer = gevent.get_hub().loop.timer(left)
            self.timer.start(self._throw)

    def _throw(self) -> None:
        # Only if the connection is still idle: a request that arrived since
        # must not be interrupted.
        if self.worker.idle.get(self.greenlet) is self:
            self.timeout.cancel()
            self.greenlet.throw(self.timeout)


class _ClientSocket:
    """A client's socket whose reads have deadlines: the headers of a request
    must arrive within `header_timeout` of its first byte (of the accept, for
    a connection's first request), and its body within the body timeout once
    the headers are in. Past a deadline the client counts as gone: reads
    return b"", which gunicorn and werkzeug already treat as a disconnect, so
    the connection is closed quietly and its slot freed. Waiting for a next
    request on a kept-alive connection stays bounded by KEEPALIVE alone."""

    def __init__(self, sock: socket.socket, header_timeout: float) -> None:
        self._sock = sock
        self._header_timeout = header_timeout
        self._deadline: float | None = time.monotonic() + header_timeout
        self._expired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def expect_body(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def expect_next_request(self) -> None:
        self._deadline = None

    def upgraded(self) -> socket.socket:
        """The bare socket, for a connection that switched protocols (a
        WebSocket): its frames may come minutes apart, so no read deadline."""
        self._deadline = None
        return self._sock

    def recv(self, size: int, *flags: int) -> bytes:
        if self._expired:
            return b""
        if self._deadline is None:
            data = self._sock.recv(size, *flags)
            if data:  # a next request has begun: its headers have a deadline
                self._deadline = time.monotonic() + self._header_timeout
            return data
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return self._expire()
        # Only this read gets the timeout: writes (long streams to a slow
        # reader) must not inherit it.
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            return self._expire()
        finally:
            self._sock.settimeout(None)

    def _expire(self) -> bytes:
        self._expired = True
        return b""


_REFUSAL = b'{"error": {"message": "too many connections", "type": "rate_limit_error"}}'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL)
)


def _refuse(client: socket.socket) -> None:
    """Answer a connection over the per-client cap at once and close it; the
    answer fits the socket's send buffer, so a client that never reads cannot
    hold this up."""
    with contextlib.suppress(OSError):
        client.setblocking(False)
        client.send(TOO_MANY_CONNECTIONS)
    with contextlib.suppress(OSError):
        client.close()


class NvllmGunicornLogger(glogging.Logger):
    """gunicorn's own messages go through nvllm's handlers (plain or JSON
    lines), and it writes no access log of its own."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True


def _worker_booting() -> None:
    """In a worker just forked. Until the worker installs its own handlers, a
    SIGTERM would reach the arbiter's handler it inherited, which only queues
    it for an arbiter that is not there: the worker would boot and serve on,
    and the server's stop would wait out GRACEFUL_TIMEOUT for it. A worker
    still booting holds no request, so it may just end."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _quiet_ssl_patch_warning()


def _quiet_ssl_patch_warning() -> None:
    """`import redis` loads redis.asyncio, and `import jwt` its JWKS client,
    both of which take names from ssl before the gevent worker patches it.
    nvllm uses neither (its tokens are signed with its own secret), so that
    warning is noise; any other module in the list still warns."""
    warnings.filterwarnings(
        "ignore",
        message=(
            r"(?s)Monkey-patching ssl after ssl has already been imported.*"
            r"Modules that had direct imports \(NOT patched\): "
            r"\[(?:'(?:redis\.asyncio\.connection|jwt\.jwks_client) \([^)]*\)'(?:, )?)+\]"
        ),
    )


def gunicorn_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def display_address(host: str, port: int) -> str:
    return f"http://{gunicorn_bind(host, port)}"


def check_bindable(host: str, port: int) -> None:
    """Raise OSError when host:port cannot be listened on (in use, no such
    address, no permission), before anything is started."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As gunicorn does: a port in TIME_WAIT is free, one being listened on is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files toward the hard one: the usual 1024
    would cap a worker far below WORKER_CONNECTIONS streams."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit: %s", exc)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return exc.strerror or str(exc)


def _announce(address: str, note: str = "") -> None:
    print(f"nvllm listening on {address}{note}", flush=True)


def _exit_now(signum: int, _frame: Any) -> None:
    raise SystemExit(0)

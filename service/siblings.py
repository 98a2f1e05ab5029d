"""The other worker processes of this server, each told of this worker's
routing events as they happen.

gunicorn hands each connection to whichever worker accepts it, so the turns
of one conversation, and the requests to one node, are spread over the
workers. Each worker's routing would otherwise know only its own share until
the next fleet refresh, and its prefix index none of the others'. So every
worker streams its events (service/routing/mirror.py says which) to each of
its siblings, and applies theirs: each worker routes as one process would.

The channel: one Unix stream socket per pair of workers, in Linux's abstract
namespace (no file to clean up; it goes with the process), named after a
group token the server draws at start and the worker's pid. Siblings are the
server process's other children; a connection is accepted only from one of
them running as the same user (SO_PEERCRED). Each message is one line of
JSON: a list of events, the first a hello naming the sender's instance id.
Events are queued by the request's greenlet (no I/O there) and written in
batches by a background thread, at most FLUSH_DELAY after they happened. A sibling that stops reading for
SEND_TIMEOUT loses its connection, and with it everything it learned from
this worker; it reconnects at the next discovery. Nothing here is needed to
route: without siblings each worker routes on its own, as before.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nvllm.siblings")

# Set by the server for its workers when it runs more than one.
GROUP_ENV = "NVLLM_SIBLING_GROUP"
DISCOVER_EVERY = 1.0  # seconds between looks for new siblings
# Events wait this long to go out together: one write (and one wake-up of
# each sibling) per batch, not per event, for at most this much staleness.
FLUSH_DELAY = 0.002
SEND_TIMEOUT = 2.0  # a sibling that reads nothing for this long is dropped
MAX_QUEUED = 200_000  # events; beyond, the slowest link is dropped, not memory
MAX_LINE = 4 << 20  # bytes of one message; a longer one ends the connection

Event = list[Any]


def socket_name(group: str, pid: int) -> bytes:
    return f"\0nvllm-{group}-{pid}".encode()


def arbiter_children() -> set[int]:
    """The pids of this process's parent's children (our siblings and us)."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            return {int(p) for p in f.read().split()}
    except (OSError, ValueError):
        pass
    # A kernel without that file (CONFIG_PROC_CHILDREN off): every process's parent.
    children = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent:
                children.add(int(entry))
    return children


class SiblingLink:
    """This worker's end of the channel to its siblings."""

    def __init__(
        self,
        group: str,
        instance_id: str,
        on_event: Callable[[str, Event], None],
        on_gone: Callable[[str], None],
        *,
        discover: Callable[[], set[int]] = arbiter_children,
        pid: int | None = None,
    ) -> None:
        self.group = group
        self.instance_id = instance_id
        self._on_event = on_event
        self._on_gone = on_gone
        self._discover = discover
        self._pid = os.getpid() if pid is None else pid
        self._queue: deque[Event] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._out: dict[int, socket.socket] = {}  # sibling pid -> our connection to it
        self._linked: set[str] = set()  # instance ids of the siblings talking to us
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # --- the hot path ---

    def publish(self, event: Event) -> None:
        """Queue an event for every sibling (no I/O here)."""
        if self._out:
            self._queue.append(event)
            if not self._wake.is_set():
                self._wake.set()

    def linked(self) -> set[str]:
        """Instance ids of the siblings whose events reach us now."""
        return set(self._linked)

    # --- lifecycle ---

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_name(self.group, self._pid))
        listener.listen(64)
        self._listener = listener
        for target, name in ((self._accept_loop, "nvllm-siblings-in"), (self._send_loop, "nvllm-siblings-out")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._listener is not None:
            _close(self._listener)
        with self._lock:
            for conn in self._out.values():
                _close(conn)
            self._out.clear()
        for thread in self._threads:
            thread.join(timeout=2)

    # --- sending ---

    def _send_loop(self) -> None:
        next_look = 0.0
        clock = time.monotonic
        while not self._stop.is_set():
            if clock() >= next_look:
                self._connect_new()
                next_look = clock() + DISCOVER_EVERY
            if self._wake.wait(DISCOVER_EVERY) and not self._stop.is_set():
                time.sleep(FLUSH_DELAY)
            self._wake.clear()
            if self._stop.is_set():
                return
            batch = self._drain()
            if batch:
                self._send_all((json.dumps(batch, separators=(",", ":")) + "\n").encode())

    def _drain(self) -> list[Event]:
        queue = self._queue
        if len(queue) > MAX_QUEUED:
            # The sender could not keep up: a sibling stopped reading. Drop the
            # links (they relearn from a clean start) rather than grow.
            log.warning("sibling links dropped: %d events queued", len(queue))
            queue.clear()
            with self._lock:
                for conn in self._out.values():
                    _close(conn)
                self._out.clear()
            return []
        batch = []
        while queue:
            batch.append(queue.popleft())
        return batch

    def _send_all(self, data: bytes) -> None:
        with self._lock:
            targets = list(self._out.items())
        for pid, conn in targets:
            try:
                conn.sendall(data)
            except OSError as exc:
                log.info("sibling %d: link lost (%s)", pid, type(exc).__name__)
                self._drop_out(pid)

    def _connect_new(self) -> None:
        siblings = self._discover() - {self._pid}
        with self._lock:
            for pid in [p for p in self._out if p not in siblings]:
                _close(self._out.pop(pid))
            known = set(self._out)
        for pid in siblings - known:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(SEND_TIMEOUT)
            try:
                conn.connect(socket_name(self.group, pid))
                conn.sendall((json.dumps([["hello", self.instance_id]]) + "\n").encode())
            except OSError:
                _close(conn)  # not a worker (the embedded store), or not listening yet
                continue
            with self._lock:
                self._out[pid] = conn
            log.debug("sibling %d: linked", pid)

    def _drop_out(self, pid: int) -> None:
        with self._lock:
            conn = self._out.pop(pid, None)
        if conn is not None:
            _close(conn)

    # --- receiving ---

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            pid, uid = _peer(conn)
            if uid != os.getuid() or pid not in self._discover() or pid == self._pid:
                log.warning("sibling link refused: pid %s is not a worker of this server", pid)
                _close(conn)
                continue
            thread = threading.Thread(target=self._read_loop, args=(conn,), name="nvllm-sibling", daemon=True)
            thread.start()

    def _read_loop(self, conn: socket.socket) -> None:
        sibling: str | None = None
        buffer = b""
        try:
            while not self._stop.is_set():
                data = conn.recv(262144)
                if not data:
                    return
                buffer += data
                if len(buffer) > MAX_LINE and b"\n" not in buffer:
                    log.warning("sibling link closed: a message over %d bytes", MAX_LINE)
                    return
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    events = json.loads(line)
                    if sibling is None:
                        sibling = _hello(events)
                        with self._lock:
                            self._linked.add(sibling)
                        events = events[1:]
                    for event in events:
                        self._on_event(sibling, event)
        except (OSError, ValueError) as exc:
            log.info("sibling link closed (%s)", type(exc).__name__)
        finally:
            _close(conn)
            if sibling is not None:
                with self._lock:
                    self._linked.discard(sibling)
                self._on_gone(sibling)


def _hello(events: Any) -> str:
    if (isinstance(events, list) and events and isinstance(events[0], list) and len(events[0]) == 2
            and events[0][0] == "hello" and isinstance(events[0][1], str)):
        return events[0][1]
    raise ValueError("no hello")


def _peer(conn: socket.socket) -> tuple[int, int]:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1, -1
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass

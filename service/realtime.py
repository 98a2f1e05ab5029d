"""The realtime WebSocket (GET /v1/realtime) passed through to a node.

nvllm does the HTTP part itself: it authenticates the client, picks a node
serving the model, sends the node the client's opening handshake (with its
own headers, never the client's token) and, once the node has switched
protocols, relays bytes both ways unchanged until either side closes. Frames
are not parsed: the node's close frame, pings and compression all pass as
they are, as in any TCP-level WebSocket proxy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from model.errors import NoRoutableNode
from service.netpolicy import Target
from service.node_state import NodeState
from service.proxy import FAILURE_STATUSES, RETRY_STATUSES, NodeFailed, Proxy
from service.routing import RouteRequest

log = logging.getLogger("nvllm.realtime")

PATH = "/v1/realtime"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
MAX_HEAD = 64 * 1024
CHUNK = 65536
# What of the client's handshake a node needs; the rest (Authorization,
# cookies, Origin) stays behind, as on every /v1 route.
FORWARD_REQUEST = ("sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                   "sec-websocket-extensions", "user-agent")
FORWARD_RESPONSE = ("sec-websocket-protocol", "sec-websocket-extensions")
# Browsers cannot set headers on a WebSocket, so OpenAI's SDKs may carry a key
# as a subprotocol: it is a secret, never passed to a node.
SECRET_PROTOCOL = "openai-insecure-api-key."


class HandshakeRefused(Exception):
    """The node answered the upgrade with an error that another node would
    answer too (a 404 from a node without the route, a 400)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


@dataclass
class Session:
    """An upgraded connection to a node; `rest` is what the node sent after its
    handshake (vLLM sends session.created at once)."""

    state: NodeState
    sock: socket.socket
    headers: dict[str, str]
    rest: bytes
    reason: str
    closed: bool = field(default=False)

    def client_head(self, accept: str, extra: dict[str, str]) -> bytes:
        """The 101 the client gets: the node's answer, filtered."""
        lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Accept: {accept}"]
        lines += [f"{_title(k)}: {v}" for k, v in self.headers.items() if k in FORWARD_RESPONSE]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def open_session(proxy: Proxy, model: str | None, query: str, client_headers: dict[str, str],
                 trace_id: str) -> Session:
    """Connect to a node serving `model` and complete the opening handshake,
    trying other nodes on a refused connection or a 429/5xx, as /v1 requests
    do. The node is counted in flight until the session is closed (`finish`).
    Raises NoRoutableNode, NodeFailed (every attempt failed) or HandshakeRefused."""
    route = RouteRequest(model=model)
    key = client_headers.get("sec-websocket-key", "")
    tried: set[str] = set()
    last_cause = "no attempt"
    for attempt in range(1, proxy.config.retries + 2):
        try:
            decision = proxy.select(route, frozenset(tried))
        except NoRoutableNode:
            if not tried:
                raise
            break
        state = decision.state
        tried.add(state.node_id)
        proxy.fleet.acquire(state)
        try:
            target = proxy.fleet.netpolicy.target(state.node)
            sock, status, headers, rest = _handshake(proxy, target, query, client_headers, trace_id)
        except OSError as exc:
            proxy.fleet.release(state)
            proxy.fleet.record_failure(state, type(exc).__name__)
            last_cause = f"{state.node_id}: {type(exc).__name__}"
            log.warning("realtime attempt %d to node %s failed: %s", attempt, state.node_id, type(exc).__name__)
            continue
        if status == 101 and headers.get("sec-websocket-accept") == accept_key(key):
            proxy.fleet.record_success(state)
            return Session(state, sock, headers, rest, decision.reason)
        _close(sock)
        proxy.fleet.release(state)
        if status in FAILURE_STATUSES:
            proxy.fleet.record_failure(state, f"HTTP {status}")
        last_cause = f"{state.node_id}: HTTP {status}" if status != 101 else f"{state.node_id}: bad accept key"
        log.warning("realtime attempt %d to node %s: %s", attempt, state.node_id, last_cause)
        if status in (400, 404):
            raise HandshakeRefused(status)
        if status not in RETRY_STATUSES and status != 101:
            break
    raise NodeFailed(last_cause, len(tried))


def finish(proxy: Proxy, session: Session) -> None:
    """Close the node's side and stop counting the session (idempotent)."""
    if not session.closed:
        session.closed = True
        _close(session.sock)
        proxy.fleet.release(session.state)


def relay(client: socket.socket, session: Session) -> str:
    """Bytes both ways until either side closes; then both are closed.
    Returns which side closed first ("client", "node")."""
    node = session.sock
    for sock in (client, node):
        sock.settimeout(None)
        # A peer that vanished without a FIN is found by TCP keepalive, not
        # by a silence timeout: one direction may rightly stay quiet for long.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    first: list[str] = []

    def pump(src: socket.socket, dst: socket.socket, name: str) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if not first:
                first.append(name)
            # Either side's end is the session's: wakes the other pump.
            for sock in (client, node):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    if session.rest:
        client.sendall(session.rest)
    other = threading.Thread(target=pump, args=(node, client, "node"), name="nvllm-realtime", daemon=True)
    other.start()
    pump(client, node, "client")
    other.join(timeout=5)
    return first[0] if first else "client"


def _handshake(proxy: Proxy, target: Target, query: str, client_headers: dict[str, str],
               trace_id: str) -> tuple[socket.socket, int, dict[str, str], bytes]:
    """Send the opening handshake; (socket, status, headers, bytes after the head)."""
    headers = {"Host": target.host_header, "Upgrade": "websocket", "Connection": "Upgrade"}
    for name in FORWARD_REQUEST:
        value = client_headers.get(name)
        if name == "sec-websocket-protocol" and value:
            offered = (p.strip() for p in value.split(","))
            value = ", ".join(p for p in offered if p and not p.startswith(SECRET_PROTOCOL))
        if value and "\r" not in value and "\n" not in value:
            headers[_title(name)] = value
    headers["X-Trace-ID"] = headers["X-Request-Id"] = trace_id
    if proxy.config.api_key and proxy.fleet.netpolicy.sends_key(target.ip):
        headers["Authorization"] = f"Bearer {proxy.config.api_key}"
    head = f"GET {PATH}{'?' + query if query else ''} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection((target.ip, target.port), timeout=proxy.config.connect_timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head.encode("latin-1"))
        status, answer, rest = _read_head(sock, time.monotonic() + proxy.config.stream_timeout)
    except BaseException:
        _close(sock)
        raise
    return sock, status, answer, rest


def _read_head(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """The node's status and headers (names lower-cased), within the deadline
    and MAX_HEAD bytes; raises OSError (TimeoutError) otherwise."""
    data = b""
    while b"\r\n\r\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(data) > MAX_HEAD:
            raise TimeoutError("no handshake answer in time")
        sock.settimeout(remaining)
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ConnectionResetError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionResetError("not an HTTP answer")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _title(name: str) -> str:
    return "-".join("WebSocket" if p == "websocket" else p.capitalize() for p in name.split("-"))


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()

"""Polling nodes that have no agent: /health, /metrics and /v1/models (for
the node's LoRA adapters), about once per interval per node however many nvllm
instances run (a Redis lock per node decides which instance polls it)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import urllib3

from dao.node import NodeStore
from model.adapter import parse_model_list
from model.errors import StorageUnavailable
from model.node import Node
from model.vllm_metrics import MetricsError, parse_load
from service.netpolicy import AddressRefused, NetworkPolicy

log = logging.getLogger("nvllm.probe")

PROBE_TIMEOUT = 2.0
# A whole poll (connect, headers, body) ends within this, or the probe
# interval when shorter; what a node sends beyond MAX_ANSWER is not read.
PROBE_DEADLINE = 5.0
MAX_ANSWER = 1 << 20
MAX_HEAD = 64 * 1024
PARALLEL_PROBES = 16


class Prober:
    def __init__(
        self,
        nodes: NodeStore,
        *,
        interval: float,
        http: urllib3.PoolManager | None = None,
        clock: Callable[[], float] = time.time,
        netpolicy: NetworkPolicy | None = None,
        api_key: str | None = None,
    ) -> None:
        self.owner = uuid.uuid4().hex[:12]
        self._api_key = api_key
        self._nodes = nodes
        self._interval = interval
        self._http = http or urllib3.PoolManager(maxsize=PARALLEL_PROBES)
        self._clock = clock
        # Default: what nvllm allows when it listens on loopback.
        self._netpolicy = netpolicy or NetworkPolicy.from_settings(None, None, "127.0.0.1")
        self._failing: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        """Poll every node this instance wins the lock for; return how many."""
        try:
            nodes = [
                n for n in self._nodes.load_all() if self._nodes.claim_probe(n.node_id, self.owner, self._interval)
            ]
        except StorageUnavailable:
            return 0
        if nodes:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_PROBES, len(nodes))) as pool:
                list(pool.map(self.probe, nodes))
        return len(nodes)

    def probe(self, node: Node) -> bool:
        """One poll. Success is a heartbeat carrying the node's load; failure
        marks it not routable without touching its liveness."""
        v1_headers: dict[str, str] = {}
        try:
            # Checked before every poll, not only at registration: a name can
            # resolve elsewhere by now. A refused address is a failed poll.
            target = self._netpolicy.target(node)
            url = target.base_url
            # vLLM's --api-key guards /v1/* only; the key goes where the proxy sends it.
            if self._api_key and self._netpolicy.sends_key(target.ip):
                v1_headers["Authorization"] = f"Bearer {self._api_key}"
        except AddressRefused as exc:
            url = None
            if node.node_id not in self._failing:
                log.warning("not polling node %s: %s", node.node_id, exc.reason)
        try:
            healthy = url is not None and self._get(url + "/health")[0] == 200
            load = None
            if healthy:
                status, text = self._get(url + "/metrics")
                if status == 200:
                    try:
                        load = parse_load(text)
                    except MetricsError:
                        load = None
            if healthy:
                changes: dict = {"node_info": load.to_node_info()} if load else {}
                adapters = self._adapters(url, v1_headers)
                if adapters is not None and adapters != node.adapters:
                    changes["adapters"] = adapters
                self._nodes.update(node.node_id, changes, self._clock(), fields={"probe_failing": "0"})
            else:
                self._nodes.flag(node.node_id, {"probe_failing": "1"})
        except StorageUnavailable:
            return False
        self._log_change(node.node_id, healthy)
        return healthy

    def _get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return bounded_get(url, min(self._interval or PROBE_DEADLINE, PROBE_DEADLINE), headers)

    def _adapters(self, url: str, headers: dict[str, str]) -> list | None:
        """The node's LoRA adapters from /v1/models; None when it cannot say
        (the last known list is kept). The poller leaves `models` to whoever
        registered the node: an operator may list fewer than vLLM serves."""
        status, text = self._get(url + "/v1/models", headers)
        if status != 200:
            return None
        try:
            return parse_model_list(text)[1]
        except (ValueError, KeyError, TypeError):
            return None

    def _log_change(self, node_id: str, healthy: bool) -> None:
        if healthy and node_id in self._failing:
            self._failing.discard(node_id)
            log.info("poll of node %s succeeded: routable again", node_id)
        elif not healthy and node_id not in self._failing:
            self._failing.add(node_id)
            log.warning("poll of node %s failed: not routable until a poll succeeds", node_id)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=_poll_loop,
                args=(weakref.ref(self), self._stop, self._interval),
                name="nvllm-probe",
                daemon=True,
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")


def bounded_get(url: str, seconds: float, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(status, body) of a GET, or (0, "") when the node does not give a
    whole answer of at most MAX_ANSWER bytes within `seconds`. Read by hand,
    with each read's timeout the time left, because a node that trickles
    bytes would keep any per-read timeout from ever firing."""
    deadline = time.monotonic() + seconds
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        return 0, ""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Accept: text/plain\r\nUser-Agent: nvllm-probe\r\n{extra}Connection: close\r\n\r\n")
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=min(PROBE_TIMEOUT, seconds)) as sock:
            sock.sendall(request.encode("ascii"))
            raw = _read_answer(sock, deadline)
    except (OSError, ValueError):
        return 0, ""
    return _parse_answer(raw) if raw is not None else (0, "")


def _read_answer(sock: socket.socket, deadline: float) -> bytes | None:
    """The node's whole answer, or None past the deadline or the size cap."""
    data = b""
    body_at = length = -1
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        if body_at < 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD:
                    return None
                continue
            body_at = end + 4
            match = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", data[:body_at].lower())
            length = int(match.group(1)) if match else -1
        if len(data) - body_at > MAX_ANSWER:
            return None
        if 0 <= length <= len(data) - body_at:
            return data[: body_at + length]


def _parse_answer(raw: bytes) -> tuple[int, str]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    match = STATUS_LINE.match(head)
    if not sep or not match:
        return 0, ""
    if re.search(rb"\r\ntransfer-encoding:[ \t]*chunked", head.lower()):
        decoded = _dechunk(body)
        if decoded is None:
            return 0, ""
        body = decoded
    return int(match.group(1)), body.decode("utf-8", "replace")


def _dechunk(body: bytes) -> bytes | None:
    """A chunked body decoded, or None when it is malformed or cut short."""
    out, at = [], 0
    while True:
        line_end = body.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(body[at:line_end].split(b";", 1)[0], 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        if len(body) < start + size:
            return None
        out.append(body[start : start + size])
        at = start + size + 2


def _poll_loop(ref: weakref.ReferenceType[Prober], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        prober = ref()
        if prober is None:
            return
        try:
            prober.tick()
        except Exception:  # polling must outlive any one bad round
            log.exception("poll round failed")
        del prober

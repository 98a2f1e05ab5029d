"""Forwarding a /v1 request to a node: pick, send, retry before the first byte,
stream the answer through, and keep the fleet's counts true whatever happens."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util.retry import Retry

from model.errors import NoRoutableNode, TooManyRequests
from service.adapters import candidates as model_candidates
from service.answer import AnswerMeter
from service.fleet import Fleet
from service.node_state import NodeState
from service.reasons import reason_category
from service.routing import Decision, Policy, RouteRequest
from service.upstream import pool_manager

log = logging.getLogger("nvllm.proxy")

# Statuses worth another node when nothing has reached the client yet: the node
# is broken (500/502/504), overloaded (503) or shedding load (429).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# 429 is back-pressure, not sickness: retry elsewhere but do not eject.
FAILURE_STATUSES = frozenset({500, 502, 503, 504})
# Allow-lists both ways: a node learns only what vLLM needs to answer, and a
# client sees only what describes the answer. Anything else (the client's
# X-Forwarded-For or Metadata-Flavor, a node's CORS or cookies) stays behind.
# Accept-Encoding stays behind too, so a node answers uncompressed and a
# stream's events can be counted as they pass.
FORWARD_REQUEST = frozenset({"content-type", "accept", "user-agent", "x-session-id"})
# Content-Length is nvllm's own to set: the body is re-framed (chunked), so a
# node that cuts its body short cannot leave the client waiting for bytes.
FORWARD_RESPONSE = frozenset({"content-type", "content-encoding", "cache-control", "retry-after", "x-request-id"})
LOAD_HEADER = "endpoint-load-metrics"
FRESH_ENOUGH = 0.1  # seconds between refreshes asked for by requests no node can take
# What urllib3 would build from retries=False on every request: retrying is
# the proxy's own (on another node), never urllib3's.
NO_RETRIES = Retry(False, redirect=False)


@dataclass(frozen=True)
class UpstreamConfig:
    connect_timeout: float = 2.0
    read_timeout: float = 300.0
    stream_timeout: float = 30.0
    retries: int = 2
    api_key: str | None = None


@dataclass
class Forwarded:
    """An answer ready to stream back: status, headers and a body iterator that
    must be consumed or closed (closing frees the node)."""

    status: int
    headers: list[tuple[str, str]]
    body: Iterator[bytes]
    node_id: str
    reason: str
    attempts: int
    # The on_done report of the answer, once its body is done (for the access log).
    report: dict | None = None


class NodeFailed(Exception):
    """Every attempt failed before the first byte; carries the last cause."""

    def __init__(self, cause: str, attempts: int) -> None:
        super().__init__(cause)
        self.cause = cause
        self.attempts = attempts


class BodyCut(Exception):
    """A node's answer ended early (cut, or silent too long) after bytes of it
    reached the client: the client's connection must be closed, not the body
    ended as if whole."""


class UserSlots:
    """How many /v1 requests each user has in flight in this process, capped:
    one token cannot hold every connection, upload buffer and node slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str) -> _Slot:
        """A slot to release when the request is done. Raises TooManyRequests."""
        with self._lock:
            count = self._counts.get(user, 0)
            if self.limit and count >= self.limit:
                raise TooManyRequests(f"too many requests in flight for this user (at most {self.limit})")
            self._counts[user] = count + 1
        return _Slot(self, user)

    def in_flight(self, user: str) -> int:
        return self._counts.get(user, 0)

    def _release(self, user: str) -> None:
        with self._lock:
            left = self._counts.pop(user, 1) - 1
            if left > 0:
                self._counts[user] = left


class _Slot:
    def __init__(self, slots: UserSlots, user: str) -> None:
        self._slots: UserSlots | None = slots
        self._user = user

    def release(self) -> None:
        """Idempotent: the error path and the end of the answer may both call it."""
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release(self._user)


def parse_load_header(value: str) -> tuple[int | None, int | None, float | None]:
    """(waiting, running, kv_usage) from vLLM's endpoint-load-metrics header,
    in its JSON or TEXT form; None for what it does not say."""
    kind, _, payload = value.strip().partition(" ")
    metrics: dict = {}
    try:
        if kind.upper() == "JSON":
            data = json.loads(payload)
            metrics = data.get("named_metrics", data) if isinstance(data, dict) else {}
        elif kind.upper() == "TEXT":
            for item in payload.split(","):
                key, _, raw = item.strip().partition("=")
                metrics[key.removeprefix("named_metrics.")] = float(raw)
    except (ValueError, AttributeError):
        return None, None, None

    def number(*names: str) -> float | None:
        for name in names:
            value = metrics.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
        return None

    waiting = number("num_requests_waiting", "waiting")
    running = number("num_requests_running", "running")
    kv = number("kv_cache_usage_perc", "kv_cache_utilization", "gpu_cache_usage_perc")
    return (
        None if waiting is None else int(waiting),
        None if running is None else int(running),
        None if kv is None else min(kv, 1.0),
    )


class Proxy:
    def __init__(
        self,
        fleet: Fleet,
        policy: Policy,
        config: UpstreamConfig,
        *,
        http: urllib3.PoolManager | None = None,
        on_done: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.config = config
        self.http = http or pool_manager(num_pools=256, maxsize=1024, block=False)
        # Built once: a stream must start within the first-byte timeout (see
        # _first_chunk); a whole answer may take as long as generation.
        self._timeouts = {
            True: urllib3.Timeout(connect=config.connect_timeout, read=config.stream_timeout),
            False: urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        }
        self._tickets = itertools.count()
        self._on_done = on_done
        self.clock = clock  # the times every routing event carries
        self._unroutable_logged_at = -1.0

    def select(self, request: RouteRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        """The node the policy picks now. Raises NoRoutableNode."""
        candidates = self._candidates(request, exclude)
        if not candidates and not exclude and self.fleet.refresh_now(FRESH_ENOUGH):
            # A node registered before the request came must not get it a 503
            # for want of a refresh (the view is up to half a second old).
            candidates = self._candidates(request, exclude)
        if not candidates:
            self._log_unroutable(request, exclude)
            raise NoRoutableNode(request.model)
        return self.policy.choose(candidates, request, self.clock())

    def _log_unroutable(self, request: RouteRequest, exclude: frozenset[str]) -> None:
        # A retry with every other node tried: its attempts were logged. A
        # flood of requests no node takes (a client's typo) logs once a second.
        now = time.monotonic()
        if exclude or now - self._unroutable_logged_at < 1.0:
            return
        self._unroutable_logged_at = now
        reasons = self.fleet.why_not_routable()
        if request.pinned_node:
            reasons = {request.pinned_node: reasons.get(request.pinned_node) or "not in the fleet"}
        about = ", ".join(f"{node_id}: {why or 'does not serve it'}" for node_id, why in sorted(reasons.items()))
        log.warning("no routable node for model %r (%s)", request.model, about or "no node registered")

    def _candidates(self, request: RouteRequest, exclude: frozenset[str]) -> list[NodeState]:
        # A request naming a stored response may go only to the node holding it.
        routable = [s for s in self.fleet.routable()
                    if s.node_id not in exclude and request.pinned_node in (None, s.node_id)]
        # A LoRA adapter's name narrows the candidates to the nodes holding it.
        return model_candidates(request.model, routable, self.fleet.known())

    def forward(
        self,
        path: str,
        body: bytes | None,
        request: RouteRequest,
        headers: dict[str, str],
        *,
        stream: bool,
        trace_id: str,
        method: str = "POST",
        tokens: tuple[bytes, int] = (b"data:", 2),
    ) -> Forwarded:
        """Send to the best node, retrying on others before any byte is
        returned. `tokens`: what marks a token in the stream, and which of
        them is the first (routes.Route). Raises NoRoutableNode, or NodeFailed
        when all attempts failed."""
        upstream_headers = self._request_headers(headers, trace_id)
        tried: set[str] = set()
        last_cause = "no attempt"
        route = path.partition("?")[0]
        for attempt in range(1, self.config.retries + 2):
            try:
                decision = self.select(request, frozenset(tried))
            except NoRoutableNode:
                if not tried:
                    raise
                break
            state = decision.state
            tried.add(state.node_id)
            about = {"model": request.model, "route": route, "reason": reason_category(decision.kind, attempt)}
            self.fleet.acquire(state)
            started = time.perf_counter()
            ticket = next(self._tickets)
            policy = self.policy
            sent_at = self.clock()
            policy.sent(ticket, decision, request, stream=stream, now=sent_at)
            try:
                response = self._send(state, method, path, body, upstream_headers, stream)
                first = self._first_chunk(response) if stream else b""
            except (Urllib3Error, OSError) as exc:
                self._abandon(ticket, state)
                last_cause = f"{state.node_id}: {type(exc).__name__}"
                self.fleet.record_failure(state, type(exc).__name__)
                self._report(state, 0, f"failed:{type(exc).__name__}", started, about)
                log.warning("attempt %d to node %s failed: %s", attempt, state.node_id, type(exc).__name__)
                continue
            if response.status in FAILURE_STATUSES:
                self.fleet.record_failure(state, f"HTTP {response.status}")
            # With no other node to try, the node's own answer (a 429 with its
            # Retry-After, say) tells the client more than a 502 would.
            if (
                response.status in RETRY_STATUSES
                and attempt <= self.config.retries
                and self._candidates(request, frozenset(tried))
            ):
                response.drain_conn()
                response.release_conn()
                self._abandon(ticket, state)
                last_cause = f"{state.node_id}: HTTP {response.status}"
                self._report(state, response.status, f"retried:{response.status}", started, about)
                log.warning("attempt %d to node %s answered %d", attempt, state.node_id, response.status)
                continue
            policy.answered(ticket, self.clock())
            self._read_load(state, response)
            answer = Forwarded(
                status=response.status,
                headers=self._response_headers(response),
                body=iter(()),
                node_id=state.node_id,
                reason=decision.reason,
                attempts=attempt,
            )
            answer.body = self._relay(state, response, stream, started, first, ticket, about, answer, sent_at,
                                      tokens)
            return answer
        raise NodeFailed(last_cause, len(tried))

    def _send(self, state: NodeState, method: str, path: str, body: bytes | None, headers: dict[str, str],
              stream: bool):
        # The address is checked at every connection, not only at registration:
        # a name can resolve elsewhere by now (DNS rebinding), so the
        # connection goes to the address just checked. A refused one raises
        # AddressRefused, an OSError: tried elsewhere like a refused connection.
        target = self.fleet.netpolicy.target(state.node)
        if target.named:
            headers = {**headers, "Host": target.host_header}
        # The key goes only where the operator said nodes started with it live,
        # never to a server a worker pointed nvllm at.
        if self.config.api_key and self.fleet.netpolicy.sends_key(target.ip):
            headers = {**headers, "Authorization": f"Bearer {self.config.api_key}"}
        return self.http.urlopen(
            method,
            target.base_url + path,
            body=body,
            headers=headers,
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=NO_RETRIES,
            timeout=self._timeouts[stream],
        )

    def _first_chunk(self, response) -> bytes:
        """A stream's first bytes: vLLM sends a stream's headers before its
        engine has produced anything, so only the first chunk shows that a node
        is not stuck. Nothing has reached the client yet, so a timeout here is
        retried like a connect failure. The same timeout then bounds every
        silence in the stream: tokens come many times a second, so a long
        silence is a stuck node, and the client gets a cut stream rather than
        a hang."""
        try:
            return response.read1(65536)
        except BaseException:
            _discard(response)
            raise

    def _relay(
        self, state: NodeState, response, stream: bool, started: float, first: bytes = b"", ticket: int = -1,
        about: dict | None = None, answer: Forwarded | None = None, sent_at: float = 0.0,
        tokens: tuple[bytes, int] = (b"data:", 2),
    ) -> Iterator[bytes]:
        """Yield the node's bytes as they come (a stream's `first` chunk was read
        already; empty means the stream ended); on the client going away (the
        generator is closed) close the upstream connection so the node frees
        the slot."""
        complete = False
        events = 0
        marker, first_mark = tokens
        outcome = "ok"
        policy, clock = self.policy, self.clock
        meter = AnswerMeter()
        # In the routing clock: when the first token came, and the last event.
        first_at = last_at = 0.0
        first_events = 0
        try:
            chunk = first if stream else response.read1(65536)
            while chunk:
                if stream:
                    # About one token per marker; the first_mark-th is the
                    # first token (chat's first event carries only the role).
                    seen = chunk.count(marker)
                    if seen:
                        now = clock()
                        before, events = events, events + seen
                        policy.progress(ticket, events - first_mark + 1, now)
                        last_at = now
                        if before < first_mark <= events:
                            policy.first_token(ticket, now)
                            first_at, first_events = now, events
                meter.feed(chunk)
                yield chunk
                chunk = response.read1(65536)
            complete = True
            if response.status < 500:
                self.fleet.record_success(state)
        except GeneratorExit:
            outcome = "client_gone"
            raise
        except (Urllib3Error, OSError) as exc:
            # Bytes already reached the client: never retried, only recorded.
            outcome = f"upstream_error:{type(exc).__name__}"
            self.fleet.record_failure(state, type(exc).__name__)
            log.warning("node %s failed mid-answer: %s", state.node_id, type(exc).__name__)
            raise BodyCut() from None
        finally:
            policy.done(ticket, clock())
            if complete:
                response.release_conn()
            else:
                _discard(response)
            self.fleet.release(state)
            report = self._report(
                state, response.status, outcome, started, about or {},
                ttft=first_at - sent_at if first_events else None,
                itl=(last_at - first_at) / (events - first_events) if first_events and events > first_events else None,
                output_tokens=meter.output_tokens(events if stream else None),
            )
            if answer is not None:
                answer.report = report

    def _abandon(self, ticket: int, state: NodeState) -> None:
        """An attempt given up before the client saw any of it."""
        now = self.clock()
        self.policy.failed(ticket, now)
        self.policy.done(ticket, now)
        self.fleet.release(state)

    def _report(self, state: NodeState, status: int, outcome: str, started: float, about: dict,
                *, ttft: float | None = None, itl: float | None = None, output_tokens: int = 0) -> dict:
        """What one attempt came to, for metrics and the access log. `about`
        carries the request's model, route (the forwarded path without its
        query) and routing reason category; ttft and itl (mean seconds between
        tokens) are None when not measured (a whole answer, a failed attempt)."""
        report = {
            "node": state.node_id,
            "status": status,
            "outcome": outcome,
            "seconds": time.perf_counter() - started,
            "model": about.get("model"),
            "route": about.get("route", ""),
            "reason": about.get("reason", ""),
            "ttft": ttft,
            "itl": itl,
            "output_tokens": output_tokens,
        }
        if self._on_done:
            self._on_done(report)
        return report

    def _read_load(self, state: NodeState, response) -> None:
        value = response.headers.get(LOAD_HEADER)
        if value:
            waiting, running, kv = parse_load_header(value)
            self.fleet.record_inband_load(state, waiting, running, kv)

    def _request_headers(self, headers: dict[str, str], trace_id: str) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() in FORWARD_REQUEST}
        out["X-Trace-ID"] = trace_id
        out["X-Request-Id"] = trace_id
        out["endpoint-load-metrics-format"] = "JSON"
        return out

    @staticmethod
    def _response_headers(response) -> list[tuple[str, str]]:
        return [(k, v) for k, v in response.headers.items() if k.lower() in FORWARD_RESPONSE]


def _discard(response) -> None:
    """Close a half-read answer: its connection cannot be reused, and closing
    it is what tells the node to stop generating."""
    response.close()
    response.release_conn()

"""The agent's state machine: register, heartbeat with vLLM's load and health, drain on stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.nvllm import NodeGone, NvllmError, Rejected, Unreachable
from agent.vllm import VllmError
from model.adapter import Adapter
from model.vllm_metrics import Load

log = logging.getLogger("nvllm.agent")

ONLINE, OFFLINE, DRAINING = "online", "offline", "draining"
DEREGISTER_ATTEMPTS = 3


class Nvllm(Protocol):
    def register(self, payload: dict[str, Any]) -> dict[str, Any]: ...
    def update(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, node_id: str) -> None: ...
    def status(self, node_id: str) -> dict[str, Any]: ...


class Vllm(Protocol):
    def health_problem(self) -> str | None: ...
    def catalog(self) -> tuple[list[str], list[Adapter]]: ...
    def load(self) -> Load: ...


@dataclass(frozen=True)
class Observation:
    """What one look at vLLM showed; None where a read failed."""

    healthy: bool
    load: Load | None = None
    models: list[str] | None = None
    adapters: list[Adapter] | None = None

    @property
    def status(self) -> str:
        return ONLINE if self.healthy else OFFLINE


def wait_on(event: threading.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, waking early when `event` is set."""
    return event.wait(max(0.0, seconds))


class Agent:
    """One vLLM server's representative in nvllm.

    `stop` is set by the first SIGTERM/SIGINT and starts the drain; `hurry`,
    set by the second, cuts the drain short. Tests pass a fake clock and `wait`.
    """

    def __init__(
        self,
        config: AgentConfig,
        nvllm: Nvllm,
        vllm: Vllm,
        *,
        stop: threading.Event | None = None,
        hurry: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Event, float], bool] = wait_on,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.nvllm = nvllm
        self.vllm = vllm
        self.stop = stop or threading.Event()
        self.hurry = hurry or threading.Event()
        self.clock = clock
        self.wait = wait
        self.backoff = backoff or Backoff(min(1.0, config.interval), config.backoff_cap)
        self.registered = False
        self.sent_status: str | None = None  # the node_status nvllm last accepted from us
        self.sent_models: list[str] | None = None
        self.sent_adapters: list[Adapter] = []
        # Last state of each thing that can change ("vllm", "nvllm", "metrics",
        # ...), so that each change is logged once.
        self._states: dict[str, str] = {}

    # --- the loop ---

    def run(self) -> int:
        """Heartbeat until stopped, then drain and deregister. Returns the exit code."""
        log.info("agent for node %s: vLLM %s, nvllm %s, every %gs",
                 self.config.node_id, self.config.vllm_url, self.config.server, self.config.interval)
        while not self.stop.is_set():
            started = self.clock()
            delay = self.safe_step()
            if delay is None:
                delay = started + self.config.interval - self.clock()
            self.wait(self.stop, delay)
        self.shutdown()
        return 0

    def safe_step(self) -> float | None:
        """step(), but a bug in it is logged and retried rather than fatal."""
        try:
            return self.step()
        except Exception:
            log.exception("unexpected error in the agent loop; retrying")
            return self.backoff.next()

    def step(self) -> float | None:
        """Look at vLLM and tell nvllm. Returns a retry delay after a failure,
        or None to wait for the next regular heartbeat."""
        seen = self.observe()
        try:
            if self.registered:
                self._heartbeat_or_forget(seen)
            if not self.registered:
                self.register(seen)
        except Unreachable as exc:
            return self._retry("unreachable", f"nvllm unreachable ({exc})", exc.retry_after)
        except Rejected as exc:
            return self._retry("rejected", f"nvllm rejected the call ({exc}); check the token and settings")
        if self._set("nvllm", "up") in ("unreachable", "rejected"):
            log.info("nvllm reachable again")
        self.backoff.reset()
        return None

    # --- vLLM ---

    def observe(self) -> Observation:
        problem = self.vllm.health_problem()
        if problem is not None:
            if self._set("vllm", OFFLINE) != OFFLINE:
                log.warning("vLLM unhealthy (%s): reporting offline", problem)
            return Observation(healthy=False)
        if self._set("vllm", ONLINE) == OFFLINE:
            log.info("vLLM healthy: reporting online")
        models, adapters = self._read_models()
        return Observation(healthy=True, load=self._read_load(), models=models, adapters=adapters)

    def _read_load(self) -> Load | None:
        try:
            load = self.vllm.load()
        except VllmError as exc:
            if self._set("metrics", "failing") != "failing":
                log.warning("cannot read vLLM's /metrics (%s): heartbeats carry no load", exc)
            return None
        if self._set("metrics", "ok") == "failing":
            log.info("vLLM's /metrics readable again")
        return load

    def _read_models(self) -> tuple[list[str] | None, list[Adapter] | None]:
        try:
            models, adapters = self.vllm.catalog()
        except VllmError as exc:
            if self._set("models", "failing") != "failing":
                log.warning("cannot read vLLM's /v1/models (%s); is --vllm-api-key needed?", exc)
            return None, None
        self._set("models", "ok")
        return models, adapters

    # --- nvllm ---

    def register(self, seen: Observation) -> None:
        """Upsert the whole node; nvllm keeps its create_time."""
        models = seen.models if seen.models is not None else (self.sent_models or [])
        payload: dict[str, Any] = {
            "node_id": self.config.node_id,
            "node_type": self.config.node_type,
            "node_address": self.config.advertise_address,
            "node_port": self.config.advertise_port,
            "node_status": seen.status,
            "timeout": self.config.timeout,
            "models": models,
        }
        if seen.load is not None:
            payload["node_info"] = seen.load.to_node_info()
        if self.config.remark is not None:
            payload["remark"] = self.config.remark
        adapters = seen.adapters if seen.adapters is not None else self.sent_adapters
        # Sent only when there are any: a node without LoRA registers as before.
        if adapters:
            payload["adapters"] = [a.to_dict() for a in adapters]
        self.nvllm.register(payload)
        self.registered, self.sent_status, self.sent_models = True, seen.status, models
        self.sent_adapters = adapters
        log.info("registered node %s at %s (%s, models: %s)", self.config.node_id, self._node_url(),
                 seen.status, ", ".join(models) or "any")

    def _heartbeat_or_forget(self, seen: Observation) -> None:
        try:
            self.heartbeat(seen)
        except NodeGone:
            log.warning("node %s gone (404): registering again", self.config.node_id)
            self.registered = False

    def heartbeat(self, seen: Observation) -> None:
        """Send the load, and node_status/models only when they changed, so an
        operator's `draining` stands until vLLM's health itself changes."""
        changes: dict[str, Any] = {}
        if seen.status != self.sent_status:
            changes["node_status"] = seen.status
        if seen.load is not None:
            changes["node_info"] = seen.load.to_node_info()
        if seen.models is not None and seen.models != self.sent_models:
            changes["models"] = seen.models
        if seen.adapters is not None and seen.adapters != self.sent_adapters:
            changes["adapters"] = [a.to_dict() for a in seen.adapters]
        node = self.nvllm.update(self.config.node_id, changes)
        self.sent_status = changes.get("node_status", self.sent_status)
        if "models" in changes:
            self.sent_models = changes["models"]
            log.info("models changed: %s", ", ".join(self.sent_models) or "none listed")
        if "adapters" in changes:
            self.sent_adapters = list(seen.adapters or [])
            log.info("LoRA adapters changed: %s", ", ".join(a.id for a in self.sent_adapters) or "none")
        self._note_outside_status(node)

    def _note_outside_status(self, node: Any) -> None:
        status = node.get("node_status") if isinstance(node, dict) else None
        if status and status != self.sent_status:
            if self._set("outside", status) != status:
                log.info("node_status is %s in nvllm, set by someone else: left as is until vLLM's "
                         "health changes", status)
        else:
            self._states.pop("outside", None)

    def _retry(self, state: str, message: str, retry_after: float | None = None) -> float:
        delay = self.backoff.next()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff.cap))
        level = logging.WARNING if self._set("nvllm", state) != state else logging.DEBUG
        log.log(level, "%s, retrying in %.1fs", message, delay)
        return delay

    # --- stopping ---

    def shutdown(self) -> None:
        """Mark the node draining, wait for its requests or the grace period,
        then delete it. Never raises: the process is leaving either way."""
        log.info("draining node %s (grace %gs)", self.config.node_id, self.config.drain_grace)
        self._mark_draining()
        self.wait_until_idle()
        self.deregister()

    def _mark_draining(self) -> None:
        try:
            self.nvllm.update(self.config.node_id, {"node_status": DRAINING})
            self.registered = True
        except NodeGone:
            self.registered = False
        except NvllmError as exc:
            log.warning("could not mark node draining (%s)", exc)

    def wait_until_idle(self) -> None:
        """Until vLLM runs and queues nothing and nvllm has nothing in flight
        to the node, or the grace period ends, or a second signal arrives."""
        deadline = self.clock() + self.config.drain_grace
        poll = min(self.config.interval, 1.0)
        while True:
            busy, inflight = self._vllm_busy(), self._nvllm_inflight()
            if busy == 0 and inflight == 0:
                log.info("drained: nothing running or in flight")
                return
            remaining = deadline - self.clock()
            if remaining <= 0 or self.hurry.is_set():
                why = "asked again to stop" if self.hurry.is_set() else "grace period over"
                log.warning("%s with %d request(s) at vLLM and %d in flight from nvllm", why, busy, inflight)
                return
            self.wait(self.hurry, min(poll, remaining))

    def _vllm_busy(self) -> int:
        """Requests vLLM runs or queues; 0 when it cannot say (it is down)."""
        try:
            return self.vllm.load().busy
        except VllmError:
            return 0

    def _nvllm_inflight(self) -> int:
        """nvllm's count of requests it sent the node and not yet finished.
        Each call also refreshes the node, so a long drain does not expire it.
        0 when nvllm cannot say: then no balancer can route to the node either."""
        try:
            self.nvllm.update(self.config.node_id, {})
            status = self.nvllm.status(self.config.node_id)
        except NvllmError:
            return 0
        inflight = status.get("inflight") if isinstance(status, dict) else None
        return inflight if isinstance(inflight, int) and inflight > 0 else 0

    def deregister(self) -> None:
        for attempt in range(1, DEREGISTER_ATTEMPTS + 1):
            try:
                self.nvllm.delete(self.config.node_id)
            except NodeGone:
                log.info("deregistered node %s (it was already gone)", self.config.node_id)
                return
            except Unreachable as exc:
                if attempt == DEREGISTER_ATTEMPTS or self.hurry.is_set():
                    log.warning("could not deregister node %s (%s): it will show offline after %ds",
                                self.config.node_id, exc, self.config.timeout)
                    return
                self.wait(self.hurry, 0.5 * attempt)
                continue
            except Rejected as exc:
                log.warning("could not deregister node %s (%s)", self.config.node_id, exc)
                return
            log.info("deregistered node %s", self.config.node_id)
            return

    # --- helpers ---

    def _node_url(self) -> str:
        host = self.config.advertise_address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.config.advertise_port}"

    def _set(self, key: str, state: str) -> str | None:
        """Record the state of `key` and return the one before (None at first).
        Callers log when the two differ, so a steady state stays silent."""
        previous = self._states.get(key)
        self._states[key] = state
        return previous

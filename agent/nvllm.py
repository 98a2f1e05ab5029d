"""nvllm's node API as the agent uses it: register, heartbeat, status and delete."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import urllib3

from agent.transport import USER_AGENT, HTTPError, describe, make_pool


class NvllmError(Exception):
    """A call to nvllm did not succeed."""


class Unreachable(NvllmError):
    """No answer, or one that says "try later" (429, 5xx): worth retrying."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Rejected(NvllmError):
    """nvllm refused the call (400, 401, 403, ...): retrying the same call will
    not help until an operator fixes the token or the settings."""


class NodeGone(NvllmError):
    """404 for the node: it expired past retention or was deleted."""


class NvllmClient:
    """Calls /api/node/node/* with the worker's Bearer token."""

    def __init__(
        self, server: str, token: str, timeout: float, pool: urllib3.PoolManager | None = None
    ) -> None:
        self._base = f"{server.rstrip('/')}/api/node/node"
        # Kept only in the headers: never in a message, a repr or the log.
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._pool = pool or make_pool(timeout)

    def register(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/register", payload, node_path=False)

    def update(self, node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """A heartbeat; raises NodeGone when nvllm no longer knows the node."""
        return self._call("PUT", f"/update/{quote(node_id)}", changes)

    def delete(self, node_id: str) -> None:
        self._call("DELETE", f"/delete/{quote(node_id)}")

    def status(self, node_id: str) -> dict[str, Any]:
        """The node with nvllm's live fields, `inflight` among them."""
        return self._call("GET", f"/status/{quote(node_id)}")

    def _call(self, method: str, path: str, body: Any = None, *, node_path: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        try:
            response = self._pool.request(method, self._base + path, body=data, headers=self._headers)
        except HTTPError as exc:
            raise Unreachable(describe(exc)) from None
        envelope = _json(response.data)
        if 200 <= response.status < 300 and isinstance(envelope, dict):
            return envelope.get("data")
        raise _failure(response, envelope, node_path=node_path)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _failure(response: urllib3.BaseHTTPResponse, envelope: Any, *, node_path: bool) -> NvllmError:
    status = response.status
    error = envelope.get("error") if isinstance(envelope, dict) else None
    reason = f"HTTP {status}: {error}" if isinstance(error, str) else f"HTTP {status}"
    # A 404 on register means --server is not nvllm, not that the node is gone.
    if status == 404 and node_path:
        return NodeGone(reason)
    if status == 429 or status >= 500:
        return Unreachable(reason, _retry_after(response.headers.get("Retry-After")))
    if 200 <= status < 300:
        return Rejected(f"HTTP {status} without nvllm's JSON envelope: is --server nvllm?")
    return Rejected(reason)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date; the back-off alone will do

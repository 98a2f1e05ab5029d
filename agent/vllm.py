"""The local vLLM server as the agent reads it: /health, /v1/models and /metrics."""

from __future__ import annotations

import urllib3

from agent.transport import USER_AGENT, HTTPError, describe, make_pool
from model.adapter import Adapter, parse_model_list
from model.vllm_metrics import Load, MetricsError, parse_load


class VllmError(Exception):
    """vLLM did not answer, or answered something the agent cannot use."""


class VllmClient:
    def __init__(
        self,
        base_url: str,
        timeout: float,
        api_key: str | None = None,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        # vLLM's --api-key guards /v1/* only; /health and /metrics are open.
        self._v1_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._pool = pool or make_pool(timeout)

    def health_problem(self) -> str | None:
        """None when /health answers 200, else what went wrong."""
        try:
            self._get("/health")
        except VllmError as exc:
            return str(exc)
        return None

    def models(self) -> list[str]:
        """The served base model names from /v1/models. Raises VllmError."""
        return self.catalog()[0]

    def catalog(self) -> tuple[list[str], list[Adapter]]:
        """(base model names, LoRA adapters) from /v1/models: a card with a
        `parent` is an adapter of that model. Raises VllmError."""
        body = self._get("/v1/models", self._v1_headers)
        try:
            return parse_model_list(body)
        except (ValueError, KeyError, TypeError):
            raise VllmError("/v1/models is not an OpenAI model list") from None

    def load(self) -> Load:
        """Running, waiting and KV-cache usage from /metrics. Raises VllmError."""
        try:
            return parse_load(self._get("/metrics").decode("utf-8", "replace"))
        except MetricsError as exc:
            raise VllmError(str(exc)) from None

    def _get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        try:
            response = self._pool.request(
                "GET", self._base + path, headers={"User-Agent": USER_AGENT, **(headers or {})}
            )
        except HTTPError as exc:
            raise VllmError(describe(exc)) from None
        if response.status != 200:
            raise VllmError(f"{path} answered HTTP {response.status}")
        return response.data

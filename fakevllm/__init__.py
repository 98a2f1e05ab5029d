"""A fake vLLM server (HTTP API, /metrics, continuous batching, faults) for tests and benchmarks."""

from __future__ import annotations

from fakevllm.metrics import METRICS_STYLES
from fakevllm.server import FAULT_MODES, FakeServer, FakeVLLM

__all__ = ["FAULT_MODES", "METRICS_STYLES", "FakeServer", "FakeVLLM"]

"""One pooled HTTP client for the agent's calls, and short descriptions of network failures."""

from __future__ import annotations

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

USER_AGENT = "nvllm-agent"


def make_pool(timeout: float) -> urllib3.PoolManager:
    """No retries and no redirects: the agent's loop decides when to try
    again, and a redirect from nvllm would mean a wrong --server."""
    return urllib3.PoolManager(
        retries=False,
        timeout=urllib3.Timeout(connect=min(2.0, timeout), read=timeout),
    )


def describe(exc: HTTPError) -> str:
    """A few words for the log, without urllib3's object reprs."""
    # NewConnectionError subclasses ConnectTimeoutError, so it goes first.
    if isinstance(exc, NewConnectionError):
        cause = exc.__context__ or exc.__cause__
        return getattr(cause, "strerror", None) or "cannot connect"
    if isinstance(exc, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, ReadTimeoutError):
        return "timed out waiting for a response"
    if isinstance(exc, ProtocolError):
        return "connection dropped"
    return type(exc).__name__


__all__ = ["USER_AGENT", "HTTPError", "describe", "make_pool"]

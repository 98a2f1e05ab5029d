"""Whether this server process has begun to stop. The server sets it on
SIGTERM; /readyz then answers 503, so a balancer's health checks take the
instance out of rotation while it still serves, before its listener closes."""

from __future__ import annotations


class Lifecycle:
    def __init__(self) -> None:
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        self._draining = True

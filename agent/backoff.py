"""Exponential back-off with jitter, for retrying an unreachable nvllm."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double from `base` up to `cap`, each drawn from the upper
    half of its step ("equal jitter"): never shorter than half the step, so a
    dead server is not hammered, and spread out, so a fleet of agents that lost
    nvllm at the same moment does not come back in lockstep."""

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._uniform = uniform

    def next(self) -> float:
        """The delay before the next attempt; each call counts one failure."""
        # min() before the power would overflow after ~1000 failures.
        step = self.cap if self.attempts > 60 else min(self.cap, self.base * 2**self.attempts)
        self.attempts += 1
        return step / 2 + self._uniform(0, step / 2)

    def reset(self) -> None:
        self.attempts = 0

"""The circuit breaker that takes a failing node out of rotation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Breaker:
    """Takes a failing node out of rotation and lets it back in by trial.

    closed -> (eject_after consecutive failures) -> open for `cooldown`
    -> half-open: one trial request, or a good /health probe
    -> closed on success, open again with a doubled cooldown on failure.
    """

    eject_after: int = 3
    base_cooldown: float = 1.0
    max_cooldown: float = 8.0
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0
    trial_running: bool = False

    @property
    def ejected(self) -> bool:
        return self.failures >= self.eject_after

    def allows(self, now: float) -> bool:
        if not self.ejected:
            return True
        return now >= self.open_until and not self.trial_running

    def success(self) -> bool:
        """Record a success; True when it brought an ejected node back."""
        recovered = self.ejected
        self.failures = 0
        self.cooldown = 0.0
        self.trial_running = False
        return recovered

    def failure(self, now: float) -> bool:
        """Record a failure; True when it ejected the node (again)."""
        self.failures += 1
        self.trial_running = False
        if self.failures < self.eject_after:
            return False
        self.cooldown = min(self.max_cooldown, self.cooldown * 2 or self.base_cooldown)
        self.open_until = now + self.cooldown
        return True

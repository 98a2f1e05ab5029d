"""Request statistics of one node (or one model) over one time bucket, and
what the dashboard reads from a run of them: rates and first-token percentiles.

Counts only add up, so buckets written by any number of processes merge by
summing them: that is what lets every worker and instance share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Upper bounds (seconds) of the first-token histogram; one more bucket holds
# everything slower. Few and fixed, so a bucket's hash stays small and every
# writer agrees on them.
TTFT_BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
TTFT_BUCKETS = len(TTFT_BOUNDS) + 1


def ttft_bucket(seconds: float) -> int:
    """The histogram bucket of one first-token time."""
    for i, bound in enumerate(TTFT_BOUNDS):
        if seconds <= bound:
            return i
    return len(TTFT_BOUNDS)


@dataclass
class Counts:
    """What happened in one bucket: attempts forwarded, those that failed,
    output tokens, and the first-token histogram of the streamed ones."""

    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * TTFT_BUCKETS)

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.tokens += other.tokens
        for i, n in enumerate(other.ttft):
            self.ttft[i] += n

    def observe(self, *, error: bool, tokens: int, ttft: float | None) -> None:
        self.requests += 1
        self.errors += 1 if error else 0
        self.tokens += max(0, tokens)
        if ttft is not None and ttft >= 0:
            self.ttft[ttft_bucket(ttft)] += 1

    def fields(self) -> dict[str, int]:
        """The non-zero counters, by field name (the names dao/stats.py stores)."""
        out = {"req": self.requests, "err": self.errors, "tok": self.tokens}
        out.update({f"h{i}": n for i, n in enumerate(self.ttft)})
        return {name: n for name, n in out.items() if n}

    def add_field(self, name: str, value: int) -> None:
        """The inverse of fields(); an unknown name (a newer writer's) is ignored."""
        if name == "req":
            self.requests += value
        elif name == "err":
            self.errors += value
        elif name == "tok":
            self.tokens += value
        elif name.startswith("h") and name[1:].isdigit() and int(name[1:]) < TTFT_BUCKETS:
            self.ttft[int(name[1:])] += value


def percentile(histogram: list[int], q: float) -> float | None:
    """The q-quantile (0-1) of a first-token histogram, interpolated linearly
    inside its bucket; the open last bucket answers its lower bound. None when
    it is empty."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(histogram):
        if n and seen + n >= rank:
            if i == len(TTFT_BOUNDS):
                return TTFT_BOUNDS[-1]
            low = TTFT_BOUNDS[i - 1] if i else 0.0
            return low + (TTFT_BOUNDS[i] - low) * max(0.0, rank - seen) / n
        seen += n
    return TTFT_BOUNDS[-1]


def summary(recent: Counts, minute: Counts, *, rate_seconds: float, minute_seconds: float) -> dict[str, float | None]:
    """The numbers the dashboard shows for one node, one model or the fleet:
    rates over the recent window, tokens and first-token percentiles over the
    minute."""
    return {
        "requests_per_s": round(recent.requests / rate_seconds, 3),
        "errors_per_s": round(recent.errors / rate_seconds, 3),
        "tokens_per_s": round(minute.tokens / minute_seconds, 3),
        "ttft_p50": _rounded(percentile(minute.ttft, 0.5)),
        "ttft_p99": _rounded(percentile(minute.ttft, 0.99)),
        "requests_1m": minute.requests,
        "errors_1m": minute.errors,
        "output_tokens_1m": minute.tokens,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

"""Back-off: doubling, bounded by its cap, jittered through an injected random source."""

from __future__ import annotations

import pytest

from agent.backoff import Backoff


def test_steps_double_up_to_the_cap_with_the_lowest_jitter():
    backoff = Backoff(1.0, 8.0, uniform=lambda low, high: low)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_steps_with_the_highest_jitter_reach_the_cap():
    backoff = Backoff(1.0, 8.0, uniform=lambda low, high: high)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_jitter_comes_from_the_upper_half_of_each_step():
    seen = []

    def uniform(low: float, high: float) -> float:
        seen.append((low, high))
        return high / 3

    backoff = Backoff(2.0, 30.0, uniform=uniform)
    assert backoff.next() == pytest.approx(1.0 + 1.0 / 3)
    assert seen == [(0, 1.0)]


def test_real_random_delays_stay_within_bounds_forever():
    backoff = Backoff(0.5, 10.0)
    delays = [backoff.next() for _ in range(2000)]
    assert all(0.25 <= d <= 10.0 for d in delays)
    assert min(delays[-100:]) >= 5.0
    assert len(set(delays[-100:])) > 90  # jittered, not lockstep


def test_reset_starts_over():
    backoff = Backoff(1.0, 8.0, uniform=lambda low, high: high)
    backoff.next(), backoff.next(), backoff.next()
    backoff.reset()
    assert backoff.next() == 1.0


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_nonsense_bounds_are_refused(base, cap):
    with pytest.raises(ValueError):
        Backoff(base, cap)

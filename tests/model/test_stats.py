"""Counts merge by adding, and percentiles come out of the fixed histogram."""

from __future__ import annotations

import pytest

from model.stats import TTFT_BOUNDS, TTFT_BUCKETS, Counts, percentile, summary, ttft_bucket


def test_first_token_times_fall_in_their_bucket():
    assert ttft_bucket(0.0) == 0
    assert ttft_bucket(0.05) == 0  # bounds are inclusive
    assert ttft_bucket(0.051) == 1
    assert ttft_bucket(30.0) == len(TTFT_BOUNDS) - 1
    assert ttft_bucket(3600.0) == TTFT_BUCKETS - 1


def test_counts_round_trip_through_their_fields_and_add_up():
    a = Counts()
    a.observe(error=False, tokens=10, ttft=0.07)
    a.observe(error=True, tokens=0, ttft=None)
    assert a.fields() == {"req": 2, "err": 1, "tok": 10, "h1": 1}
    b = Counts()
    for name, n in a.fields().items():
        b.add_field(name, n)
    b.add_field("from-a-newer-writer", 5)  # ignored, not an error
    b.add(a)
    assert (b.requests, b.errors, b.tokens, b.ttft[1]) == (4, 2, 20, 2)


def test_percentiles_interpolate_inside_a_bucket():
    hist = [0] * TTFT_BUCKETS
    assert percentile(hist, 0.5) is None
    hist[ttft_bucket(0.15)] = 100  # all in (0.1, 0.2]
    assert percentile(hist, 0.5) == pytest.approx(0.15)
    assert percentile(hist, 0.99) == pytest.approx(0.199)
    hist[ttft_bucket(100.0)] = 100  # half beyond the last bound: it answers that bound
    assert percentile(hist, 0.99) == TTFT_BOUNDS[-1]
    assert percentile(hist, 0.25) == pytest.approx(0.15)


def test_summary_divides_by_its_windows():
    recent, minute = Counts(), Counts()
    for _ in range(20):
        recent.observe(error=False, tokens=3, ttft=0.2)
    for _ in range(5):
        recent.observe(error=True, tokens=0, ttft=None)
    minute.add(recent)
    minute.observe(error=False, tokens=95, ttft=None)
    numbers = summary(recent, minute, rate_seconds=10, minute_seconds=60)
    assert numbers["requests_per_s"] == 2.5 and numbers["errors_per_s"] == 0.5
    assert numbers["tokens_per_s"] == pytest.approx(155 / 60, abs=1e-3)
    assert numbers["requests_1m"] == 26 and numbers["errors_1m"] == 5 and numbers["output_tokens_1m"] == 155
    assert 0.1 < numbers["ttft_p50"] <= 0.2

"""REDIS_URL: the plain schemes pass as they are; the Sentinel form is parsed
and every part of it checked, with the variable named and no password echoed."""

from __future__ import annotations

import pytest

from config import Settings, SettingsError
from model.store_url import SentinelUrl, parse_sentinel_url


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/nvllm",
         SentinelUrl((("10.0.0.1", 26379), ("10.0.0.2", 26380)), "nvllm")),
        ("redis+sentinel://:s%40cret@sentinel-a,sentinel-b:5000/fleet.main/3",
         SentinelUrl((("sentinel-a", 26379), ("sentinel-b", 5000)), "fleet.main", 3, "s@cret")),
        ("redis+sentinel://[::1]:26379/nvllm/0?sentinel_password=other",
         SentinelUrl((("::1", 26379),), "nvllm", 0, None, "other")),
    ],
)
def test_the_sentinel_form_is_parsed(url, parsed):
    assert parse_sentinel_url(url) == parsed
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://h1:26379", "path must be"),
        ("redis+sentinel://h1:26379/", "path must be"),
        ("redis+sentinel://h1:26379/svc/0/extra", "path must be"),
        ("redis+sentinel://h1:26379/svc/zero", "db must be a number"),
        ("redis+sentinel://h1:26379/sv*c", "service name"),
        ("redis+sentinel://h1:99999/svc", "1-65535"),
        ("redis+sentinel://h1:26379,,h2/svc", "sentinel address"),
        ("redis+sentinel://:hunter2-secret@h 1/svc", "sentinel address"),
        ("redis+sentinel://h1/svc?password=x", "unknown option"),
        ("http://redis:6379/0", "must start with"),
        ("localhost:6379", "must start with"),
    ],
)
def test_a_bad_url_stops_startup_naming_the_variable(url, complaint):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"REDIS_URL": url})
    assert "REDIS_URL" in str(caught.value) and complaint in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://:pw@redis:6379/0", "rediss://redis.internal:6380", "unix:///run/redis.sock"])
def test_plain_urls_pass_unchanged(url):
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url

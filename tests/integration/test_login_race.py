"""Thirty concurrent guesses at one username against a real server and store:
at most the limit of them get their password checked, the right password
after them is refused from that address, and not from another."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.integration

GUESSES = 30
LIMIT = 5


def test_concurrent_guesses_cannot_outrun_the_login_limit(start_service, redis_url):
    # The test client is every "client" here; a trusted proxy on loopback lets
    # it speak for two client addresses.
    service = start_service(
        redis_url, NVLLM_LOGIN_MAX_FAILURES=str(LIMIT), NVLLM_TRUSTED_PROXIES="127.0.0.1/32"
    )
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    barrier = threading.Barrier(GUESSES)

    def guess(i: int) -> int:
        barrier.wait()
        body = {"username": "admin", "password": f"wrong-guess-{i:02d}"}
        return service.request("POST", "/api/user/login", body=body, headers=attacker, timeout=60).status

    with ThreadPoolExecutor(GUESSES) as pool:
        statuses = list(pool.map(guess, range(GUESSES)))
    assert statuses.count(401) <= LIMIT, statuses  # 401: checked and wrong
    assert statuses.count(401) + statuses.count(429) == GUESSES, statuses

    right = {"username": "admin", "password": ADMIN_PASSWORD}
    refused = service.request("POST", "/api/user/login", body=right, headers=attacker)
    assert refused.status == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    elsewhere = service.request("POST", "/api/user/login", body=right, headers={"X-Forwarded-For": "203.0.113.9"})
    assert elsewhere.status == 200, elsewhere.text

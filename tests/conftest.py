"""Shared fixtures: settings -> server -> redis -> clock -> app -> client -> tokens.

Every test gets its own fake Redis server and a clock it can move, so nothing
here touches a real Redis, the network, or sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import fakeredis
import pytest

from config import Settings
from main import create_app
from tests.helpers import ADMIN_PASSWORD, PASSWORD, START


class FakeClock:
    """A clock the test sets: `clock()` is the time, `advance()` moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer's NVLLM_* or REDIS_URL may leak into a test."""
    for name in list(os.environ):
        if name.startswith("NVLLM_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def settings() -> Settings:
    # scrypt's cost turned down (production uses 2**15) so a login costs
    # microseconds; jwt_secret left unset so the generated, Redis-shared secret
    # is what every test exercises.
    return Settings(admin_password=ADMIN_PASSWORD, password_hash_n=2**4)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server, decode_responses=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(settings, redis, clock):
    return create_app(settings, redis_client=redis, clock=clock)


@pytest.fixture
def stores(app):
    return app.extensions["nvllm"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def token(app, client, stores, settings) -> Callable[[str], str]:
    """token(role): a user with that role is created, then logs in via the API."""
    from service.user import create_user

    minted: dict[str, str] = {}

    def make(role: str) -> str:
        if role not in minted:
            username = f"test-{role}"
            payload = {"username": username, "password": PASSWORD, "role": role}
            create_user(stores.users, payload, now=stores.clock(), hash_n=settings.password_hash_n)
            response = client.post("/api/user/login", json={"username": username, "password": PASSWORD})
            assert response.status_code == 200, response.get_json()
            minted[role] = response.get_json()["data"]["token"]
        return minted[role]

    return make


@pytest.fixture
def auth_headers(token) -> Callable[[str], dict[str, str]]:
    def make(role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {token(role)}"}

    return make

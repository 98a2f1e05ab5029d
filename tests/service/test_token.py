"""TokenService: HS256 tokens checked against the app's clock, revocable."""

from __future__ import annotations

import jwt
import pytest

from dao.keys import Keys
from dao.user import UserStore
from model.errors import StorageUnavailable, Unauthorized
from model.user import Role, User
from service.token import TokenService

NOW = 1704067200.0
SECRET = "a-secret-for-tests-that-is-long-enough"


@pytest.fixture
def store(redis) -> UserStore:
    return UserStore(redis, Keys())


@pytest.fixture
def tokens(store, clock) -> TokenService:
    return TokenService(store, lambda: SECRET, clock=clock)


@pytest.fixture
def ops(store, clock) -> User:
    user = User("ops", Role.WORKER, "x", create_time=clock())
    store.save(user)
    return user


def test_issue_and_verify(tokens, ops, clock):
    token = tokens.issue(ops, 3600)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "ops", "role": "worker", "ver": 0, "iat": int(NOW), "exp": int(NOW) + 3600}
    verified = tokens.verify(token)
    assert (verified.username, verified.role) == ("ops", Role.WORKER)


def test_expiry_follows_the_injected_clock(tokens, ops, clock):
    token = tokens.issue(ops, 60)
    clock.advance(59)
    tokens.verify(token)
    clock.advance(1)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.verify(token)


def test_revocation_waits_at_most_the_cache(tokens, ops, store, clock):
    token = tokens.issue(ops, 3600)
    tokens.verify(token)
    store.delete("ops")
    clock.advance(1)
    tokens.verify(token)  # cached for up to two seconds
    clock.advance(1.01)
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.verify(token)


def test_a_cached_user_carries_over_a_redis_outage(tokens, ops, server, clock):
    token = tokens.issue(ops, 3600)
    tokens.verify(token)
    server.connected = False
    clock.advance(10)
    assert tokens.verify(token).username == "ops"


def test_an_unknown_user_during_an_outage_is_503(tokens, ops, server):
    token = tokens.issue(ops, 3600)
    server.connected = False
    with pytest.raises(StorageUnavailable):
        tokens.verify(token)


def test_the_secret_is_read_lazily(store, ops):
    calls = []

    def secret():
        calls.append(1)
        return SECRET

    service = TokenService(store, secret)
    assert calls == []
    service.issue(ops, 60)
    assert calls

"""TokenService: HS256 tokens checked against the app's clock, revocable."""

from __future__ import annotations

import threading

import jwt
import pytest

from dao.keys import Keys
from dao.user import UserStore
from model.errors import StorageUnavailable, Unauthorized, ValidationError
from model.user import Role, User
from service.token import MAX_TOKEN_TTL, TokenService

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
    jti = claims.pop("jti")
    assert claims == {"sub": "ops", "role": "worker", "ver": 0, "iat": int(NOW), "exp": int(NOW) + 3600}
    assert len(jti) >= 16
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


def test_a_cached_user_is_trusted_only_so_long_in_an_outage(store, ops, server, clock):
    tokens = TokenService(store, lambda: SECRET, max_stale=60, clock=clock)
    token = tokens.issue(ops, 3600)
    tokens.verify(token)
    server.connected = False
    clock.advance(60)
    assert tokens.verify(token).username == "ops"
    clock.advance(0.5)
    with pytest.raises(StorageUnavailable):
        tokens.verify(token)
    server.connected = True
    assert tokens.verify(token).username == "ops"


class CountingStore(UserStore):
    """A UserStore that counts the checks a request makes itself, and can
    hold the refresher's round as a hung Redis would."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.request_checks = 0
        self.hold: threading.Event | None = None
        self.held = threading.Event()

    def load_for_token(self, username, jti):
        self.request_checks += 1
        return super().load_for_token(username, jti)

    def load_many_for_tokens(self, pairs):
        if self.hold is not None:
            self.held.set()
            self.hold.wait(5)
            raise StorageUnavailable(retry_after=2)
        return super().load_many_for_tokens(pairs)


@pytest.fixture
def counting(redis) -> CountingStore:
    return CountingStore(redis, Keys())


def test_the_refresher_keeps_a_used_token_checked_without_the_request_asking(counting, clock):
    tokens = TokenService(counting, lambda: SECRET, clock=clock)
    counting.save(User("ops", Role.WORKER, "x", create_time=clock()))
    token = tokens.issue(counting.load("ops"), 3600)
    tokens.verify(token)
    assert counting.request_checks == 1
    for _ in range(5):
        clock.advance(1)
        tokens.refresh_checks()
        tokens.verify(token)
    assert counting.request_checks == 1  # every check came from the refresher
    counting.delete("ops")
    clock.advance(1)
    tokens.refresh_checks()
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.verify(token)  # revoked within one round, still without a request's check
    assert counting.request_checks == 1


def test_a_refresher_that_cannot_reach_redis_stops_requests_waiting(counting, server, clock):
    tokens = TokenService(counting, lambda: SECRET, max_stale=60, clock=clock)
    counting.save(User("ops", Role.WORKER, "x", create_time=clock()))
    token = tokens.issue(counting.load("ops"), 3600)
    tokens.verify(token)
    server.connected = False
    clock.advance(1)
    tokens.refresh_checks()
    assert tokens.storage_behind
    clock.advance(30)
    assert tokens.verify(token).username == "ops"
    assert counting.request_checks == 1  # served from the cache, the store never asked
    clock.advance(30)
    with pytest.raises(StorageUnavailable):
        tokens.verify(token)  # past max_stale: only Redis can say
    server.connected = True
    tokens.refresh_checks()
    assert not tokens.storage_behind
    assert tokens.verify(token).username == "ops"


def test_a_hung_refresh_round_makes_no_request_wait(counting, clock):
    tokens = TokenService(counting, lambda: SECRET, clock=clock)
    counting.save(User("ops", Role.WORKER, "x", create_time=clock()))
    token = tokens.issue(counting.load("ops"), 3600)
    tokens.verify(token)
    counting.hold = threading.Event()
    clock.advance(1)
    round_ = threading.Thread(target=tokens.refresh_checks)
    round_.start()
    try:
        assert counting.held.wait(5)
        clock.advance(5)  # the check is past the cache, the store is not answering
        assert tokens.verify(token).username == "ops"
        assert counting.request_checks == 1
    finally:
        counting.hold.set()
        round_.join(5)
    assert tokens.storage_behind  # the round failed: still no waiting


def test_checks_of_tokens_no_longer_used_are_forgotten(counting, clock):
    tokens = TokenService(counting, lambda: SECRET, max_stale=60, clock=clock)
    counting.save(User("ops", Role.WORKER, "x", create_time=clock()))
    token = tokens.issue(counting.load("ops"), 3600)
    tokens.verify(token)
    clock.advance(61)
    tokens.refresh_checks()
    assert tokens.verify(token).username == "ops"
    assert counting.request_checks == 2  # not kept checked, so the request asked again


def test_every_token_has_its_own_jti_and_can_be_revoked_alone(tokens, ops, clock):
    (first, first_jti), (second, second_jti) = tokens.mint(ops, 3600), tokens.mint(ops, 3600)
    assert first_jti != second_jti
    assert tokens.verify(first).jti == first_jti
    tokens.revoke(first_jti)
    clock.advance(2.01)  # past the per-instance cache
    with pytest.raises(Unauthorized, match="revoked"):
        tokens.verify(first)
    assert tokens.verify(second).username == "ops"


@pytest.mark.parametrize("jti", ["", "short", "a" * 65, "has space in it!", None, 7])
def test_a_bad_jti_cannot_be_revoked(tokens, jti):
    with pytest.raises(ValidationError):
        tokens.revoke(jti)


def test_no_token_outlives_the_longest_lifetime(tokens, ops):
    tokens.issue(ops, MAX_TOKEN_TTL)
    with pytest.raises(ValueError):
        tokens.issue(ops, MAX_TOKEN_TTL + 1)


def forged(ops, clock, **changes) -> str:
    now = int(clock())
    claims = {"sub": "ops", "role": "worker", "ver": ops.token_version, "iat": now, "exp": now + 60,
              "jti": "a-jti-of-our-own-shape"}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not DROP}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()  # a claim left out


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": 1e308},
        {"exp": NOW + 60.0},  # a float, not an integer
        {"exp": int(NOW) + MAX_TOKEN_TTL + 10},  # longer than nvllm mints
        {"iat": int(NOW) + 3600, "exp": int(NOW) + 7200},  # issued in the future
        {"iat": 0, "exp": 2**40},  # exp far past iat + the longest lifetime
        {"iat": float("nan")},
        {"ver": DROP},
        {"ver": "0"},
        {"ver": True},
        {"sub": 7},
        {"jti": "x"},
        {"jti": 12},
    ],
    ids=repr,
)
def test_lax_claims_are_refused(tokens, ops, clock, changes):
    with pytest.raises(Unauthorized):
        tokens.verify(forged(ops, clock, **changes))


def test_well_formed_claims_pass(tokens, ops, clock):
    assert tokens.verify(forged(ops, clock)).username == "ops"
    assert tokens.verify(forged(ops, clock, iat=int(clock()) + 3)).username == "ops"  # clock skew
    assert tokens.verify(forged(ops, clock, jti=DROP)).jti is None  # minted before jti existed


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

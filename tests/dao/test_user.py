"""UserStore: create-if-free, failure counters, the shared secret."""

from __future__ import annotations

import pytest

from model.errors import Conflict, StorageUnavailable
from model.user import Role, User
from tests.dao.conftest import PREFIX


def user(name="ops", role=Role.USER) -> User:
    return User(name, role, "scrypt$16$8$1$AA==$AA==", create_time=1.5)


def test_create_only_when_free(users, redis):
    assert users.create(user()) is True
    assert users.create(user(role=Role.ADMIN)) is False
    assert users.load("ops").role is Role.USER
    assert redis.smembers(f"{PREFIX}:users") == {"ops"}


def test_save_load_all_count_delete(users):
    users.save(user("b"))
    users.save(user("a", Role.ADMIN))
    users.save(user("c", Role.ADMIN))
    assert [u.username for u in users.load_all()] == ["a", "b", "c"]
    assert users.count() == 3
    assert users.delete("a") is True and users.delete("a") is False
    assert users.count() == 2 and users.load("a") is None


def test_update_changes_only_what_is_sent_and_bumps_the_version(users):
    users.save(user("ops"))
    changed = users.update("ops", role="worker")
    assert (changed.role, changed.password_hash, changed.token_version) == (Role.WORKER, user().password_hash, 1)
    changed = users.update("ops", password_hash="scrypt$new")
    assert (changed.role, changed.password_hash, changed.token_version) == (Role.WORKER, "scrypt$new", 2)


def test_update_never_recreates_a_deleted_user(users, redis):
    assert users.update("ghost", role="admin") is None
    assert redis.keys("*") == []


def test_the_last_admin_is_kept_inside_redis(users):
    users.save(user("a", Role.ADMIN))
    users.save(user("b", Role.ADMIN))
    assert users.update("a", role="user").role is Role.USER
    # b is now the only admin: neither a demotion nor a delete may go through.
    with pytest.raises(Conflict):
        users.update("b", role="worker")
    with pytest.raises(Conflict):
        users.delete("b")
    assert users.load("b").role is Role.ADMIN
    assert users.update("b", role="admin").role is Role.ADMIN  # not a demotion


def test_rehash_only_replaces_the_hash_it_verified(users):
    users.save(user("ops"))
    old = user().password_hash
    assert users.rehash("ops", old, "scrypt$stronger") is True
    assert users.rehash("ops", old, "scrypt$stale") is False  # changed meanwhile
    stored = users.load("ops")
    assert stored.password_hash == "scrypt$stronger" and stored.token_version == 0


def test_attempts_are_counted_before_checking_and_refused_past_the_free_ones(users):
    limits = {"free": 2, "free_alone": 20, "window": 300}
    assert users.count_failure("ops", "10.0.0.1", now=100.0, **limits) == 0
    assert users.count_failure("ops", "10.0.0.1", now=100.0, **limits) == 0
    assert users.count_failure("ops", "10.0.0.1", now=100.0, **limits) == 1.0  # refused: wait 1 s
    assert users.count_failure("ops", "10.0.0.1", now=100.5, **limits) == 0.5
    assert users.count_failure("ops", "10.0.0.2", now=100.5, **limits) == 0  # another address
    assert users.count_failure("ops", "10.0.0.1", now=101.0, **limits) == 0  # the wait is over
    assert users.count_failure("ops", "10.0.0.1", now=101.0, **limits) == 2.0  # and doubled


def test_a_failure_restarts_the_wait_and_a_success_forgives(users, redis):
    limits = {"free": 1, "free_alone": 3, "window": 60}
    assert users.count_failure("ops", "a", now=10.0, **limits) == 0
    users.failed("ops", "a", now=15.0, window=60)  # the check ended 5 s later
    assert users.count_failure("ops", "a", now=15.5, **limits) == 0.5
    assert users.count_failure("ops", "a", now=16.0, **limits) == 0
    users.forgive_failure("ops", "a")
    assert not redis.exists(f"{PREFIX}:login_failures:pair:ops:a")
    assert redis.hget(f"{PREFIX}:login_failures:user:ops", "n") == "1"
    for key in redis.keys("*"):
        assert 0 < redis.ttl(key) <= 60


def test_the_wait_is_capped_by_the_window(users):
    limits = {"free": 1, "free_alone": 100, "window": 8}
    now = 0.0
    assert users.count_failure("ops", "a", now=now, **limits) == 0  # the free one
    waits = []
    for _ in range(6):
        waits.append(users.count_failure("ops", "a", now=now, **limits))
        now += waits[-1]
        assert users.count_failure("ops", "a", now=now, **limits) == 0
    assert waits == [1, 2, 4, 8, 8, 8]


def test_a_counter_from_an_older_version_is_replaced(users, redis):
    key = f"{PREFIX}:login_failures:addr:10.0.0.1"
    redis.set(key, 3)  # the old counters were plain strings
    assert users.count_failure("ops", "10.0.0.1", now=1.0, free=5, free_alone=50, window=60) == 0
    assert redis.hget(key, "n") == "1" and 0 < redis.ttl(key) <= 60


def test_revoked_tokens_come_with_the_user(users, redis):
    users.save(user("ops"))
    assert users.load_for_token("ops", "jti-one") == (users.load("ops"), False)
    users.revoke_token("jti-one", 3600)
    assert users.load_for_token("ops", "jti-one") == (users.load("ops"), True)
    assert users.load_for_token("ops", "jti-two")[1] is False
    assert users.load_for_token("nobody", None) == (None, False)
    assert 0 < redis.ttl(f"{PREFIX}:revoked_token:jti-one") <= 3600


def test_many_token_checks_in_one_round_trip(users):
    users.save(user("ops"))
    users.revoke_token("jti-one", 3600)
    pairs = [("ops", "jti-one"), ("ops", None), ("nobody", "jti-two"), ("ops", "jti-two")]
    assert users.load_many_for_tokens(pairs) == [users.load_for_token(name, jti) for name, jti in pairs]
    assert users.load_many_for_tokens([]) == []


def test_shared_secret_first_one_wins(users):
    assert users.shared_secret("first") == "first"
    assert users.shared_secret("second") == "first"


def test_storage_errors_become_storage_unavailable(users, server):
    server.connected = False
    for call in (users.count, lambda: users.load("x"), lambda: users.create(user()),
                 lambda: users.count_failure("x", "a", now=1, free=1, free_alone=1, window=60),
                 lambda: users.update("x", role="user"), lambda: users.delete("x"),
                 lambda: users.load_for_token("x", "j"), lambda: users.shared_secret("s")):
        with pytest.raises(StorageUnavailable):
            call()

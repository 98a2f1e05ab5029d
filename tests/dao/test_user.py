"""UserStore: create-if-free, failure counters, the shared secret."""

from __future__ import annotations

import pytest

from model.errors import StorageUnavailable
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
    assert [u.username for u in users.load_all()] == ["a", "b"]
    assert users.count() == 2
    assert users.delete("a") is True and users.delete("a") is False
    assert users.count() == 1 and users.load("a") is None


def test_failures_count_within_a_window(users, redis):
    assert users.failures("user", "ops") == (0, 1)
    assert users.count_failure("user", "ops", 300) == (1, 300)
    count, ttl = users.count_failure("user", "ops", 300)
    assert count == 2 and 0 < ttl <= 300
    assert users.failures("user", "ops")[0] == 2
    assert users.failures("addr", "ops") == (0, 1)  # kinds are separate
    users.clear_failures("user", "ops")
    assert users.failures("user", "ops") == (0, 1)
    assert redis.keys("*") == []


def test_a_counter_that_lost_its_expiry_gets_one_back(users, redis):
    key = f"{PREFIX}:login_failures:addr:10.0.0.1"
    redis.set(key, 3)  # e.g. written by an older version without EXPIRE
    assert users.count_failure("addr", "10.0.0.1", 60) == (4, 60)
    assert 0 < redis.ttl(key) <= 60


def test_shared_secret_first_one_wins(users):
    assert users.shared_secret("first") == "first"
    assert users.shared_secret("second") == "first"


def test_storage_errors_become_storage_unavailable(users, server):
    server.connected = False
    for call in (users.count, lambda: users.load("x"), lambda: users.create(user()),
                 lambda: users.count_failure("user", "x", 60), lambda: users.shared_secret("s")):
        with pytest.raises(StorageUnavailable):
            call()

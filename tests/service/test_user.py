"""Users: bootstrap, login and its limits, management rules."""

from __future__ import annotations

import pytest

from dao.keys import Keys
from dao.user import UserStore
from model.errors import Conflict, TooManyRequests, Unauthorized, UserNotFound, ValidationError
from model.user import Role
from service import user as users

N = 2**4
NOW = 1704067200.0
PASSWORD = "password-for-tests"


@pytest.fixture
def store(redis) -> UserStore:
    return UserStore(redis, Keys())


def login(store, username="admin", password=PASSWORD, addr="10.0.0.1", max_failures=3):
    return users.login(
        store,
        {"username": username, "password": password},
        client_addr=addr,
        max_failures=max_failures,
        window=60,
        hash_n=N,
    )


def test_bootstrap_with_a_password(store):
    assert users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N) is None
    assert login(store).role is Role.ADMIN


def test_bootstrap_without_a_password_generates_one(store):
    generated = users.bootstrap_admin(store, None, now=NOW, hash_n=N)
    assert generated and len(generated) >= 16
    assert login(store, password=generated).username == "admin"


def test_bootstrap_only_with_no_users(store):
    users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
    assert users.bootstrap_admin(store, None, now=NOW, hash_n=N) is None
    assert store.load("admin") is None


def test_login_limits(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(store, password="wrong-password", addr="10.0.0.9")
    with pytest.raises(TooManyRequests) as caught:
        login(store, addr="10.0.0.10")
    assert 1 <= caught.value.retry_after <= 60
    with pytest.raises(TooManyRequests):
        login(store, "someone-else", addr="10.0.0.9")


def test_an_unknown_user_counts_as_a_failure(store):
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(store, "ghost")
    with pytest.raises(TooManyRequests):
        login(store, "ghost", addr="10.0.0.2")


def test_create_update_delete(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    created = users.create_user(store, {"username": "ops", "password": PASSWORD, "role": "worker"}, now=NOW, hash_n=N)
    assert created.role is Role.WORKER
    first = created.token_version
    with pytest.raises(Conflict):
        users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
    updated = users.update_user(store, "ops", {"role": "user"}, hash_n=N)
    assert updated.role is Role.USER and updated.token_version == first + 1
    users.update_user(store, "ops", {"password": "another-password"}, hash_n=N)
    assert login(store, "ops", "another-password").token_version == first + 2
    users.delete_user(store, "ops")
    with pytest.raises(UserNotFound):
        users.get_user(store, "ops")
    with pytest.raises(UserNotFound):
        users.delete_user(store, "ops")


def test_the_last_admin_stays(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    with pytest.raises(Conflict):
        users.delete_user(store, "admin")
    with pytest.raises(Conflict):
        users.update_user(store, "admin", {"role": "worker"}, hash_n=N)
    users.update_user(store, "admin", {"role": "admin"}, hash_n=N)  # not a demotion
    assert store.load("admin").role is Role.ADMIN


@pytest.mark.parametrize("payload", [{"password": "short"}, {"role": "root"}, {"username": "x"}, []])
def test_bad_updates_change_nothing(store, payload):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    before = store.load("admin")
    with pytest.raises(ValidationError):
        users.update_user(store, "admin", payload, hash_n=N)
    assert store.load("admin") == before


def test_a_role_check_runs_before_a_password_change(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    with pytest.raises(Conflict):
        users.update_user(store, "admin", {"password": "another-password", "role": "user"}, hash_n=N)
    assert login(store).username == "admin"


def test_a_user_created_again_starts_at_another_token_version(store):
    users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
    versions = {store.load("ops").token_version}
    for _ in range(3):
        users.delete_user(store, "ops")
        users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
        versions.add(store.load("ops").token_version)
    assert len(versions) == 4

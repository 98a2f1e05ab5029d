"""Users: bootstrap, login and its limits, management rules."""

from __future__ import annotations

import pytest

from dao.keys import Keys
from dao.user import UserStore
from model.errors import Conflict, TooManyRequests, Unauthorized, UserNotFound, ValidationError
from model.user import Role, password_problem
from service import user as users

N = 2**4
NOW = 1704067200.0
PASSWORD = "password-for-tests"


@pytest.fixture
def store(redis) -> UserStore:
    return UserStore(redis, Keys())


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


@pytest.fixture(autouse=True)
def reset_clock():
    CLOCK.now = NOW


def login(store, username="admin", password=PASSWORD, addr="10.0.0.1", max_failures=3, hash_n=N):
    return users.login(
        store,
        {"username": username, "password": password},
        client_addr=addr,
        max_failures=max_failures,
        window=60,
        hash_n=hash_n,
        clock=CLOCK,
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


def test_login_limits_per_username_and_address(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(store, password="wrong-password", addr="10.0.0.9")
    # From that address even the right password waits, and is not checked.
    with pytest.raises(TooManyRequests) as caught:
        login(store, addr="10.0.0.9")
    assert caught.value.retry_after == 1
    # The wait is a back-off, not a lock: once over, that address may try again.
    CLOCK.now += 1
    assert login(store, addr="10.0.0.9").username == "admin"


def test_guesses_from_one_address_do_not_lock_the_user_out_elsewhere(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(store, password="wrong-password", addr="10.0.0.9")
    for _ in range(20):  # and the attacker keeps hammering
        with pytest.raises(TooManyRequests):
            login(store, password="wrong-password", addr="10.0.0.9")
    assert login(store, addr="10.0.0.10").username == "admin"


def test_concurrent_guesses_cannot_outrun_the_limit(store, monkeypatch):
    """Ten guesses arriving while the first is being checked: each is counted
    before any password is checked, so only the free three are checked."""
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    real = users.verify_password
    checked: list[str] = []
    outcomes: list[str] = []

    def verify_while_others_arrive(password, stored):
        checked.append(password)
        if len(checked) == 1:
            for i in range(9):
                try:
                    login(store, password=f"wrong-password-{i}", addr="10.0.0.9")
                except (Unauthorized, TooManyRequests) as exc:
                    outcomes.append(type(exc).__name__)
        return real(password, stored)

    monkeypatch.setattr(users, "verify_password", verify_while_others_arrive)
    with pytest.raises(Unauthorized):
        login(store, password="wrong-password", addr="10.0.0.9")
    assert len(checked) == 3
    assert outcomes.count("TooManyRequests") == 7
    with pytest.raises(TooManyRequests):
        login(store, addr="10.0.0.9")  # the right one, after the limit


def test_many_addresses_slow_down_guessing_one_username(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    for i in range(10 * 3):  # ten times the per-address limit, spread out
        with pytest.raises(Unauthorized):
            login(store, password="wrong-password", addr=f"10.0.1.{i}")
    with pytest.raises(TooManyRequests):
        login(store, addr="10.0.2.1")
    CLOCK.now += 1
    assert login(store, addr="10.0.2.1").username == "admin"


def test_an_ipv6_client_counts_as_its_slash_64(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    for i in range(3):
        with pytest.raises(Unauthorized):
            login(store, password="wrong-password", addr=f"2001:db8:1:2::{i + 1}")
    with pytest.raises(TooManyRequests):
        login(store, addr="2001:db8:1:2:ffff::9")
    assert login(store, addr="2001:db8:1:3::1").username == "admin"


def test_an_unknown_user_counts_as_a_failure(store):
    for _ in range(3):
        with pytest.raises(Unauthorized):
            login(store, "ghost")
    with pytest.raises(TooManyRequests):
        login(store, "ghost")


def test_a_cheaper_hash_is_replaced_at_the_next_login(store):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    before = store.load("admin")
    assert before.password_hash.startswith(f"scrypt${N}$")
    login(store, hash_n=N * 2)
    after = store.load("admin")
    assert after.password_hash.startswith(f"scrypt${N * 2}$")
    assert after.token_version == before.token_version  # a re-hash revokes nothing
    assert login(store, hash_n=N * 2).username == "admin"


def test_the_generated_admin_password_passes_the_rule(store):
    generated = users.bootstrap_admin(store, None, now=NOW, hash_n=N)
    assert password_problem(generated) is None


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


def test_an_update_racing_a_delete_does_not_bring_the_user_back(store, monkeypatch):
    users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
    real = users.hash_password

    def deleted_while_hashing(password, *, n):
        users.delete_user(store, "ops")
        return real(password, n=n)

    monkeypatch.setattr(users, "hash_password", deleted_while_hashing)
    with pytest.raises(UserNotFound):
        users.update_user(store, "ops", {"password": "another-password"}, hash_n=N)
    assert store.load("ops") is None
    assert "ops" not in [u.username for u in store.load_all()]


def test_concurrent_changes_of_one_user_both_land(store, monkeypatch):
    users.create_user(store, {"username": "ops", "password": PASSWORD}, now=NOW, hash_n=N)
    first = store.load("ops").token_version
    real = users.hash_password

    def role_changed_while_hashing(password, *, n):
        users.update_user(store, "ops", {"role": "worker"}, hash_n=N)
        return real(password, n=n)

    monkeypatch.setattr(users, "hash_password", role_changed_while_hashing)
    users.update_user(store, "ops", {"password": "another-password"}, hash_n=N)
    monkeypatch.undo()
    stored = store.load("ops")
    assert stored.role is Role.WORKER
    assert stored.token_version == first + 2
    assert login(store, "ops", "another-password").username == "ops"


def test_two_admins_demoting_each_other_leave_one(store, monkeypatch):
    users.bootstrap_admin(store, PASSWORD, now=NOW, hash_n=N)
    users.create_user(store, {"username": "second", "password": PASSWORD, "role": "admin"}, now=NOW, hash_n=N)
    real_load_all = store.load_all
    raced = []

    def other_demotion_lands_meanwhile():
        snapshot = real_load_all()
        if not raced:
            raced.append(1)
            users.update_user(store, "second", {"role": "user"}, hash_n=N)
        return snapshot

    monkeypatch.setattr(store, "load_all", other_demotion_lands_meanwhile)
    try:
        users.update_user(store, "admin", {"role": "user"}, hash_n=N)
    except Conflict:
        pass
    if not raced:  # nothing reads the user list first: demote the other now
        with pytest.raises(Conflict):
            users.update_user(store, "second", {"role": "user"}, hash_n=N)
    monkeypatch.undo()
    assert [u.username for u in store.load_all() if u.role is Role.ADMIN] in (["admin"], ["second"])


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

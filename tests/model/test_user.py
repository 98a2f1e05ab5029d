"""Users: name and password rules, scrypt hashes, and the Redis hash."""

from __future__ import annotations

import pytest

from model.errors import ValidationError
from model.user import (
    HASH_N,
    Role,
    User,
    common_passwords,
    hash_password,
    needs_rehash,
    password_problem,
    validate_password,
    validate_role,
    validate_username,
    verify_password,
)


def test_hash_and_verify():
    stored = hash_password("correct horse", n=2**4)
    assert stored.startswith("scrypt$16$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_hashes_are_salted():
    assert hash_password("same", n=2**4) != hash_password("same", n=2**4)


def test_a_hash_keeps_its_own_work_factor():
    assert verify_password("pw", hash_password("pw", n=2**5))


@pytest.mark.parametrize(
    "stored", ["", "plain", "md5$x", "scrypt$a$b$c$d$e", "scrypt$16$8$1$!!$!!", "bcrypt$16$8$1$AA==$AA=="]
)
def test_a_malformed_hash_never_verifies(stored):
    assert verify_password("pw", stored) is False


@pytest.mark.parametrize("good", ["admin", "a", "ops.team_1-x", "x" * 64])
def test_good_usernames(good):
    assert validate_username(good) == good


@pytest.mark.parametrize("bad", ["", "a:b", "*", " a", "a\n", "-a", "x" * 65, "用户", None, 1])
def test_bad_usernames(bad):
    with pytest.raises(ValidationError) as caught:
        validate_username(bad)
    assert caught.value.field == "username"


def test_password_rules():
    assert validate_password("a-long-password") == "a-long-password"
    assert validate_password("short", for_new=False) == "short"
    for bad in ("", None, 12345678, "short", "x" * 1025, "eleven-char"):
        with pytest.raises(ValidationError):
            validate_password(bad)


# The README's and the tests' own examples must stay valid.
@pytest.mark.parametrize(
    "good",
    ["choose-a-long-one", "a-long-password", "another-long-one", "password-for-tests",
     "admin-password-for-tests", "integration-admin-password", "alice-password-1", "x7#Lq9!vR2@m"],
)
def test_reasonable_passwords_pass(good):
    assert password_problem(good) is None
    assert validate_password(good) == good


@pytest.mark.parametrize(
    "weak",
    [
        "12345678",  # the old minimum of 8 let this in
        "password1234", "qwerty123456", "1q2w3e4r5t6y",  # common, 12+ characters
        "PASSWORD1234!", "dragon123456", "iloveyou2024!",  # a common word and filler
        "passwordpassword", "hunter2hunter2",  # a common word repeated
        "aaaaaaaaaaaa", "abababababab",  # too few different characters
        "123456789012345",  # digits only
    ],
)
def test_weak_passwords_are_refused(weak):
    assert password_problem(weak)
    with pytest.raises(ValidationError) as caught:
        validate_password(weak)
    assert caught.value.field == "password"


def test_the_common_password_list_ships():
    common = common_passwords()
    assert len(common) > 10_000
    assert {"password", "123456", "qwerty", "letmein"} <= common


def test_new_hashes_cost_what_owasp_asks():
    assert HASH_N == 2**17
    stored = hash_password("a-long-password")
    assert stored.startswith("scrypt$131072$8$1$")
    assert verify_password("a-long-password", stored)
    assert not needs_rehash(stored)


def test_cheaper_or_foreign_hashes_need_a_rehash():
    assert needs_rehash(hash_password("pw", n=2**15))
    assert not needs_rehash(hash_password("pw", n=2**4), n=2**4)
    for stored in ("", "bcrypt$x", "scrypt$a$b$c$d$e"):
        assert needs_rehash(stored)


def test_roles():
    assert validate_role("worker") is Role.WORKER
    with pytest.raises(ValidationError):
        validate_role("root")


def test_redis_round_trip_and_api_json():
    user = User("ops", Role.WORKER, hash_password("pw", n=2**4), token_version=3, create_time=1704067200.5)
    assert User.from_redis(user.to_redis()) == user
    assert user.to_dict() == {"username": "ops", "role": "worker", "create_time": "2024-01-01T00:00:00"}

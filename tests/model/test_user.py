"""Users: name and password rules, scrypt hashes, and the Redis hash."""

from __future__ import annotations

import pytest

from model.errors import ValidationError
from model.user import (
    Role,
    User,
    hash_password,
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
    assert validate_password("12345678") == "12345678"
    assert validate_password("short", for_new=False) == "short"
    for bad in ("", None, 12345678, "short", "x" * 1025):
        with pytest.raises(ValidationError):
            validate_password(bad)


def test_roles():
    assert validate_role("worker") is Role.WORKER
    with pytest.raises(ValidationError):
        validate_role("root")


def test_redis_round_trip_and_api_json():
    user = User("ops", Role.WORKER, hash_password("pw", n=2**4), token_version=3, create_time=1704067200.5)
    assert User.from_redis(user.to_redis()) == user
    assert user.to_dict() == {"username": "ops", "role": "worker", "create_time": "2024-01-01T00:00:00"}

"""User, Role and password hashing (scrypt from the standard library)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from model.errors import ValidationError

# A username becomes part of a Redis key: same rule as node ids (dao/keys.py).
# \Z, not $: $ also matches before a trailing newline.
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class Role(StrEnum):
    """admin > worker > user: each role may do what the ones below it may."""

    ADMIN = "admin"
    WORKER = "worker"
    USER = "user"


def validate_username(value: Any) -> str:
    if not isinstance(value, str) or not USERNAME_PATTERN.match(value):
        raise ValidationError(
            "username", "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return value


def validate_password(value: Any, *, for_new: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("password", "is required")
    if len(value) > MAX_PASSWORD:
        raise ValidationError("password", f"must be at most {MAX_PASSWORD} characters")
    if for_new and len(value) < MIN_PASSWORD:
        raise ValidationError("password", f"must be at least {MIN_PASSWORD} characters")
    return value


def validate_role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValidationError("role", "must be one of admin, worker, user") from None


def hash_password(password: str, *, n: int = 2**15) -> str:
    """scrypt with a random salt; the parameters travel with the hash, so a
    stored hash stays verifiable when the default work factor changes."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, maxmem=2**27)
    b64 = base64.b64encode
    return f"scrypt${n}$8$1${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=2**27,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass
class User:
    username: str
    role: Role
    password_hash: str
    token_version: int = 0
    create_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """API JSON: never the hash."""
        from model.node import format_time

        return {
            "username": self.username,
            "role": self.role.value,
            "create_time": format_time(self.create_time),
        }

    def to_redis(self) -> dict[str, str]:
        return {
            "username": self.username,
            "role": self.role.value,
            "password_hash": self.password_hash,
            "token_version": str(self.token_version),
            "create_time": repr(self.create_time),
        }

    @classmethod
    def from_redis(cls, mapping: dict[str, str]) -> User:
        return cls(
            username=mapping["username"],
            role=Role(mapping.get("role", "user")),
            password_hash=mapping.get("password_hash", ""),
            token_version=int(mapping.get("token_version", 0)),
            create_time=float(mapping.get("create_time", 0)),
        )

"""User, Role and password hashing (scrypt from the standard library)."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from model.schema import Choice, Fields, Integer, Text

# A username becomes part of a Redis key: same rule as node ids (dao/keys.py).
USERNAME_CHARS = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
USERNAME_RULE = "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
# The longest lifetime nvllm mints (`python main.py token --ttl`, POST
# /api/user/token, NVLLM_TOKEN_TTL): a token claiming more was not made here.
MAX_TOKEN_TTL = 10 * 365 * 86400
DEFAULT_MINTED_TTL = 365 * 86400
# OWASP's scrypt floor (n=2**17, r=8, p=1): 128 MiB and about 0.4 s of one core
# per hash. Hashes carry their own parameters, so older ones still verify and
# are re-hashed at the next login.
HASH_N = 2**17
HASH_R = 8
HASH_P = 1
# Django's list (see common-passwords.LICENSE beside it), lowercased.
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common-passwords.txt.gz")
# What people append to a common word to pass a length rule: "dragon123456".
_TRAILING_FILLER = re.compile(r"[\W\d_]+\Z")


class Role(StrEnum):
    """admin > worker > user: each role may do what the ones below it may."""

    ADMIN = "admin"
    WORKER = "worker"
    USER = "user"


def validate_username(value: Any) -> str:
    return USERNAME.check("username", value)


def validate_password(value: Any, *, for_new: bool = True) -> str:
    """A login only needs a password of a sane size; a new one must also pass
    the strength rule (password_problem)."""
    return (NEW_PASSWORD if for_new else PASSWORD).check("password", value)


def password_problem(value: str) -> str | None:
    """Why a new password is too weak, or None: shorter than MIN_PASSWORD, fewer
    than 4 distinct characters, a common password, one repeated, or one with
    only digits and symbols after it."""
    if len(value) < MIN_PASSWORD:
        return f"must be at least {MIN_PASSWORD} characters"
    if len(set(value)) < 4:
        return "must use at least 4 different characters"
    lowered = value.lower()
    common = common_passwords()
    base = _TRAILING_FILLER.sub("", lowered)
    if lowered in common or not base or base in common or _repeats_of(lowered) in common:
        return "is too common; choose a longer or less predictable one"
    return None


def _repeats_of(text: str) -> str:
    """The shortest string that `text` repeats ("abcabc" -> "abc")."""
    doubled = (text + text).find(text, 1)
    return text[:doubled] if doubled < len(text) else text


@functools.cache
def common_passwords() -> frozenset[str]:
    with gzip.open(COMMON_PASSWORDS_FILE, "rt", encoding="utf-8") as lines:
        return frozenset(line.strip().lower() for line in lines if line.strip())


def validate_role(value: Any) -> Role:
    return Role(ROLE.check("role", value))


# --- request rules (model/schema.py): each checks a body and describes it ---

USERNAME = Text(USERNAME_CHARS, USERNAME_RULE, type_error=USERNAME_RULE)
# What a login accepts: any password of a sane size (old ones may predate the rule).
PASSWORD = Text(min_length=1, max_length=MAX_PASSWORD, type_error="is required", short_error="is required")
NEW_PASSWORD = Text(
    min_length=1,
    max_length=MAX_PASSWORD,
    type_error="is required",
    short_error="is required",
    extra=password_problem,
    also=f"A new password needs at least {MIN_PASSWORD} characters, at least 4 different ones, and must not be "
    "a common password, one repeated, or one followed only by digits and symbols.",
    schema_extra={"minLength": MIN_PASSWORD},
)
ROLE = Choice(tuple(r.value for r in Role), "admin > worker > user: each may do what the roles below it may.")
LOGIN = Fields({"username": USERNAME, "password": PASSWORD}, required=("username", "password"))
NEW_USER = Fields(
    {"username": USERNAME, "password": NEW_PASSWORD, "role": ROLE},
    required=("username", "password"),
    description="role defaults to user.",
)
USER_CHANGES = Fields(
    {"password": NEW_PASSWORD, "role": ROLE},
    description="Either change, or none, revokes the user's tokens.",
)
TOKEN_REQUEST = Fields(
    {
        "ttl": Integer(
            60, MAX_TOKEN_TTL, f"The token's lifetime, s (default {DEFAULT_MINTED_TTL}).",
            type_error=f"must be an integer between 60 and {MAX_TOKEN_TTL}",
            range_error=f"must be an integer between 60 and {MAX_TOKEN_TTL}",
        )
    }
)
JTI = Text(r"[A-Za-z0-9_-]{16,64}", "must be 16-64 characters of A-Z a-z 0-9 _ -",
           type_error="must be 16-64 characters of A-Z a-z 0-9 _ -")


def _maxmem(n: int, r: int, p: int) -> int:
    """scrypt needs 128*r*n bytes for its table plus 128*r*p for its blocks;
    OpenSSL refuses anything above maxmem, so leave a little room."""
    return 128 * r * (n + p) + 2**20


def hash_password(password: str, *, n: int = HASH_N) -> str:
    """scrypt with a random salt; the parameters travel with the hash, so a
    stored hash stays verifiable when the default work factor changes."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=HASH_R, p=HASH_P, maxmem=_maxmem(n, HASH_R, HASH_P)
    )
    b64 = base64.b64encode
    return f"scrypt${n}${HASH_R}${HASH_P}${b64(salt).decode()}${b64(digest).decode()}"


def needs_rehash(stored: str, *, n: int = HASH_N) -> bool:
    """A hash made with less work than `n` asks for now (or not ours)."""
    try:
        scheme, cost, r, p, _, _ = stored.split("$")
        return scheme != "scrypt" or int(cost) * int(r) * int(p) < n * HASH_R * HASH_P
    except ValueError:
        return True


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        cost, blocks, lanes = int(n), int(r), int(p)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=cost,
            r=blocks,
            p=lanes,
            maxmem=_maxmem(cost, blocks, lanes),
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

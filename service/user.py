"""Users: bootstrap, login with rate limiting, and management."""

from __future__ import annotations

import functools
import secrets
from typing import Any

from dao.user import UserStore
from model.errors import Conflict, TooManyRequests, Unauthorized, UserNotFound, ValidationError
from model.user import (
    Role,
    User,
    hash_password,
    validate_password,
    validate_role,
    validate_username,
    verify_password,
)


@functools.lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    """Checked against when the username is unknown, so a miss costs as much
    time as a wrong password and does not reveal which names exist: it must
    use the same work factor as real hashes."""
    return hash_password("not-a-real-password", n=n)


def _new_user(username: str, role: Role, password: str, *, now: float, hash_n: int) -> User:
    """token_version starts at random, so a user removed and created again under
    the same name does not get the removed user's tokens back (they carry its
    version)."""
    digest = hash_password(password, n=hash_n)
    return User(username, role, digest, token_version=secrets.randbelow(2**31), create_time=now)


def bootstrap_admin(store: UserStore, password: str | None, *, now: float, hash_n: int) -> str | None:
    """With no users at all, create `admin`. Returns the generated password when
    none was given (to be printed once), else None."""
    if store.count() > 0:
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(18)
    user = _new_user("admin", Role.ADMIN, password, now=now, hash_n=hash_n)
    if not store.create(user):
        return None  # another instance bootstrapped first
    return generated


def login(
    store: UserStore,
    payload: Any,
    *,
    client_addr: str,
    max_failures: int,
    window: int,
    hash_n: int = 2**15,
) -> User:
    """The user whose password matches. Raises Unauthorized, or TooManyRequests
    once a username or a client address has failed `max_failures` times within
    `window` seconds."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(payload) - {"username", "password"}
    if unknown:
        raise ValidationError(sorted(unknown)[0], "unknown field")
    username = validate_username(payload.get("username"))
    password = validate_password(payload.get("password"), for_new=False)

    for kind, who in (("user", username), ("addr", client_addr)):
        count, ttl = store.failures(kind, who)
        if count >= max_failures:
            raise TooManyRequests(retry_after=ttl)

    user = store.load(username)
    if user is None:
        verify_password(password, _dummy_hash(hash_n))
    elif verify_password(password, user.password_hash):
        store.clear_failures("user", username)
        return user
    for kind, who in (("user", username), ("addr", client_addr)):
        store.count_failure(kind, who, window)
    raise Unauthorized("wrong username or password")


def create_user(store: UserStore, payload: Any, *, now: float, hash_n: int) -> User:
    """Raises Conflict when the name is taken."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(payload) - {"username", "password", "role"}
    if unknown:
        raise ValidationError(sorted(unknown)[0], "unknown field")
    username = validate_username(payload.get("username"))
    password = validate_password(payload.get("password"))
    role = validate_role(payload.get("role", "user"))
    user = _new_user(username, role, password, now=now, hash_n=hash_n)
    if not store.create(user):
        raise Conflict(f"user {username!r} already exists")
    return user


def update_user(store: UserStore, username: str, payload: Any, *, hash_n: int) -> User:
    """Change a password and/or role. Either change revokes the user's tokens."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = set(payload) - {"password", "role"}
    if unknown:
        raise ValidationError(sorted(unknown)[0], "unknown field")
    user = get_user(store, username)
    if "password" in payload:
        user.password_hash = hash_password(validate_password(payload["password"]), n=hash_n)
    if "role" in payload:
        role = validate_role(payload["role"])
        _keep_an_admin(store, user, role)
        user.role = role
    user.token_version += 1
    store.save(user)
    return user


def delete_user(store: UserStore, username: str) -> None:
    """Raises UserNotFound, or Conflict for the last admin (nobody could
    manage users after it)."""
    user = get_user(store, username)
    _keep_an_admin(store, user, Role.USER)
    if not store.delete(username):
        raise UserNotFound(username)


def get_user(store: UserStore, username: str) -> User:
    validate_username(username)
    user = store.load(username)
    if user is None:
        raise UserNotFound(username)
    return user


def _keep_an_admin(store: UserStore, user: User, new_role: Role) -> None:
    if user.role is Role.ADMIN and new_role is not Role.ADMIN:
        admins = [u for u in store.load_all() if u.role is Role.ADMIN]
        if len(admins) <= 1:
            raise Conflict("the last admin cannot be removed or demoted")


def list_users(store: UserStore) -> list[User]:
    return store.load_all()

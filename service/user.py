"""Users: bootstrap, login with rate limiting, and management."""

from __future__ import annotations

import functools
import ipaddress
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dao.user import UserStore
from model.errors import Conflict, TooManyRequests, Unauthorized, UserNotFound
from model.user import (
    HASH_N,
    LOGIN,
    NEW_USER,
    USER_CHANGES,
    Role,
    User,
    hash_password,
    needs_rehash,
    password_problem,
    validate_username,
    verify_password,
)

T = TypeVar("T")


# Hashes that may run at once per process, at 128 MiB each (model/user.py HASH_N).
HASH_THREADS = 2
# Per username alone and per client address alone, attempts are free up to this
# many times the per-(username, address) limit: a guesser at one address cannot
# lock the real user out elsewhere, and guessing from many addresses slows down.
ALONE_FACTOR = 10

_pool: list[Any] = []  # made on first use, inside the worker process that hashes


def _off_the_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """scrypt costs about 0.4 s of CPU. In a gevent worker that would stall
    every stream of the process, so it runs in a native thread (hashlib releases
    the GIL) and only this request waits; HASH_THREADS at most bounds memory."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return fn(*args, **kwargs)
    if not monkey.is_module_patched("threading"):
        return fn(*args, **kwargs)
    if not _pool:
        from gevent.threadpool import ThreadPool

        _pool.append(ThreadPool(HASH_THREADS))
    return _pool[0].apply(fn, args, kwargs)


def _hash(password: str, n: int) -> str:
    return _off_the_loop(hash_password, password, n=n)


def _verify(password: str, stored: str) -> bool:
    return _off_the_loop(verify_password, password, stored)


@functools.lru_cache(maxsize=4)
def _dummy_hash(n: int) -> str:
    """Checked against when the username is unknown, so a miss costs as much
    time as a wrong password and does not reveal which names exist: it must
    use the same work factor as real hashes."""
    return _hash("not-a-real-password", n)


def _new_user(username: str, role: Role, password: str, *, now: float, hash_n: int) -> User:
    """token_version starts at random, so a user removed and created again under
    the same name does not get the removed user's tokens back (they carry its
    version)."""
    digest = _hash(password, hash_n)
    return User(username, role, digest, token_version=secrets.randbelow(2**31), create_time=now)


def generate_password() -> str:
    while True:
        password = secrets.token_urlsafe(18)
        if password_problem(password) is None:
            return password


def bootstrap_admin(store: UserStore, password: str | None, *, now: float, hash_n: int) -> str | None:
    """With no users at all, create `admin`. Returns the generated password when
    none was given (for the operator, once), else None."""
    if store.count() > 0:
        return None
    generated = None
    if not password:
        generated = password = generate_password()
    user = _new_user("admin", Role.ADMIN, password, now=now, hash_n=hash_n)
    if not store.create(user):
        return None  # another instance bootstrapped first
    return generated


def counted_address(addr: str) -> str:
    """The address failed logins are counted under: an IPv6 client has a whole
    /64 to pick addresses from, so the /64 counts as one."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def login(
    store: UserStore,
    payload: Any,
    *,
    client_addr: str,
    max_failures: int,
    window: int,
    hash_n: int = HASH_N,
    clock: Callable[[], float] = time.time,
) -> User:
    """The user whose password matches. Raises Unauthorized, or TooManyRequests
    (unchecked) while this username from this address, or the username or the
    address alone, must wait: each attempt is counted before its password is
    checked, so concurrent guesses cannot outrun the limit; past the free
    attempts the waits double from 1 s up to `window`."""
    clean = LOGIN.check(None, payload)
    username, password = clean["username"], clean["password"]
    addr = counted_address(client_addr)

    wait = store.count_failure(
        username, addr, now=clock(), free=max_failures, free_alone=max_failures * ALONE_FACTOR, window=window
    )
    if wait:
        raise TooManyRequests(retry_after=math.ceil(wait))
    user = store.load(username)
    if user is None:
        _verify(password, _dummy_hash(hash_n))
    elif _verify(password, user.password_hash):
        store.forgive_failure(username, addr)
        if needs_rehash(user.password_hash, n=hash_n):
            store.rehash(username, user.password_hash, _hash(password, hash_n))
        return user
    store.failed(username, addr, now=clock(), window=window)
    raise Unauthorized("wrong username or password")


def create_user(store: UserStore, payload: Any, *, now: float, hash_n: int) -> User:
    """Raises Conflict when the name is taken."""
    clean = NEW_USER.check(None, payload)
    username, password = clean["username"], clean["password"]
    role = Role(clean.get("role", Role.USER))
    user = _new_user(username, role, password, now=now, hash_n=hash_n)
    if not store.create(user):
        raise Conflict(f"user {username!r} already exists")
    return user


def update_user(store: UserStore, username: str, payload: Any, *, hash_n: int) -> User:
    """Change a password and/or role; either change (even none) revokes the
    user's tokens. Atomic in Redis: raises UserNotFound (also when the user was
    deleted meanwhile), or Conflict for the last admin's demotion."""
    validate_username(username)
    clean = USER_CHANGES.check(None, payload)
    digest = _hash(clean["password"], hash_n) if "password" in clean else None
    user = store.update(username, role=clean.get("role"), password_hash=digest)
    if user is None:
        raise UserNotFound(username)
    return user


def delete_user(store: UserStore, username: str) -> None:
    """Raises UserNotFound, or Conflict for the last admin (nobody could
    manage users after it); the check and the delete are one atomic step."""
    validate_username(username)
    if not store.delete(username):
        raise UserNotFound(username)


def get_user(store: UserStore, username: str) -> User:
    validate_username(username)
    user = store.load(username)
    if user is None:
        raise UserNotFound(username)
    return user


def list_users(store: UserStore) -> list[User]:
    return store.load_all()

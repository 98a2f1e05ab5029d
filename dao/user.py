"""UserStore: user hashes, the username set, login-failure counters, revoked
tokens, the secret."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from dao.lua import pairs_to_dict, register
from model.errors import Conflict
from model.user import User

LAST_ADMIN = "last admin"  # update_user.lua's answer
LAST_ADMIN_TEXT = "the last admin cannot be removed or demoted"


class UserStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._count_failure = register(client, "count_failure")
        self._forgive_failure = register(client, "forgive_failure")
        self._create = register(client, "create_user")
        self._update = register(client, "update_user")
        self._delete = register(client, "delete_user")
        self._rehash = register(client, "rehash_user")

    @storage_errors
    def save(self, user: User) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.user(user.username), mapping=user.to_redis())
        pipe.sadd(self.keys.users(), user.username)
        pipe.execute()

    @storage_errors
    def create(self, user: User) -> bool:
        """Save only if no user has this name; False when one has."""
        args = [user.username]
        for item in user.to_redis().items():
            args.extend(item)
        keys = [self.keys.user(user.username), self.keys.users()]
        return bool(self._create(keys=keys, args=args))

    @storage_errors
    def load(self, username: str) -> User | None:
        mapping = self.client.hgetall(self.keys.user(username))
        return User.from_redis(mapping) if mapping else None

    @storage_errors
    def load_all(self) -> list[User]:
        names = sorted(self.client.smembers(self.keys.users()))
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.user(name))
        return [User.from_redis(m) for m in pipe.execute() if m]

    @storage_errors
    def count(self) -> int:
        return self.client.scard(self.keys.users())

    @storage_errors
    def update(self, username: str, *, role: str | None = None, password_hash: str | None = None) -> User | None:
        """Change an existing user and bump its token version, atomically. None
        when there is no such user; raises Conflict when it would demote the
        last admin."""
        keys = [self.keys.user(username), self.keys.users()]
        reply = self._update(keys=keys, args=[self.keys.user(""), role or "", password_hash or ""])
        if reply == LAST_ADMIN:
            raise Conflict(LAST_ADMIN_TEXT)
        mapping = pairs_to_dict(reply)
        return User.from_redis(mapping) if mapping else None

    @storage_errors
    def delete(self, username: str) -> bool:
        """Remove a user; False when there is none. Raises Conflict for the
        last admin, checked in the same atomic step."""
        keys = [self.keys.user(username), self.keys.users()]
        deleted = int(self._delete(keys=keys, args=[self.keys.user(""), username]))
        if deleted < 0:
            raise Conflict(LAST_ADMIN_TEXT)
        return bool(deleted)

    @storage_errors
    def rehash(self, username: str, verified: str, new: str) -> bool:
        """Swap in a costlier hash only if `verified` is still the stored one."""
        return bool(self._rehash(keys=[self.keys.user(username)], args=[verified, new]))

    def _login_keys(self, username: str, addr: str) -> list[str]:
        return [
            self.keys.login_failures_pair(username, addr),
            self.keys.login_failures("user", username),
            self.keys.login_failures("addr", addr),
        ]

    @storage_errors
    def count_failure(
        self, username: str, addr: str, *, now: float, free: int, free_alone: int, window: int
    ) -> float:
        """Count a login attempt as failed before its password is checked (see
        dao/scripts/count_failure.lua). Returns 0 when counted, else the seconds
        to wait, and nothing was counted."""
        counted, wait_ms = self._count_failure(
            keys=self._login_keys(username, addr), args=[int(now * 1000), free, free_alone, window]
        )
        return 0.0 if int(counted) else int(wait_ms) / 1000

    @storage_errors
    def failed(self, username: str, addr: str, *, now: float, window: int) -> None:
        """The counted attempt failed: waits run from now, when the check ended."""
        pipe = self.client.pipeline(transaction=True)
        for key in self._login_keys(username, addr):
            pipe.hset(key, "last", int(now * 1000))
            pipe.expire(key, window)
        pipe.execute()

    @storage_errors
    def forgive_failure(self, username: str, addr: str) -> None:
        """The counted attempt succeeded: take it back."""
        self._forgive_failure(keys=self._login_keys(username, addr))

    @storage_errors
    def revoke_token(self, jti: str, ttl: int) -> None:
        self.client.set(self.keys.revoked_token(jti), "1", ex=ttl)

    @storage_errors
    def load_for_token(self, username: str, jti: str | None) -> tuple[User | None, bool]:
        """The user and whether the token `jti` is revoked, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.user(username))
        if jti:
            pipe.exists(self.keys.revoked_token(jti))
        replies = pipe.execute()
        mapping = replies[0]
        return (User.from_redis(mapping) if mapping else None), bool(jti and replies[1])

    @storage_errors
    def load_many_for_tokens(self, pairs: list[tuple[str, str | None]]) -> list[tuple[User | None, bool]]:
        """load_for_token for many (username, jti) pairs, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for username, jti in pairs:
            pipe.hgetall(self.keys.user(username))
            if jti:
                pipe.exists(self.keys.revoked_token(jti))
        replies = iter(pipe.execute())
        answers = []
        for _, jti in pairs:
            mapping = next(replies)
            answers.append(((User.from_redis(mapping) if mapping else None), bool(jti and next(replies))))
        return answers

    @storage_errors
    def shared_secret(self, candidate: str) -> str:
        """The secret every instance signs with: the first one stored wins."""
        key = self.keys.jwt_secret()
        self.client.set(key, candidate, nx=True)
        return self.client.get(key)

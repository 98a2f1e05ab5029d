"""UserStore: user hashes, the username set, login-failure counters, the secret."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from dao.lua import register
from model.user import User


class UserStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._count_failure = register(client, "count_failure")
        self._create = register(client, "create_user")

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
    def delete(self, username: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.user(username))
        pipe.srem(self.keys.users(), username)
        deleted, _ = pipe.execute()
        return bool(deleted)

    @storage_errors
    def count_failure(self, kind: str, who: str, window: int) -> tuple[int, int]:
        """Add one failed login; return (failures in window, seconds left)."""
        count, ttl = self._count_failure(keys=[self.keys.login_failures(kind, who)], args=[window])
        return int(count), int(ttl)

    @storage_errors
    def failures(self, kind: str, who: str) -> tuple[int, int]:
        key = self.keys.login_failures(kind, who)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.ttl(key)
        count, ttl = pipe.execute()
        return int(count or 0), max(int(ttl), 1)

    @storage_errors
    def clear_failures(self, kind: str, who: str) -> None:
        self.client.delete(self.keys.login_failures(kind, who))

    @storage_errors
    def shared_secret(self, candidate: str) -> str:
        """The secret every instance signs with: the first one stored wins."""
        key = self.keys.jwt_secret()
        self.client.set(key, candidate, nx=True)
        return self.client.get(key)

"""AliasStore: model aliases in one hash, the hidden ones in a set, and a
revision counter so instances re-read them only when they changed."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys
from dao.lua import register
from model.alias import MAX_ALIASES, Alias
from model.errors import Conflict


class AliasStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._set = register(client, "set_alias")

    def _keys(self) -> list[str]:
        return [self.keys.aliases(), self.keys.aliases_hidden(), self.keys.aliases_rev()]

    @storage_errors
    def save(self, alias: Alias, limit: int = MAX_ALIASES) -> Alias:
        """Create or replace atomically. Raises Conflict for a chain of aliases
        or past `limit`."""
        reply = self._set(keys=self._keys(), args=[alias.alias, alias.model, "1" if alias.listed else "0", limit])
        if reply == "target_is_alias":
            raise Conflict(f"model: {alias.model!r} is itself an alias; point at the served model")
        if reply == "alias_is_target":
            raise Conflict(f"alias: {alias.alias!r} is the model of another alias")
        if reply == "full":
            raise Conflict(f"alias limit reached: {limit} aliases exist")
        return alias

    @storage_errors
    def delete(self, name: str) -> bool:
        """Remove it (hash, hidden flag and revision in one MULTI); False when there was none."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.aliases(), name)
        pipe.srem(self.keys.aliases_hidden(), name)
        pipe.incr(self.keys.aliases_rev())
        return bool(pipe.execute()[0])

    @storage_errors
    def revision(self) -> str:
        return self.client.get(self.keys.aliases_rev()) or "0"

    @storage_errors
    def load_all(self) -> tuple[str, dict[str, Alias]]:
        """(revision, alias -> Alias), read in one MULTI so they agree."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.aliases_rev())
        pipe.hgetall(self.keys.aliases())
        pipe.smembers(self.keys.aliases_hidden())
        rev, models, hidden = pipe.execute()
        return rev or "0", {name: Alias(name, model, name not in hidden) for name, model in models.items()}

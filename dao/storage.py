"""The store as a whole: is it answering."""

from __future__ import annotations

import redis

from dao.errors import storage_errors


class Storage:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @storage_errors
    def ping(self) -> None:
        """Raises StorageUnavailable unless the store answers."""
        self.client.ping()

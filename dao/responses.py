"""Which node holds each stored response of the Responses API, shared by
every balancer instance: vLLM keeps stored responses in the memory of the
server process that made them, so every later request naming one must reach
that node."""

from __future__ import annotations

import redis

from dao.errors import storage_errors
from dao.keys import Keys


class ResponseStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    @storage_errors
    def record(self, response_id: str, node_id: str, *, ttl: int) -> None:
        """Remember the node of a response id (validated by the caller) for `ttl` seconds.
        A plain SET: a response id is made once, by one node, so nothing stored can be lost."""
        self.client.set(self.keys.response_node(response_id), node_id, ex=max(1, ttl))

    @storage_errors
    def node_of(self, response_id: str) -> str | None:
        return self.client.get(self.keys.response_node(response_id))

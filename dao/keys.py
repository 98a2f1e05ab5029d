"""Every Redis key nvllm uses, on one screen.

Ids that reach a key are validated first (node ids and usernames match
patterns without ':', '*', '?', '[' or whitespace), so no key can collide with
another or act as a glob.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "nvllm") -> None:
        self.prefix = prefix

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # nodes
    def node(self, node_id: str) -> str:
        """Hash: one node's fields (model/node.py Node.to_redis)."""
        return self._key("node", node_id)

    def nodes_by_expiry(self) -> str:
        """Sorted set: node_id scored by update_time + timeout (epoch seconds)."""
        return self._key("nodes")

    def node_owners(self) -> str:
        """Hash: node_id -> the account that created it (counts nodes per
        account for NVLLM_MAX_NODES_PER_ACCOUNT; the node hash's `owner` field
        is what authorizes)."""
        return self._key("node_owners")

    def inflight_lease(self, instance_id: str) -> str:
        """Hash with TTL: node_id -> requests this balancer instance has in flight
        to it; expires with the instance's lease (dao/inflight.py)."""
        return self._key("inflight", instance_id)

    def instances(self) -> str:
        """Sorted set: balancer instance id scored by its lease expiry."""
        return self._key("instances")

    def probe_lock(self, node_id: str) -> str:
        """String with TTL: the instance that polls this node this interval."""
        return self._key("probe", node_id)

    # stored responses (the Responses API)
    def response_node(self, response_id: str) -> str:
        """String with TTL: the node that created this response id and holds
        it in its memory (dao/responses.py)."""
        return self._key("response", response_id)
    # model aliases
    def aliases(self) -> str:
        """Hash: client-facing alias -> the served model it stands for."""
        return self._key("aliases")

    def aliases_hidden(self) -> str:
        """Set: aliases left out of GET /v1/models (they still route)."""
        return self._key("aliases_hidden")

    def aliases_rev(self) -> str:
        """String: counts alias writes, so instances re-read only after one."""
        return self._key("aliases_rev")

    # request statistics (dao/stats.py)
    def stats_bucket(self, start: int) -> str:
        """Hash with TTL: counters of the time bucket starting at `start` (epoch
        seconds), fields `<counter>:n:<node_id>` and `<counter>:m:<model>`."""
        return self._key("stats", str(start))

    def ejected(self, instance_id: str) -> str:
        """Set with TTL: the nodes this balancer instance has ejected after
        failures; expires with the instance's lease."""
        return self._key("ejected", instance_id)

    # users
    def user(self, username: str) -> str:
        """Hash: username, role, password_hash, token_version, create_time."""
        return self._key("user", username)

    def users(self) -> str:
        """Set: every username."""
        return self._key("users")

    def login_failures(self, kind: str, who: str) -> str:
        """Hash with TTL {n, last}: login attempts not known to have succeeded, per
        `user` name or per client `addr`, and when the last one failed (ms)."""
        return self._key("login_failures", kind, who)

    def login_failures_pair(self, username: str, addr: str) -> str:
        """Hash with TTL {n, last}: the same per username and client address."""
        return self._key("login_failures", "pair", username, addr)

    def revoked_token(self, jti: str) -> str:
        """String with TTL: a token revoked by its `jti` (the TTL outlives the token)."""
        return self._key("revoked_token", jti)

    def jwt_secret(self) -> str:
        """String: the generated token secret shared by every instance."""
        return self._key("secret", "jwt")

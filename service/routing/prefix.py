"""What nvllm knows of the nodes' prefix caches: which node last served each
prompt block, and which conversations live on which node."""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict

RESIDENT_SECONDS = 10.0  # a conversation quiet for longer no longer holds a place at its node


class PrefixIndex:
    """Block hash -> node that last served it, bounded LRU."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._owner: OrderedDict[bytes, str] = OrderedDict()
        self._capacity = capacity

    def longest_match(self, blocks: list[bytes], candidates: set[str]) -> tuple[str | None, int]:
        """(node, blocks matched) for the deepest block owned by a candidate."""
        for depth in range(len(blocks), 0, -1):
            owner = self._owner.get(blocks[depth - 1])
            if owner in candidates:
                return owner, depth
        return None, 0

    def owner(self, block: bytes) -> str | None:
        """The node that last served this block, if any."""
        return self._owner.get(block)

    def record(self, blocks: list[bytes], node_id: str) -> None:
        for block in blocks:
            self._owner[block] = node_id
            self._owner.move_to_end(block)
        while len(self._owner) > self._capacity:
            self._owner.popitem(last=False)


class Sessions:
    """Client-named session -> the node that last took one of its requests,
    bounded LRU."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._node: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity

    def node(self, session: str | None) -> str | None:
        return self._node.get(session) if session else None

    def record(self, session: str, node_id: str) -> None:
        self._node[session] = node_id
        self._node.move_to_end(session)
        while len(self._node) > self._capacity:
            self._node.popitem(last=False)


class Conversations:
    """Conversations resident on each node, told apart by their prompts alone.

    A request's deepest prefix block is its tip. Each turn of a conversation
    resends the history, so a later prompt whose blocks hold a known tip
    continues that conversation. A conversation that has continued once will
    likely come back, and so will a prompt that starts like others (a shared
    system prompt): either keeps a place at its node while it waits for its
    user (or tool), for up to `linger` seconds. Prompts that share nothing
    never count."""

    def __init__(self, linger: float = RESIDENT_SECONDS, capacity: int = 100_000) -> None:
        self._tips: OrderedDict[bytes, tuple[str, float, bool]] = OrderedDict()  # tip -> node, when, continued
        self._resident: Counter[str] = Counter()
        self._linger = linger
        self._capacity = capacity

    def continued(self, blocks: list[bytes]) -> bytes | None:
        """The deepest known tip among the prompt's blocks, if any."""
        for block in reversed(blocks):
            if block in self._tips:
                return block
        return None

    def resident(self, node_id: str, now: float) -> int:
        return self.residents(now)[node_id]

    def residents(self, now: float) -> Counter[str]:
        """Conversations resident now, by node (read-only)."""
        self._expire(now)
        return self._resident

    def record(self, node_id: str, blocks: list[bytes], continues: bytes | None, now: float,
               shared: bool = False) -> None:
        """A prompt routed to the node; `shared`: it starts like earlier ones."""
        self._expire(now)
        if continues is not None:
            self._drop(continues)
        if blocks:
            likely_back = continues is not None or shared
            self._drop(blocks[-1])
            self._tips[blocks[-1]] = (node_id, now, likely_back)
            self._resident[node_id] += likely_back
        while len(self._tips) > self._capacity:
            self._drop(next(iter(self._tips)))

    def _drop(self, tip: bytes) -> None:
        entry = self._tips.pop(tip, None)
        if entry and entry[2]:
            self._resident[entry[0]] -= 1

    def _expire(self, now: float) -> None:
        while self._tips:
            tip, (_, when, _) = next(iter(self._tips.items()))
            if now - when <= self._linger:
                break
            self._drop(tip)


def rendezvous(block: bytes, node_id: str) -> bytes:
    """Highest-random-weight hashing: every instance ranks the nodes alike."""
    return hashlib.blake2b(block + node_id.encode(), digest_size=8).digest()

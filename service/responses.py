"""Responses API affinity. vLLM keeps a stored response in the memory of the
server process that made it, so a follow-up (previous_response_id), a
retrieve, a cancel or an input_items listing must reach that node: nvllm
remembers, in Redis for every instance, which node created each response id,
read from the answer as it passes (a whole JSON body, or a stream's
`response.created` event), and pins later requests naming it there."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from dao.responses import ResponseStore
from model.errors import ResponseNotFound, StorageUnavailable, Unavailable
from model.node import NodeStatus
from service.fleet import Fleet
from service.shape import RESPONSE_ID

log = logging.getLogger("nvllm.responses")

FRESH_ENOUGH = 0.1  # seconds: a node registered a moment ago may be missing from this view
MAX_WHOLE_BODY = 16 * 1024 * 1024  # a whole answer read for its id; larger ones pass unread
MAX_STREAM_SCAN = 256 * 1024  # a stream's bytes searched for `response.created`


class ResponseAffinity:
    def __init__(self, store: ResponseStore, ttl: int) -> None:
        self.store = store
        self.ttl = ttl

    def node_for(self, response_id: str, fleet: Fleet, now: float) -> str:
        """The node holding a stored response. Raises ResponseNotFound (nvllm
        knows no node for it, or that node is gone), Unavailable (the node is
        there but takes no requests right now) or StorageUnavailable."""
        node_id = self.store.node_of(response_id)
        if node_id is None:
            raise ResponseNotFound(
                response_id, "nvllm knows of no node holding it (it was not created through nvllm, "
                "or longer ago than NVLLM_RESPONSE_TTL)")
        if fleet.get(node_id) is None:
            fleet.refresh_now(FRESH_ENOUGH)
        state = fleet.get(node_id)
        if state is None or state.node.effective_status(now) is NodeStatus.OFFLINE:
            raise ResponseNotFound(
                response_id, f"node {node_id!r}, which created it, is gone (offline or removed), and vLLM "
                "keeps stored responses only in the memory of the server that made them")
        if all(s.node_id != node_id for s in fleet.routable(now)):
            raise Unavailable(
                f"response {response_id!r} is held by node {node_id!r}, which takes no requests right now "
                "(draining, or recovering from failures)")
        return node_id

    def remember(self, response_id: str, node_id: str) -> None:
        """Record a response's node; an id of a shape vLLM never makes is ignored.
        A storage failure costs only the later requests naming it, never this answer."""
        if not RESPONSE_ID.fullmatch(response_id):
            log.warning("node %s answered a response id nvllm cannot record", node_id)
            return
        try:
            self.store.record(response_id, node_id, ttl=self.ttl)
        except StorageUnavailable:
            log.warning("storage unavailable: response id not recorded; requests naming it will fail")

    def tap(self, chunks: Iterator[bytes], node_id: str, stream: bool) -> Iterator[bytes]:
        """The answer's bytes unchanged, its response id recorded before the
        client can see it (so a follow-up sent the moment it arrives, to any
        instance, finds its node)."""
        return self._tap_stream(chunks, node_id) if stream else self._tap_whole(chunks, node_id)

    def _tap_whole(self, chunks: Iterator[bytes], node_id: str) -> Iterator[bytes]:
        # The client waits for the whole body anyway: holding it back costs nothing.
        held: list[bytes] = []
        size = 0
        for chunk in chunks:
            held.append(chunk)
            size += len(chunk)
            if size > MAX_WHOLE_BODY:
                log.warning("answer of node %s too large to read its response id", node_id)
                yield from held
                yield from chunks
                return
        response_id = _top_level_id(b"".join(held))
        if response_id:
            self.remember(response_id, node_id)
        yield from held

    def _tap_stream(self, chunks: Iterator[bytes], node_id: str) -> Iterator[bytes]:
        scanned = b""
        for chunk in chunks:
            scanned += chunk
            events = scanned.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events[:-1]:
                response_id = _created_id(event)
                if response_id:
                    self.remember(response_id, node_id)
                    yield chunk
                    yield from chunks
                    return
            scanned = events[-1]
            if len(scanned) > MAX_STREAM_SCAN:
                log.warning("stream of node %s named no response id in its first events", node_id)
                yield chunk
                yield from chunks
                return
            yield chunk


def _top_level_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def _created_id(event: bytes) -> str | None:
    """The response id of a `response.created` server-sent event."""
    data = b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if b"response.created" not in data:
        return None
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "response.created":
        return None
    response = payload.get("response")
    value = response.get("id") if isinstance(response, dict) else None
    return value if isinstance(value, str) else None

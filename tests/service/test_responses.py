"""Responses API affinity: the node of each response id is read from the
answer as it passes (whole or streamed) and recorded before the client sees
it; a request naming a response goes to its node, or fails naming it."""

from __future__ import annotations

import json

import pytest

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from dao.responses import ResponseStore
from model.errors import ResponseNotFound, StorageUnavailable, Unavailable
from model.node import Node, NodeStatus
from service.fleet import Fleet
from service.responses import MAX_STREAM_SCAN, ResponseAffinity
from tests.helpers import START


@pytest.fixture
def store(redis) -> ResponseStore:
    return ResponseStore(redis, Keys())


@pytest.fixture
def affinity(store) -> ResponseAffinity:
    return ResponseAffinity(store, ttl=600)


@pytest.fixture
def fleet(redis, clock):
    nodes = NodeStore(redis, Keys())
    for node_id, status in (("up", NodeStatus.ONLINE), ("draining", NodeStatus.DRAINING),
                            ("down", NodeStatus.OFFLINE)):
        nodes.save(Node(node_id, node_address="127.0.0.1", node_status=status, create_time=START,
                        update_time=START, timeout=60))
    view = Fleet(nodes, InflightStore(redis, Keys()), clock=clock)
    view.refresh()
    yield view
    view.close()


def test_the_store_keeps_a_node_for_its_ttl(store, redis):
    store.record("resp_1", "n1", ttl=30)
    assert store.node_of("resp_1") == "n1" and store.node_of("resp_2") is None
    assert redis.ttl("nvllm:response:resp_1") == 30


def test_a_whole_answer_is_held_until_its_id_is_recorded(affinity, store):
    body = json.dumps({"id": "resp_abc", "object": "response", "output": [{"id": "msg_1"}]}).encode()
    chunks = iter([body[:10], body[10:]])
    tapped = affinity.tap(chunks, "n1", stream=False)
    first = next(tapped)
    assert store.node_of("resp_abc") == "n1"  # before the client got a byte
    assert first + b"".join(tapped) == body


def test_a_stream_is_recorded_at_its_created_event_and_passed_on_unchanged(affinity, store):
    created = {"type": "response.created", "response": {"id": "resp_s1", "status": "in_progress"}}
    stream = (b"event: response.created\r\ndata: " + json.dumps(created).encode() + b"\r\n\r\n"
              + b"event: response.output_text.delta\ndata: {}\n\n")
    end = stream.index(b"\r\n\r\n") + 4  # the created event is whole with the second chunk
    chunks = [stream[:15], stream[15:end], stream[end:]]
    out = []
    for chunk in affinity.tap(iter(chunks), "n2", stream=True):
        out.append(chunk)
        assert (store.node_of("resp_s1") == "n2") is (len(out) >= 2)
    assert out == chunks


def test_a_stream_without_a_created_event_passes_unread(affinity, store):
    chunks = [b"data: " + b"x" * 1000 + b"\n\n"] * (MAX_STREAM_SCAN // 1000 + 5)
    assert list(affinity.tap(iter(chunks), "n1", stream=True)) == chunks


@pytest.mark.parametrize("body", [b"not json", b'{"id": 5}', b'{"id": "a:b*"}', b"[1]"])
def test_an_answer_without_a_usable_id_records_nothing(affinity, redis, body):
    assert b"".join(affinity.tap(iter([body]), "n1", stream=False)) == body
    assert redis.keys("*response*") == []


def test_a_storage_failure_costs_the_answer_nothing(affinity, server):
    server.connected = False
    body = b'{"id": "resp_x"}'
    assert b"".join(affinity.tap(iter([body]), "n1", stream=False)) == body


def test_a_request_naming_a_response_goes_to_its_node(affinity, store, fleet, clock):
    store.record("resp_1", "up", ttl=60)
    assert affinity.node_for("resp_1", fleet, clock()) == "up"


def test_an_unknown_response_is_not_found(affinity, fleet, clock):
    with pytest.raises(ResponseNotFound, match="'resp_9'.*knows of no node"):
        affinity.node_for("resp_9", fleet, clock())


@pytest.mark.parametrize("node", ["down", "removed"])
def test_a_response_whose_node_is_gone_is_not_found(affinity, store, fleet, clock, node):
    store.record("resp_1", node, ttl=60)
    with pytest.raises(ResponseNotFound, match=f"'resp_1'.*node '{node}'.*gone"):
        affinity.node_for("resp_1", fleet, clock())


def test_a_response_whose_node_has_expired_is_not_found(affinity, store, fleet, clock):
    store.record("resp_1", "up", ttl=3600)
    clock.advance(120)
    with pytest.raises(ResponseNotFound):
        affinity.node_for("resp_1", fleet, clock())


def test_a_response_on_a_draining_node_is_unavailable_for_now(affinity, store, fleet, clock):
    store.record("resp_1", "draining", ttl=60)
    with pytest.raises(Unavailable, match="'resp_1'.*'draining'"):
        affinity.node_for("resp_1", fleet, clock())


def test_storage_down_is_a_503(affinity, fleet, clock, server):
    server.connected = False
    with pytest.raises(StorageUnavailable):
        affinity.node_for("resp_1", fleet, clock())

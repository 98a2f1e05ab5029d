"""Concurrent writers against a real service and store lose nothing, and a
delete racing heartbeats stays a delete."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

WRITERS = 50
ROUNDS = 5
INFO_FIELDS = ("running", "waiting", "kv_cache")


def node_body(node_id: str, **extra: object) -> dict:
    return {"node_id": node_id, "node_type": "worker", "node_address": "10.0.0.1",
            "node_port": 8000, "node_status": "online", "timeout": 300, **extra}


def test_fifty_concurrent_writers_lose_nothing(start_service, redis_url):
    service = start_service(redis_url, NVLLM_WORKERS="2")
    token = service.login()
    first = service.request("POST", "/api/node/node/register", token=token, body=node_body("shared"))
    created = first.data["create_time"]
    barrier = threading.Barrier(WRITERS)
    errors: list[str] = []

    def call(method: str, path: str, body: dict) -> dict:
        answer = service.request(method, path, token=token, body=body)
        if answer.status != 200:
            errors.append(f"{method} {path}: {answer.status} {answer.text[:200]}")
            return {}
        return answer.json["data"]

    def writer(i: int) -> None:
        own = f"writer-{i:02d}"
        call("POST", "/api/node/node/register", node_body(own, remark=f"writer {i}"))
        # Everyone re-registers the shared node at once: an idempotent upsert.
        barrier.wait()
        call("POST", "/api/node/node/register", node_body("shared"))
        for round_ in range(1, ROUNDS + 1):
            call("PUT", f"/api/node/node/update/{own}", {"node_info": {"running": round_}})
            # Each writer merges one field of the shared node; a lost update
            # would leave a field at a value from an earlier round.
            barrier.wait()
            field = INFO_FIELDS[i % len(INFO_FIELDS)]
            call("PUT", "/api/node/node/update/shared", {"node_info": {field: round_ * 1000 + i}})
        call("PUT", f"/api/node/node/update/{own}", {"node_info": {"waiting": i}})

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    assert not errors, errors[:5]

    nodes = service.request("GET", "/api/node/node/all", token=token).data
    ids = [n["node_id"] for n in nodes]
    assert ids == sorted(ids)
    assert set(ids) == {"shared"} | {f"writer-{i:02d}" for i in range(WRITERS)}
    for node in nodes:
        if node["node_id"] == "shared":
            continue
        i = int(node["node_id"].split("-")[1])
        assert node["node_info"]["running"] == ROUNDS, node
        assert node["node_info"]["waiting"] == i, node
        assert node["remark"] == f"writer {i}"

    shared = service.request("GET", "/api/node/node/get_node/shared", token=token).data
    assert shared["create_time"] == created
    # The barriers order the rounds: every write of round r lands before any
    # of round r + 1, so each field must hold a value from the last round.
    for position, field in enumerate(INFO_FIELDS):
        last_round = {ROUNDS * 1000 + i for i in range(WRITERS) if i % len(INFO_FIELDS) == position}
        assert shared["node_info"][field] in last_round, (field, shared["node_info"])


def race_delete_against_heartbeats(service, token: str, node_id: str) -> list[int]:
    """Register, then one delete and 20 heartbeat loops released at once;
    the heartbeats' statuses."""
    service.api("POST", "/api/node/node/register", token=token, body=node_body(node_id))
    barrier = threading.Barrier(21)
    statuses: list[int] = []

    def heartbeat(n: int) -> None:
        barrier.wait()
        for _ in range(5):
            answer = service.request("PUT", f"/api/node/node/update/{node_id}", token=token,
                                     body={"node_info": {"running": n}})
            statuses.append(answer.status)

    def delete() -> int:
        barrier.wait()
        return service.request("DELETE", f"/api/node/node/delete/{node_id}", token=token).status

    with ThreadPoolExecutor(21) as pool:
        beats = [pool.submit(heartbeat, n) for n in range(20)]
        deleted = pool.submit(delete)
        for beat in beats:
            beat.result()
        assert deleted.result() == 200
    return statuses


def test_delete_racing_heartbeats_stays_deleted(start_service, redis_url):
    service = start_service(redis_url)
    token = service.login()
    for attempt in range(3):
        node_id = f"racer-{attempt}"
        statuses = race_delete_against_heartbeats(service, token, node_id)
        # Heartbeats before the delete succeeded, after it got 404; none
        # brought the node back.
        assert set(statuses) <= {200, 404}, statuses
        after = service.request("PUT", f"/api/node/node/update/{node_id}", token=token,
                                body={"node_info": {"running": 1}})
        assert after.status == 404, after.text
        assert service.request("GET", f"/api/node/node/get_node/{node_id}", token=token).status == 404
        listed = service.api("GET", "/api/node/node/all", token=token)
        assert node_id not in [n["node_id"] for n in listed]

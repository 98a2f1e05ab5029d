"""GET /api/node/stats: the dashboard's one read, in the seed's envelope, for
the user role and above, without addresses for users."""

from __future__ import annotations

import jsonschema_rs

from api.openapi import FLEET_STATS, envelope
from dao.stats import BUCKET_SECONDS
from tests.helpers import SEED_REGISTER, error_text, ok_data

URL = "/api/node/stats"


def test_needs_a_token(client):
    assert "token" in error_text(client.get(URL), 401)


def test_reports_reach_the_route_through_the_proxy_hook(app, client, auth_headers, clock):
    client.post("/api/node/node/register", json=SEED_REGISTER, headers=auth_headers("worker"))
    # What the proxy calls when an attempt ends (main.py wires it to the recorder).
    on_done = app.extensions["nvllm"].proxy._on_done
    for i in range(4):
        on_done({"node": "node-001", "status": 200 if i else 502, "outcome": "ok", "seconds": 0.2,
                 "model": "meta-llama/Llama-3.1-8B-Instruct", "ttft": 0.12, "output_tokens": 25})
    app.extensions["nvllm"].stats.flush()
    clock.advance(BUCKET_SECONDS)

    answer = client.get(URL, headers=auth_headers("user"))
    jsonschema_rs.validate(envelope(FLEET_STATS), answer.get_json())  # as /openapi.json describes it
    data = ok_data(answer)
    assert list(data) == ["window", "totals", "nodes", "models", "aliases", "series"]
    (row,) = data["nodes"]
    assert row["node_id"] == "node-001" and row["alive"] and row["routable"]
    assert "node_address" not in row and "node_port" not in row  # the user role sees no addresses
    assert row["stats"]["requests_1m"] == 4 and row["stats"]["errors_1m"] == 1
    assert row["stats"]["output_tokens_1m"] == 100
    (model,) = data["models"]
    assert model["model"] == "meta-llama/Llama-3.1-8B-Instruct" and model["stats"]["requests_1m"] == 4
    assert data["totals"]["stats"]["requests_1m"] == 4

    admin = client.get(URL, headers=auth_headers("admin"))
    jsonschema_rs.validate(envelope(FLEET_STATS), admin.get_json())
    admin_row = ok_data(admin)["nodes"][0]
    assert admin_row["node_address"] == "192.168.1.100" and admin_row["node_port"] == 8000


def test_an_unreachable_store_is_a_clean_503(client, auth_headers, server):
    headers = auth_headers("user")
    server.connected = False
    text = error_text(client.get(URL, headers=headers), 503)
    assert "storage" in text or "unavailable" in text


def test_aliases_are_shown_the_hidden_ones_to_operators_only(client, auth_headers):
    served = "Qwen/Qwen2.5-72B-Instruct"
    client.post("/api/node/node/register", json={**SEED_REGISTER, "models": [served]}, headers=auth_headers("worker"))
    for body in ({"alias": "gpt-4o", "model": served}, {"alias": "secret", "model": served, "listed": False},
                 {"alias": "old", "model": "retired-model"}):
        ok_data(client.post("/api/alias/set", json=body, headers=auth_headers("admin")))
    admin = client.get(URL, headers=auth_headers("admin"))
    jsonschema_rs.validate(envelope(FLEET_STATS), admin.get_json())
    assert ok_data(admin)["aliases"] == [
        {"alias": "gpt-4o", "model": served, "listed": True, "routable": 1},
        {"alias": "old", "model": "retired-model", "listed": True, "routable": 0},
        {"alias": "secret", "model": served, "listed": False, "routable": 1},
    ]
    assert [a["alias"] for a in ok_data(client.get(URL, headers=auth_headers("user")))["aliases"]] == ["gpt-4o", "old"]

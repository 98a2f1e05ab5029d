"""LoRA adapters and model aliases through nvllm, with the OpenAI SDK: a fleet
where only some nodes hold the adapter, nodes where it is active now, the
model list with lineage, and the admin's load and unload."""

from __future__ import annotations

import pytest

from model.adapter import Adapter
from model.node import NodeInfo
from service.routing import RouteRequest
from tests.helpers import wait_for

pytestmark = pytest.mark.integration  # a live nvllm and fake vLLM servers

SQL = "sql-lora"


@pytest.fixture
def admin(nvllm) -> str:
    stores = nvllm.app.extensions["nvllm"]
    return stores.tokens.issue(stores.users.load("admin"), 3600)


@pytest.fixture
def fleet(nvllm, start_fake):
    """Three nodes of one base model; only b and c hold the adapter."""
    fakes = {
        "a": start_fake(["base"]),
        "b": start_fake(["base"], lora_modules={SQL: "/loras/sql"}),
        "c": start_fake(["base"], lora_modules={SQL: "/loras/sql"}),
    }
    for node_id, fake in fakes.items():
        adapters = [Adapter(SQL, "base", "/loras/sql")] if fake.server.loras.modules else []
        nvllm.register(node_id, fake.port, models=["base"], adapters=adapters)
    return fakes


def test_an_adapter_goes_only_to_the_nodes_holding_it(nvllm, fleet):
    client = nvllm.sdk()
    served = set()
    for _ in range(8):
        raw = client.chat.completions.with_raw_response.create(
            model=SQL, messages=[{"role": "user", "content": "select"}], max_tokens=2)
        assert raw.parse().model == SQL
        node = raw.headers["X-NVLLM-Node"]
        served.add(node)
        wait_for(lambda node=node: nvllm.inflight(node) == 0, 2, "the request to be released")
    assert served <= {"b", "c"} and served
    assert fleet["a"].stats()["requests_received"] == 0
    # The base model still goes to any of the three.
    proxy = nvllm.app.extensions["nvllm"].proxy
    assert {s.node_id for s in proxy._candidates(RouteRequest(model="base"), frozenset())} == {"a", "b", "c"}
    assert nvllm.served_by(1, model="base")


def test_a_node_where_the_adapter_is_active_is_preferred(nvllm, fleet):
    stores = nvllm.app.extensions["nvllm"]
    stores.nodes.update("c", {"node_info": NodeInfo(running_lora_adapters=[SQL]).to_dict()}, now=stores.clock())
    nvllm.fleet.refresh()
    nodes = nvllm.served_by(5, model=SQL)
    assert nodes == ["c"] * 5


def test_an_adapter_on_no_routable_node_is_a_503_naming_it(nvllm, fleet):
    from model.node import NodeStatus

    for node_id in ("b", "c"):
        nvllm.register(node_id, fleet[node_id].port, models=["base"], node_status=NodeStatus.DRAINING,
                       adapters=[Adapter(SQL, "base")])
    import openai

    with pytest.raises(openai.InternalServerError) as failed:
        nvllm.sdk().completions.create(model=SQL, prompt="x", max_tokens=1)
    assert failed.value.status_code == 503 and SQL in str(failed.value)
    assert fleet["a"].stats()["requests_received"] == 0


def test_models_lists_base_models_and_adapters_with_lineage(nvllm, fleet, admin):
    assert nvllm.post("/api/alias/set", {"alias": "gpt-4o", "model": "base"}, token=admin).status == 200
    assert nvllm.post("/api/alias/set", {"alias": "secret", "model": "base", "listed": False},
                      token=admin).status == 200
    cards = {m.id: m for m in nvllm.sdk().models.list()}
    assert set(cards) == {"base", SQL, "gpt-4o"}
    assert cards["base"].parent is None and cards["base"].root == "base"
    assert cards[SQL].parent == "base" and cards[SQL].root == "/loras/sql"
    assert cards["gpt-4o"].root == "base"


def test_an_alias_reaches_the_node_as_the_served_model(nvllm, start_fake, admin):
    fake = start_fake(["Qwen/Qwen2.5-72B-Instruct"])
    nvllm.register("q", fake.port, models=["Qwen/Qwen2.5-72B-Instruct"])
    answer = nvllm.post("/api/alias/set", {"alias": "gpt-4o", "model": "Qwen/Qwen2.5-72B-Instruct"}, token=admin)
    assert answer.json()["data"] == {"alias": "gpt-4o", "model": "Qwen/Qwen2.5-72B-Instruct", "listed": True}
    reply = nvllm.sdk().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=2)
    # The fake answers 404 for a model it does not serve, so the body carried the served name.
    assert reply.model == "Qwen/Qwen2.5-72B-Instruct"
    stream = nvllm.sdk().completions.create(model="gpt-4o", prompt="x", max_tokens=3, stream=True)
    assert len(list(stream)) == 3
    assert nvllm.http.request("DELETE", nvllm.url + "/api/alias/delete/gpt-4o",
                              headers={"Authorization": f"Bearer {admin}"}).status == 200
    import openai

    with pytest.raises(openai.InternalServerError) as failed:  # no node lists a model named gpt-4o
        nvllm.sdk().completions.create(model="gpt-4o", prompt="x", max_tokens=1)
    assert failed.value.status_code == 503


def test_admin_loads_and_unloads_an_adapter_on_the_nodes_of_a_base_model(nvllm, start_fake, admin):
    up = start_fake(["base"], runtime_lora_updating=True)
    fixed = start_fake(["base"])  # runtime updating off: vLLM has no such route
    other = start_fake(["other"], runtime_lora_updating=True)
    nvllm.register("up", up.port, models=["base"])
    nvllm.register("fixed", fixed.port, models=["base"])
    nvllm.register("other", other.port, models=["other"])
    body = {"base_model": "base", "lora_name": "new-lora", "lora_path": "/loras/new"}
    answer = nvllm.post("/api/adapter/load", body, token=admin)
    assert answer.status == 200
    data = answer.json()["data"]
    by_node = {r["node_id"]: r for r in data["nodes"]}
    assert set(by_node) == {"up", "fixed"} and data["ok"] is False
    assert by_node["up"]["ok"] and "added successfully" in by_node["up"]["message"]
    assert by_node["fixed"]["ok"] is False and by_node["fixed"]["status"] == 404
    assert "Not Found" in by_node["fixed"]["message"]
    # Recorded at once from the node's own list: requests for it are routed to it.
    assert nvllm.served_by(3, model="new-lora") == ["up"] * 3
    listed = nvllm.get("/api/adapter/all", token=admin).json()["data"]
    assert listed == [{"id": "new-lora", "parent": "base", "root": "/loras/new", "nodes": ["up"], "active_on": []}]
    again = nvllm.post("/api/adapter/load", body, token=admin).json()["data"]["nodes"]
    assert {r["node_id"]: r["status"] for r in again}["up"] == 400  # vLLM: already loaded
    gone = nvllm.post("/api/adapter/unload", {"lora_name": "new-lora"}, token=admin).json()["data"]
    assert [(r["node_id"], r["ok"]) for r in gone["nodes"]] == [("up", True)]
    assert nvllm.get("/api/adapter/all", token=admin).json()["data"] == []


def test_adapter_and_alias_routes_are_for_admins(nvllm):
    for method, path in (("GET", "/api/adapter/all"), ("POST", "/api/adapter/load"),
                         ("POST", "/api/adapter/unload"), ("GET", "/api/alias/all"), ("POST", "/api/alias/set"),
                         ("DELETE", "/api/alias/delete/x")):
        answer = nvllm.http.request(method, nvllm.url + path, json={},
                                    headers={"Authorization": f"Bearer {nvllm.token}"})
        assert answer.status == 403, path

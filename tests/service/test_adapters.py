"""Which nodes may take a request naming a LoRA adapter."""

from __future__ import annotations

from model.adapter import Adapter
from model.node import Node, NodeInfo
from service.adapters import candidates, model_cards
from service.node_state import NodeState

SQL = Adapter("sql", "base", "/loras/sql")


def state(node_id: str, *, adapters=(), models=("base",), running=(), load: int = 0) -> NodeState:
    node = Node(node_id, models=list(models), adapters=list(adapters),
                node_info=NodeInfo(running_lora_adapters=list(running)))
    s = NodeState(node)
    s.local_inflight = load
    return s


def ids(states) -> list[str]:
    return [s.node_id for s in states]


def test_only_holders_get_an_adapter_and_anyone_a_base_model():
    fleet = [state("a"), state("b", adapters=[SQL]), state("any", models=())]
    assert ids(candidates("sql", fleet, fleet)) == ["b"]
    assert ids(candidates("base", fleet, fleet)) == ["a", "b", "any"]
    assert ids(candidates(None, fleet, fleet)) == ["a", "b", "any"]


def test_an_adapter_whose_holders_are_not_routable_has_no_candidates():
    holder = state("b", adapters=[SQL])
    routable = [state("a"), state("any", models=())]
    assert candidates("sql", routable, [*routable, holder]) == []
    # A name no node knows as an adapter is left to the models lists, as before.
    assert ids(candidates("unknown", routable, routable)) == ["any"]


def test_active_nodes_are_preferred_while_one_queues_nothing():
    idle, active = state("b", adapters=[SQL]), state("c", adapters=[SQL], running=["sql"])
    assert ids(candidates("sql", [idle, active], [idle, active])) == ["c"]
    active.reported_waiting = 2  # a queue there: a node that must load the adapter may start sooner
    assert ids(candidates("sql", [idle, active], [idle, active])) == ["b", "c"]


def test_model_cards_show_lineage_and_listed_aliases():
    from model.alias import Alias

    fleet = [state("a", adapters=[SQL]), state("b", adapters=[Adapter("sql", "base", "/elsewhere")])]
    aliases = {"gpt-4o": Alias("gpt-4o", "base"), "mine": Alias("mine", "sql"),
               "hidden": Alias("hidden", "base", listed=False), "dangling": Alias("dangling", "gone")}
    cards = {c["id"]: c for c in model_cards(fleet, aliases, 7)}
    assert set(cards) == {"base", "sql", "gpt-4o", "mine"}
    assert (cards["sql"]["parent"], cards["sql"]["root"]) == ("base", "/loras/sql")  # the first node's, by id
    assert (cards["mine"]["parent"], cards["mine"]["root"]) == ("base", "sql")
    assert cards["base"] == {"id": "base", "object": "model", "created": 7, "owned_by": "nvllm",
                             "root": "base", "parent": None}

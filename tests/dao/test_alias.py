"""AliasStore: one atomic write per change, chains refused inside Redis."""

from __future__ import annotations

import pytest

from dao.alias import AliasStore
from dao.keys import Keys
from model.alias import Alias
from model.errors import Conflict, StorageUnavailable


@pytest.fixture
def store(redis) -> AliasStore:
    return AliasStore(redis, Keys("nvllm"))


def test_save_load_and_delete(store):
    assert store.revision() == "0"
    store.save(Alias("gpt-4o", "Qwen/Qwen2.5-72B-Instruct"))
    store.save(Alias("hidden", "Qwen/Qwen2.5-72B-Instruct", listed=False))
    rev, aliases = store.load_all()
    assert rev == "2" == store.revision()
    assert aliases == {"gpt-4o": Alias("gpt-4o", "Qwen/Qwen2.5-72B-Instruct"),
                       "hidden": Alias("hidden", "Qwen/Qwen2.5-72B-Instruct", listed=False)}
    store.save(Alias("hidden", "other", listed=True))  # replaced, listed again
    assert store.load_all()[1]["hidden"] == Alias("hidden", "other")
    assert store.delete("hidden") and not store.delete("hidden")
    assert set(store.load_all()[1]) == {"gpt-4o"}


def test_chains_are_refused_both_ways(store):
    store.save(Alias("gpt-4o", "served"))
    with pytest.raises(Conflict, match="is itself an alias"):
        store.save(Alias("gpt-4", "gpt-4o"))
    with pytest.raises(Conflict, match="is the model of another alias"):
        store.save(Alias("served", "elsewhere"))
    assert store.load_all()[1] == {"gpt-4o": Alias("gpt-4o", "served")}


def test_the_cap_counts_new_aliases_only(store):
    store.save(Alias("a", "m"), limit=1)
    store.save(Alias("a", "n"), limit=1)  # a replacement is no new alias
    with pytest.raises(Conflict, match="alias limit"):
        store.save(Alias("b", "m"), limit=1)


def test_redis_down_is_storage_unavailable(store, server):
    server.connected = False
    with pytest.raises(StorageUnavailable):
        store.save(Alias("a", "m"))
    with pytest.raises(StorageUnavailable):
        store.load_all()

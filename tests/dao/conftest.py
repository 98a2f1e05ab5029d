"""dao tests run on every Redis the suite knows. Today that is fakeredis; a real
server is one more entry in `params` (and a branch below), nothing else."""

from __future__ import annotations

import fakeredis
import pytest

from dao.keys import Keys
from dao.node import NodeStore
from dao.user import UserStore

PREFIX = "test-pfx"


@pytest.fixture(params=["fake"])
def redis(request, server):
    """Overrides the suite's `redis`, so `app` and `client` use it here too."""
    if request.param == "fake":
        return fakeredis.FakeRedis(server=server, decode_responses=True)
    raise NotImplementedError(request.param)


@pytest.fixture
def keys() -> Keys:
    return Keys(PREFIX)


@pytest.fixture
def nodes(redis, keys) -> NodeStore:
    return NodeStore(redis, keys)


@pytest.fixture
def users(redis, keys) -> UserStore:
    return UserStore(redis, keys)

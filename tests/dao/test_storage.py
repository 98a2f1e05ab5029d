"""Storage.ping: the store answers, or StorageUnavailable, never a redis-py type."""

from __future__ import annotations

import pytest

from dao.storage import Storage
from model.errors import StorageUnavailable


def test_ping_passes_while_the_store_answers(redis):
    Storage(redis).ping()


def test_ping_raises_storage_unavailable_when_it_does_not(redis, server):
    server.connected = False
    with pytest.raises(StorageUnavailable) as raised:
        Storage(redis).ping()
    assert raised.value.code == 503

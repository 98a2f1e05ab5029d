"""Turns redis-py's connection failures into StorageUnavailable, in one place."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis

from model.errors import StorageUnavailable

P = ParamSpec("P")
R = TypeVar("R")

# BusyLoadingError: the server is up but still loading its append-only file.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


def storage_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a dao method so no caller ever sees a redis-py exception type."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except UNREACHABLE as exc:
            raise StorageUnavailable(retry_after=2) from exc

    return wrapper

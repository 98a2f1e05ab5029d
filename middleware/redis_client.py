"""The Redis client and the stores built on it, kept on the app (never global)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import Flask, current_app
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from config import Settings
from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from dao.responses import ResponseStore
from dao.user import UserStore
from service.token import TokenService


@dataclass
class Stores:
    """What views need, built once per app."""

    redis: redis.Redis
    keys: Keys
    nodes: NodeStore
    inflight: InflightStore
    users: UserStore
    tokens: TokenService
    responses: ResponseStore
    clock: Callable[[], float]


def make_client(url: str, timeout: float) -> redis.Redis:
    """Bounded timeouts and few retries: a dead Redis must give a fast 503,
    never a hung worker."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        health_check_interval=15,
    )


def init_redis(
    app: Flask,
    settings: Settings,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> Stores:
    if client is None:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set and no client was given")
        client = make_client(settings.redis_url, settings.redis_timeout)
    keys = Keys(settings.redis_prefix)
    users = UserStore(client, keys)
    stores = Stores(
        redis=client,
        keys=keys,
        nodes=NodeStore(client, keys),
        inflight=InflightStore(client, keys),
        users=users,
        tokens=TokenService(
            users, _secret_source(settings, users), max_stale=settings.auth_max_stale, clock=clock
        ),
        responses=ResponseStore(client, keys),
        clock=clock,
    )
    app.extensions["redis"] = client
    app.extensions["nvllm"] = stores
    return stores


def _secret_source(settings: Settings, users: UserStore) -> Callable[[], str]:
    """NVLLM_JWT_SECRET, or one generated secret shared through Redis, fetched
    on first use so the app can start while Redis is still coming up."""
    if settings.jwt_secret:
        configured = settings.jwt_secret
        return lambda: configured
    lock = threading.Lock()
    known: list[str] = []

    def secret() -> str:
        if not known:
            with lock:
                if not known:
                    known.append(users.shared_secret(secrets.token_urlsafe(48)))
        return known[0]

    return secret


def get_redis() -> redis.Redis:
    return current_app.extensions["redis"]


def get_stores() -> Stores:
    return current_app.extensions["nvllm"]

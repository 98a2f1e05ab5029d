"""The Redis client and the stores built on it, registered on the app (never global)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

import redis
from flask import Flask
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from config import Settings
from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from dao.responses import ResponseStore
from dao.storage import Storage
from dao.user import UserStore
from middleware.services import Services, install
from model.store_url import SentinelUrl, is_sentinel, parse_sentinel_url
from service.token import TokenService


def make_client(url: str, timeout: float) -> redis.Redis:
    """Bounded timeouts: a dead or hung Redis must give a 503 within `timeout`,
    never a hung worker. A refused or reset connection (a pooled one the
    server closed, a restart) is retried once, quickly; a timeout never is,
    since a store that did not answer within `timeout` will not answer the
    same command sooner, and a retry would double the client's wait."""
    options = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 15,
    }
    if is_sentinel(url):
        return _sentinel_client(parse_sentinel_url(url), timeout, options)
    return redis.Redis.from_url(url, **options)


def _sentinel_client(spec: SentinelUrl, timeout: float, options: dict) -> redis.Redis:
    """The current primary of `spec.service`, as the sentinels name it. Each
    new connection asks them again, so after a failover the pool's next
    connection goes to the promoted replica; one still open to a demoted
    primary fails its first write (READONLY) and is replaced."""
    # Each sentinel asked gets a share of the timeout, so finding the primary
    # takes no longer than one Redis call even when the first sentinels are gone.
    # No retry either: redis-py's default would back off for seconds per sentinel.
    ask = max(0.05, timeout / len(spec.sentinels))
    sentinel = Sentinel(
        list(spec.sentinels),
        sentinel_kwargs={"socket_timeout": ask, "socket_connect_timeout": ask, "password": spec.sentinel_password,
                         "retry": Retry(NoBackoff(), 0)},
    )
    return sentinel.master_for(spec.service, redis_class=redis.Redis, password=spec.password, db=spec.db, **options)


def init_redis(
    app: Flask,
    settings: Settings,
    client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
) -> Services:
    """Build the stores and the token service on one client and register them
    as the app's Services; the balancer's parts are added by the factory."""
    if client is None:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set and no client was given")
        client = make_client(settings.redis_url, settings.redis_timeout)
    keys = Keys(settings.redis_prefix)
    users = UserStore(client, keys)
    built = Services(
        redis=client,
        keys=keys,
        storage=Storage(client),
        nodes=NodeStore(client, keys),
        inflight=InflightStore(client, keys),
        users=users,
        tokens=TokenService(
            users, _secret_source(settings, users), max_stale=settings.auth_max_stale, clock=clock
        ),
        responses=ResponseStore(client, keys),
        clock=clock,
    )
    return install(app, built)


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

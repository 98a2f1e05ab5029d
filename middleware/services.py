"""The app's one registry: every store, service and background worker a view
or the server needs, built once by create_app and kept in
app.extensions["nvllm"]. Views reach them through `services()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from flask import Flask, current_app

from dao.inflight import InflightStore
from dao.keys import Keys
from dao.node import NodeStore
from dao.responses import ResponseStore
from dao.stats import StatsStore
from dao.storage import Storage
from dao.user import UserStore
from service.lifecycle import Lifecycle
from service.token import TokenService

if TYPE_CHECKING:
    from service.alias import AliasBook
    from service.lora import LoraCaller
    from service.metrics import BalancerMetrics
    from service.netpolicy import NetworkPolicy
    from service.probe import Prober
    from service.proxy import Proxy, UserSlots
    from service.responses import ResponseAffinity
    from service.siblings import SiblingLink
    from service.stats import StatsRecorder

EXTENSION = "nvllm"


@dataclass
class Services:
    """The stores come first (init_redis builds them); the balancer's parts are
    set by the factory steps that build them, before any request is served."""

    redis: redis.Redis
    keys: Keys
    storage: Storage
    nodes: NodeStore
    inflight: InflightStore
    users: UserStore
    tokens: TokenService
    responses: ResponseStore
    clock: Callable[[], float]
    user_slots: UserSlots = field(init=False)
    netpolicy: NetworkPolicy = field(init=False)
    proxy: Proxy = field(init=False)
    metrics: BalancerMetrics = field(init=False)
    lora: LoraCaller = field(init=False)
    aliases: AliasBook = field(init=False)
    affinity: ResponseAffinity = field(init=False)
    stats_store: StatsStore = field(init=False)
    stats: StatsRecorder = field(init=False)
    prober: Prober | None = None
    siblings: SiblingLink | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)


def install(app: Flask, built: Services) -> Services:
    app.extensions[EXTENSION] = built
    return built


def app_services(app: Flask) -> Services:
    """The registry of `app`, outside a request (the server, the command line)."""
    return app.extensions[EXTENSION]


def services() -> Services:
    """The registry of the app serving this request."""
    return current_app.extensions[EXTENSION]

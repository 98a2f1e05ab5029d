"""nvllm: create_app() and the `python main.py` command line."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis
from flask import Flask, request
from flask_cors import CORS

from config import Settings, SettingsError

if TYPE_CHECKING:
    from middleware.services import Services
    from service.stats import StatsRecorder

log = logging.getLogger("nvllm")


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    clock: Callable[[], float] = time.time,
    background: bool = False,
) -> Flask:
    """Build the app. Tests pass settings, a (fake) Redis client and a clock.
    `background` starts the fleet refresher at once (the server does); without
    it, it starts on the first request that routes."""
    from api import register_blueprints
    from api.errors import register_error_handlers
    from middleware.redis_client import init_redis
    from middleware.trace import init_trace

    settings = settings or Settings.from_env(os.environ)
    app = Flask("nvllm", static_folder=None)
    app.config["NVLLM"] = settings
    app.debug = settings.debug
    # The seed's envelope order, and the seed's "GPU节点1" as written.
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    init_trace(app)
    services = init_redis(app, settings, redis_client, clock)
    init_body_limits(app, settings, services)
    init_cors(app, settings)
    init_balancer(settings, services)
    init_aliases(settings, services)
    register_blueprints(app)
    register_error_handlers(app)
    bootstrap_admin(services, settings)
    if background:
        start_background(services, settings)
    return app


def start_background(services: Services, settings: Settings) -> None:
    """The fleet refresher, the token checks' refresher, and node polling
    unless NVLLM_PROBE_INTERVAL=0."""
    from service.probe import Prober

    services.proxy.fleet.start()
    if services.siblings is not None:
        services.siblings.start()
    services.tokens.start()
    services.aliases.start()
    services.stats.start()
    if settings.probe_interval > 0:
        services.prober = Prober(services.nodes, interval=settings.probe_interval, clock=services.clock,
                                 netpolicy=services.netpolicy, api_key=settings.upstream_api_key)
        services.prober.start()


def init_balancer(settings: Settings, services: Services) -> None:
    """The fleet view, the routing policy and the forwarding proxy."""
    from service.fleet import Fleet
    from service.lora import LoraCaller
    from service.metrics import BalancerMetrics
    from service.netpolicy import NetworkPolicy
    from service.probe import bounded_get
    from service.proxy import Proxy, UpstreamConfig
    from service.responses import ResponseAffinity
    from service.routing import make_policy
    from service.siblings import GROUP_ENV
    from service.upstream import pool_manager

    http = pool_manager(num_pools=256, maxsize=1024, block=False)
    netpolicy = NetworkPolicy.from_settings(
        settings.allowed_networks, settings.upstream_key_networks, settings.host
    )
    services.netpolicy = netpolicy

    def healthy(node) -> bool:
        # The fleet refresher asks this of ejected nodes: bounded in size and
        # time, so a node that trickles its answer cannot hold the refresher.
        try:
            url = netpolicy.target(node).base_url  # checked, as for every connection to a node
        except OSError:
            return False
        return bounded_get(url + "/health", 1.0)[0] == 200

    options = {"affinity_slack": settings.affinity_slack} if settings.routing == "load" else {}
    policy = make_policy(settings.routing, **options)
    group = os.environ.get(GROUP_ENV)
    fleet = Fleet(
        services.nodes,
        services.inflight,
        refresh_interval=settings.fleet_refresh,
        eject_after=settings.eject_after,
        clock=services.clock,
        health_check=healthy,
        netpolicy=netpolicy,
        listener=policy,
        # A worker of a server that runs several: its siblings know it by this.
        instance_id=f"{group}.{os.getpid()}" if group else None,
    )
    if group:
        policy = link_siblings(services, fleet, policy, group)
    config = UpstreamConfig(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        stream_timeout=settings.upstream_stream_timeout,
        retries=settings.upstream_retries,
        api_key=settings.upstream_api_key,
    )
    services.affinity = ResponseAffinity(services.responses, settings.response_ttl)
    services.lora = LoraCaller(
        http, netpolicy, settings.upstream_api_key,
        connect_timeout=settings.upstream_connect_timeout, read_timeout=settings.upstream_read_timeout,
    )
    # Set by main() (server/metrics_dir.py) when the server runs worker processes.
    services.metrics = BalancerMetrics(fleet, clock=services.clock,
                                       multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    fleet.on_breaker = services.metrics.observe_breaker
    recorder = init_stats(services, fleet)

    def on_done(done: dict) -> None:
        services.metrics.observe_upstream(done)
        recorder.observe(done)

    services.proxy = Proxy(fleet, policy, config, http=http, on_done=on_done)


def link_siblings(services: Services, fleet, policy, group: str):
    """With several workers, each one's policy also hears the others'
    requests (service/siblings.py); returns the policy the proxy uses."""
    from service.routing.mirror import MirroredPolicy
    from service.siblings import SiblingLink

    mirror = MirroredPolicy(policy, publish=lambda e: link.publish(e), lookup=fleet.get,
                            count=fleet.sibling_flight, clock=services.clock)
    link = SiblingLink(group, fleet.instance_id, on_event=mirror.apply, on_gone=mirror.sibling_gone)
    fleet.linked_siblings = link.linked
    services.siblings = link
    return mirror


def init_stats(services: Services, fleet) -> StatsRecorder:
    """Per-node request statistics, shared through Redis for the dashboard."""
    from dao.stats import StatsStore
    from service.stats import StatsRecorder

    services.stats_store = StatsStore(services.redis, services.keys)
    services.stats = StatsRecorder(
        services.stats_store, clock=services.clock, instance_id=fleet.instance_id,
        ejected=lambda: [s.node_id for s in fleet.known() if fleet.is_failing(s.node_id)],
    )
    return services.stats


def init_aliases(settings: Settings, services: Services) -> None:
    """Model aliases, shared through Redis; each instance keeps a copy fresh
    within NVLLM_FLEET_REFRESH seconds."""
    from dao.alias import AliasStore
    from service.alias import AliasBook

    services.aliases = AliasBook(AliasStore(services.redis, services.keys), refresh=settings.fleet_refresh)


def init_body_limits(app: Flask, settings: Settings, services: Services) -> None:
    """Body sizes per route, and the cap on each user's /v1 requests in flight.
    The server bounds how long a body may take (NVLLM_BODY_TIMEOUT)."""
    from api import API_MAX_BODY
    from service.proxy import UserSlots

    app.config["MAX_CONTENT_LENGTH"] = settings.max_proxy_body
    services.user_slots = UserSlots(settings.max_inflight_per_user)

    @app.before_request
    def limit_api_bodies() -> None:
        # Enforced by werkzeug while reading, so chunked bodies are capped too.
        if request.path.startswith("/api/"):
            request.max_content_length = API_MAX_BODY
        elif request.mimetype == "multipart/form-data" and request.path.startswith("/v1/"):
            request.max_content_length = settings.max_upload_body


def init_cors(app: Flask, settings: Settings) -> None:
    """CORS only for the origins an operator listed; none by default."""
    if settings.cors_origins:
        CORS(
            app,
            origins=list(settings.cors_origins),
            expose_headers=["X-Trace-ID", "X-NVLLM-Node", "X-NVLLM-Route"],
        )


ADMIN_PASSWORD_FILE = "admin-password"


def bootstrap_admin(services: Services, settings: Settings) -> None:
    """First start with no users: create `admin`. A generated password goes to
    <NVLLM_DATA_DIR>/admin-password (mode 0600), never to the console or the
    log, which journald or a container runtime would keep for anyone to read."""
    from model.errors import StorageUnavailable
    from service.user import bootstrap_admin as create_first_admin

    try:
        generated = create_first_admin(
            services.users, settings.admin_password, now=services.clock(), hash_n=settings.password_hash_n
        )
    except StorageUnavailable:
        log.warning("storage unavailable at startup; admin bootstrap skipped")
        return
    if not generated:
        return
    path = os.path.abspath(os.path.join(settings.data_dir, ADMIN_PASSWORD_FILE))
    try:
        write_private_file(path, generated + "\n")
    except OSError as exc:
        log.error(
            "created user 'admin' but could not write its password to %s (%s); "
            "set a new one with: python main.py user passwd admin", path, exc.strerror,
        )
        return
    print(
        f"nvllm: created user 'admin'; its password is in {path} (readable only by this account)\n"
        "nvllm: log in, then delete that file; set NVLLM_ADMIN_PASSWORD to choose the password instead.",
        flush=True,
    )


def write_private_file(path: str, text: str) -> None:
    """Write `text` to a file only its owner may read, in a directory only its
    owner may enter; a file left with wider modes is narrowed first."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(fd, 0o600)
        out.write(text)


# --- command line ---


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python main.py", description="nvllm load balancer")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the service (the default)")
    for p in (parser, serve):
        p.add_argument("--host", help="listen address (NVLLM_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="listen port (NVLLM_PORT, default 5000)")
        p.add_argument("--debug", action="store_true", help="Flask debug mode; never in production")

    user = commands.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user; the password is read from the terminal or stdin")
    add.add_argument("username")
    add.add_argument("--role", default="user", choices=["admin", "worker", "user"])
    user.add_parser("list", help="list users")
    remove = user.add_parser("remove", help="remove a user and revoke its tokens")
    remove.add_argument("username")
    passwd = user.add_parser("passwd", help="change a password and revoke the user's tokens")
    passwd.add_argument("username")

    token = commands.add_parser("token", help="mint a long-lived token (for a worker's agent)")
    token.add_argument("username")
    token.add_argument(
        "--ttl", default="365d", help="lifetime: seconds, or with s/m/h/d (default 365d, at most 3650d)"
    )
    revoke = commands.add_parser("revoke", help="revoke one token by its jti; the user's others keep working")
    revoke.add_argument("jti", help="the token's id, printed when it was minted")
    return parser.parse_args(argv)


def parse_duration(text: str) -> int:
    from service.token import MAX_TOKEN_TTL

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except ValueError:
        raise SettingsError(f"--ttl must be a number of seconds or like 30d, got {text!r}") from None
    if not 60 <= seconds <= MAX_TOKEN_TTL:
        raise SettingsError(f"--ttl must be between 60 s and {MAX_TOKEN_TTL // 86400}d, got {text!r}")
    return seconds


def read_password(prompt: str) -> str:
    """From the terminal without echo, or the first line of stdin when piped."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise SettingsError("passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def run_user_command(args: argparse.Namespace, settings: Settings) -> int:
    """User management against the same store the service uses."""
    from middleware.services import app_services
    from model.errors import NvllmError
    from server.store import open_store
    from service import user as users

    with open_store(settings) as redis_url:
        stores = app_services(create_app(settings.replace(redis_url=redis_url)))
        try:
            if args.command == "token":
                user = users.get_user(stores.users, args.username)
                token, jti = stores.tokens.mint(user, parse_duration(args.ttl))
                print(token)
                print(f"jti {jti}: revoke this token alone with: python main.py revoke {jti}", file=sys.stderr)
            elif args.command == "revoke":
                stores.tokens.revoke(args.jti)
                print(f"revoked token {args.jti}; it stops working within seconds")
            elif args.action == "list":
                for u in users.list_users(stores.users):
                    print(f"{u.username}\t{u.role.value}\t{u.to_dict()['create_time']}")
            elif args.action == "add":
                payload = {"username": args.username, "role": args.role,
                           "password": read_password(f"password for {args.username}: ")}
                users.create_user(stores.users, payload, now=time.time(), hash_n=settings.password_hash_n)
                print(f"added {args.username} ({args.role})")
            elif args.action == "remove":
                users.delete_user(stores.users, args.username)
                print(f"removed {args.username}; its tokens stop working within seconds")
            elif args.action == "passwd":
                payload = {"password": read_password(f"new password for {args.username}: ")}
                users.update_user(stores.users, args.username, payload, hash_n=settings.password_hash_n)
                print(f"password of {args.username} changed; its old tokens stop working within seconds")
        except NvllmError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env(os.environ)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if getattr(args, "debug", False):
            overrides["debug"] = True
        settings = settings.replace(**overrides)
    except (SettingsError, AttributeError) as exc:
        print(f"nvllm: {exc}", file=sys.stderr)
        return 2

    from middleware.logs import init_logging

    init_logging(settings.log_level, settings.log_json)
    if args.command in ("user", "token", "revoke"):
        from server.store import StoreError

        try:
            return run_user_command(args, settings)
        except SettingsError as exc:
            print(f"nvllm: {exc}", file=sys.stderr)
            return 2
        except StoreError as exc:
            print(f"nvllm: {exc}", file=sys.stderr)
            return 1

    from server.http import serve
    from server.metrics_dir import metrics_dir

    # Before any worker imports prometheus_client, so that each keeps its values
    # where a scrape of any one of them finds all.
    with metrics_dir(settings.data_dir):
        return serve(settings, serving_app)


def serving_app(settings: Settings) -> Flask:
    """The app a server worker runs: the fleet refresher starts at once, not
    with the first routed request."""
    return create_app(settings, background=True)


if __name__ == "__main__":
    sys.exit(main())

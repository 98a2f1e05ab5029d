"""REDIS_URL's Sentinel form, parsed and checked:
redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...]"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SERVICE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None  # the primary's and replicas' (requirepass)
    sentinel_password: str | None = None  # the sentinels' own, when they have one


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError naming what is wrong (never echoing a password)."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"scheme must be {SENTINEL_SCHEME}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) if credentials else None
    sentinels = tuple(_host_port(item) for item in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("path must be /service_name or /service_name/db")
    if not SERVICE_PATTERN.match(path[0]):
        raise ValueError("service name must be 1-128 of A-Z a-z 0-9 . _ -")
    if len(path) == 2 and not (path[1].isdigit() and int(path[1]) < 16384):
        raise ValueError("db must be a number")
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r}; only sentinel_password is known")
    sentinel_password = query.get("sentinel_password", [None])[-1]
    return SentinelUrl(sentinels, path[0], int(path[1]) if len(path) == 2 else 0, password or None,
                       sentinel_password or None)


def _host_port(item: str) -> tuple[str, int]:
    match = re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?\Z", item)
    if not match:
        raise ValueError(f"sentinel address {item!r} must be host or host:port")
    port = int(match.group(2) or DEFAULT_SENTINEL_PORT)
    if not 1 <= port <= 65535:
        raise ValueError(f"sentinel port {port} must be 1-65535")
    return match.group(1).strip("[]"), port


def check_store_url(url: str) -> str:
    """REDIS_URL as given, once its scheme (and a Sentinel form) is known good."""
    if is_sentinel(url):
        parse_sentinel_url(url)
    elif urlsplit(url).scheme not in PLAIN_SCHEMES:
        raise ValueError(f"must start with {', '.join(s + '://' for s in PLAIN_SCHEMES)} or {SENTINEL_SCHEME}://")
    return url

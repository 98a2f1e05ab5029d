"""Which addresses nvllm may connect to: the allowed networks for nodes, and
which of those may receive the upstream API key.

An address is checked when a node registers (or changes address) and again
before every connection nvllm opens to it, because a name can resolve
elsewhere by then (DNS rebinding). A name is resolved, every address it
resolves to must pass, and the connection goes to the address that was
checked, never to the name.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from model.node import Node

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# GPU fleets live in private networks; these are open by default.
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
_LOOPBACK = tuple(ipaddress.ip_network(n) for n in LOOPBACK_NETWORKS)

# Refused whatever the operator lists: nothing a vLLM node lives on, and what
# a relay into the network would aim at first.
_NEVER: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        # Cloud instance metadata (AWS, GCP, Azure, ...: 169.254.169.254;
        # AWS ECS; AWS over IPv6; Alibaba; Oracle): they hand out credentials.
        ("169.254.169.254/32", "cloud metadata addresses are never allowed"),
        ("169.254.170.2/32", "cloud metadata addresses are never allowed"),
        ("fd00:ec2::254/128", "cloud metadata addresses are never allowed"),
        ("100.100.100.200/32", "cloud metadata addresses are never allowed"),
        ("192.0.0.192/32", "cloud metadata addresses are never allowed"),
        ("169.254.0.0/16", "link-local addresses are never allowed"),
        ("fe80::/10", "link-local addresses are never allowed"),
        ("224.0.0.0/4", "multicast addresses are never allowed"),
        ("ff00::/8", "multicast addresses are never allowed"),
        ("255.255.255.255/32", "the broadcast address is never allowed"),
        # Linux connects 0.0.0.0 (and the rest of 0/8 where it can) to this host.
        ("0.0.0.0/8", "unspecified addresses are never allowed"),
        ("::/128", "unspecified addresses are never allowed"),
    )
)
# Host names of metadata services (metadata.google.internal, metadata.goog,
# instance-data.ec2.internal, ...): refused by name, before any DNS answer.
_METADATA_LABELS = frozenset({"metadata", "instance-data"})
# IPv6 forms that carry an IPv4 address a gateway may connect to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

CACHE_SECONDS = 5.0  # how long a name's resolution is trusted
MAX_CACHED = 4096


class AddressRefused(OSError):
    """A node's address is not one nvllm may connect to. An OSError, so that
    the proxy and the poller treat it as a connection that failed: retried on
    another node, nothing sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AddressUnresolved(AddressRefused):
    """A host name that does not resolve (now)."""


@dataclass(frozen=True)
class Target:
    """Where to connect for a node: the checked `ip`, and the name the node
    was registered under (sent as Host)."""

    ip: str
    address: str
    port: int

    @property
    def named(self) -> bool:
        return self.ip != self.address

    @property
    def base_url(self) -> str:
        return f"http://{_bracket(self.ip)}:{self.port}"

    @property
    def host_header(self) -> str:
        return f"{_bracket(self.address)}:{self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolve(name: str) -> list[str]:
    """Every address `name` resolves to, in the resolver's order."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def listens_on_loopback(host: str) -> bool:
    """True when nvllm's own listen address is reachable from this host only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """IPv4 addresses an IPv6 address leads to through a gateway."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[IPAddress] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


class NetworkPolicy:
    """The allowed networks and the API-key networks, and a short-lived cache
    of name resolutions so the hot path does not resolve on every request."""

    def __init__(
        self,
        allowed: Iterable[str],
        key_networks: Iterable[str] | None = None,
        *,
        resolver: Callable[[str], list[str]] = resolve,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = parse_networks(allowed)
        self.key_networks = self.allowed if key_networks is None else parse_networks(key_networks)
        # Only a network inside loopback opens it: 0.0.0.0/0 listed to mean
        # "anywhere" must not open nvllm's own host (its store, its agents).
        self._loopback = tuple(
            net for net in self.allowed for loop in _LOOPBACK if net.version == loop.version and net.subnet_of(loop)
        )
        self._resolver = resolver
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, list[str] | None]] = {}
        self._lock = threading.Lock()
        # Verdicts on an IP address never change for this policy: judged once,
        # not on every request to the node (the proxy asks at each connection).
        self._literals: dict[str, tuple[str, str | None]] = {}  # IP literal -> (address, refusal)
        self._refusals: dict[str, str | None] = {}  # resolved address -> refusal
        self._key_ok: dict[str, bool] = {}

    @classmethod
    def from_settings(
        cls, allowed: Iterable[str] | None, key_networks: Iterable[str] | None, listen_host: str, **options
    ) -> NetworkPolicy:
        """Unset `allowed` means the private ranges, plus loopback while nvllm
        itself listens on loopback (the local demo, fake nodes on 127.0.0.1)."""
        if allowed is None:
            allowed = PRIVATE_NETWORKS + (LOOPBACK_NETWORKS if listens_on_loopback(listen_host) else ())
        return cls(allowed, key_networks, **options)

    # --- judging addresses ---

    def refusal(self, ip: IPAddress) -> str | None:
        """Why nvllm may not connect to `ip`, or None when it may."""
        ip = _plain(ip)
        for candidate in (ip, *_embedded(ip)):
            for network, reason in _NEVER:
                if candidate.version == network.version and candidate in network:
                    return reason
        if ip.is_loopback:
            if any(ip.version == net.version and ip in net for net in self._loopback):
                return None
            return "loopback addresses are not in NVLLM_ALLOWED_NETWORKS"
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return "not in NVLLM_ALLOWED_NETWORKS"

    def sends_key(self, ip: str) -> bool:
        """True when the upstream API key may go to `ip` (a checked address)."""
        verdict = self._key_ok.get(ip)
        if verdict is None:
            addr = _plain(ipaddress.ip_address(ip))
            verdict = any(addr.version == net.version and addr in net for net in self.key_networks)
            _remember(self._key_ok, ip, verdict)
        return verdict

    def _refusal_of(self, ip: str) -> str | None:
        """refusal() of an address in text, remembered."""
        if ip in self._refusals:
            return self._refusals[ip]
        reason = self.refusal(ipaddress.ip_address(ip))
        _remember(self._refusals, ip, reason)
        return reason

    def check(self, address: str) -> list[str]:
        """The addresses `address` (an IP or a host name) stands for, every one
        allowed. Raises AddressUnresolved, or AddressRefused with the reason.
        The reason never lists what a name resolved to."""
        judged = self._literals.get(address)
        if judged is None:
            literal = _literal(address)
            if literal is not None:
                judged = (str(literal), self.refusal(literal))
                _remember(self._literals, address, judged)
        if judged is not None:
            ip, reason = judged
            if reason:
                raise AddressRefused(reason)
            return [ip]
        name = address.rstrip(".").lower()
        if _METADATA_LABELS.intersection(name.split(".")):
            raise AddressRefused("cloud metadata host names are never allowed")
        ips = self._resolve(name)
        for ip in ips:
            reason = self._refusal_of(ip.split("%", 1)[0])
            if reason:
                raise AddressRefused(f"{address} resolves to a refused address ({reason})")
        return ips

    def allows_literal(self, node: Node) -> bool:
        """The check without DNS: False for a refused IP address or metadata
        name; names pass here and are checked when connecting."""
        literal = _literal(node.node_address)
        if literal is not None:
            return self.refusal(literal) is None
        return not _METADATA_LABELS.intersection(node.node_address.rstrip(".").lower().split("."))

    def target(self, node: Node) -> Target:
        """Where to connect for `node`, checked now. Raises AddressRefused."""
        return Target(self.check(node.node_address)[0], node.node_address, node.node_port)

    # --- resolving ---

    def _resolve(self, name: str) -> list[str]:
        now = self._clock()
        with self._lock:
            cached = self._cache.get(name)
        if cached is None or cached[0] <= now:
            try:
                ips: list[str] | None = self._resolver(name) or None
            except (OSError, UnicodeError):
                ips = None
            with self._lock:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[name] = (now + self._cache_seconds, ips)
        else:
            ips = cached[1]
        if not ips:
            raise AddressUnresolved(f"{name} does not resolve")
        return ips


def _remember(memo: dict, key: str, value: object) -> None:
    """A bounded memo: cleared when full (addresses are few; a flood of
    distinct ones must not grow it without end)."""
    if len(memo) >= MAX_CACHED:
        memo.clear()
    memo[key] = value


def _literal(address: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None

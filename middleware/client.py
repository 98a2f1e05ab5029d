"""The client's address: the TCP peer, or what a trusted reverse proxy says."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from flask import current_app, request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """X-Forwarded-For counts only when the peer is a trusted proxy. Each proxy
    appends the address it saw, so walk the list from the right and take the
    first address that is not itself a trusted proxy; anything left of it could
    have been written by the client. An entry that is not an address ends the
    walk at the last good one."""
    address = peer or "unknown"
    if not trusted or not forwarded_for or not _within(address, trusted):
        return address
    for entry in reversed(forwarded_for.split(",")):
        try:
            hop = str(ipaddress.ip_address(entry.strip()))
        except ValueError:
            return address
        address = hop
        if not _within(hop, trusted):
            return hop
    return address


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def request_client_address() -> str:
    """client_address() of the current request, with NVLLM_TRUSTED_PROXIES."""
    headers = request.headers.getlist("X-Forwarded-For")
    return client_address(
        request.remote_addr, ",".join(headers) or None, current_app.config["NVLLM"].trusted_proxies
    )

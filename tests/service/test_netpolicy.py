"""The node address policy: which addresses nvllm may connect to, names
resolved and checked, and where the upstream API key may go. No real DNS."""

from __future__ import annotations

import ipaddress

import pytest

from config import Settings, SettingsError
from model.node import Node
from service.netpolicy import AddressRefused, AddressUnresolved, NetworkPolicy, listens_on_loopback


class Resolver:
    """A DNS stand-in: name -> addresses, counting lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups = 0

    def __call__(self, name: str) -> list[str]:
        self.lookups += 1
        if name not in self.answers:
            raise OSError("no such name")
        return self.answers[name]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def default(host: str = "127.0.0.1", **options) -> NetworkPolicy:
    return NetworkPolicy.from_settings(None, None, host, **options)


def refusal(policy: NetworkPolicy, address: str) -> str | None:
    return policy.refusal(ipaddress.ip_address(address))


# --- the default networks ---


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.9", "172.31.255.1", "192.168.1.100",
                                     "100.64.0.1", "fd12:3456::1", "::ffff:10.0.0.7"])
def test_private_addresses_are_allowed_by_default(address):
    assert refusal(default("0.0.0.0"), address) is None


@pytest.mark.parametrize("address", ["8.8.8.8", "203.0.113.7", "2001:db8::1", "172.32.0.1", "::ffff:8.8.8.8"])
def test_public_addresses_are_refused_by_default(address):
    assert refusal(default(), address) == "not in NVLLM_ALLOWED_NETWORKS"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_allowed_while_nvllm_listens_on_loopback_only(address):
    assert refusal(default("127.0.0.1"), address) is None
    assert refusal(default("localhost"), address) is None
    assert "loopback" in refusal(default("0.0.0.0"), address)
    assert "loopback" in refusal(default("10.0.0.5"), address)


def test_loopback_needs_a_listed_loopback_network():
    # 0.0.0.0/0 listed to mean "anywhere" does not open nvllm's own host.
    anywhere = NetworkPolicy(["0.0.0.0/0", "::/0"])
    assert refusal(anywhere, "8.8.8.8") is None
    assert "loopback" in refusal(anywhere, "127.0.0.1")
    assert "loopback" in refusal(anywhere, "::1")
    assert refusal(NetworkPolicy(["127.0.0.0/8"]), "127.0.0.1") is None


ALWAYS_REFUSED = [
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 to 169.254.169.254
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("255.255.255.255", "broadcast"),
]


@pytest.mark.parametrize(("address", "why"), ALWAYS_REFUSED)
def test_some_addresses_are_refused_whatever_is_listed(address, why):
    everything = NetworkPolicy(["0.0.0.0/0", "::/0", "169.254.0.0/16", "fe80::/10", "fc00::/7"])
    reason = refusal(everything, address)
    assert reason and why in reason and "never" in reason


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.google.internal.", "metadata",
                                  "metadata.goog", "instance-data.ec2.internal"])
def test_metadata_host_names_are_refused_before_any_lookup(name):
    resolver = Resolver({name.lower().rstrip("."): ["10.0.0.1"]})
    with pytest.raises(AddressRefused, match="metadata"):
        NetworkPolicy(["10.0.0.0/8"], resolver=resolver).check(name)
    assert resolver.lookups == 0


# --- names ---


def test_a_name_passes_when_every_address_it_resolves_to_does():
    resolver = Resolver({"gpu-1.lan": ["10.0.0.7", "fd00::7"], "mixed.lan": ["10.0.0.8", "169.254.169.254"],
                         "sneaky.example": ["127.0.0.1"]})
    policy = default("0.0.0.0", resolver=resolver)
    assert policy.check("gpu-1.lan") == ["10.0.0.7", "fd00::7"]
    with pytest.raises(AddressRefused) as caught:
        policy.check("mixed.lan")
    # The reason names what the client sent, never what it resolved to.
    assert "mixed.lan" in caught.value.reason and "169.254" not in caught.value.reason
    with pytest.raises(AddressRefused, match="loopback"):
        policy.check("sneaky.example")


def test_a_name_that_does_not_resolve_is_refused():
    with pytest.raises(AddressUnresolved, match="nowhere.lan"):
        default(resolver=Resolver({})).check("nowhere.lan")


def test_resolutions_are_cached_briefly_then_asked_again():
    clock = Clock()
    resolver = Resolver({"gpu-1.lan": ["10.0.0.7"]})
    policy = default(resolver=resolver, clock=clock, cache_seconds=5)
    for _ in range(100):
        policy.check("gpu-1.lan")
    assert resolver.lookups == 1
    # DNS rebinding: the name now points at the metadata service.
    resolver.answers["gpu-1.lan"] = ["169.254.169.254"]
    clock.now = 5.1
    with pytest.raises(AddressRefused):
        policy.check("gpu-1.lan")
    assert resolver.lookups == 2


def test_the_target_is_the_checked_address_with_the_name_as_host():
    policy = default(resolver=Resolver({"gpu-1.lan": ["10.0.0.7"]}))
    target = policy.target(Node("n1", node_address="gpu-1.lan", node_port=8001))
    assert (target.base_url, target.named, target.host_header) == ("http://10.0.0.7:8001", True, "gpu-1.lan:8001")
    literal = policy.target(Node("n2", node_address="fd00::7", node_port=8000))
    assert (literal.base_url, literal.named) == ("http://[fd00::7]:8000", False)
    with pytest.raises(AddressRefused):
        policy.target(Node("n3", node_address="0.0.0.0"))  # the seed's default: never connected to


def test_allows_literal_judges_ips_and_metadata_names_without_dns():
    policy = default("0.0.0.0", resolver=Resolver({}))
    assert policy.allows_literal(Node("a", node_address="10.0.0.7"))
    assert not policy.allows_literal(Node("b", node_address="169.254.169.254"))
    assert not policy.allows_literal(Node("c", node_address="0.0.0.0"))
    assert not policy.allows_literal(Node("d", node_address="metadata.google.internal"))
    assert policy.allows_literal(Node("e", node_address="gpu-1.lan"))  # checked when connecting


# --- the upstream API key ---


def test_the_key_goes_to_the_key_networks_which_default_to_the_allowed_ones():
    policy = default()
    assert policy.sends_key("10.0.0.7") and policy.sends_key("127.0.0.1")
    narrow = NetworkPolicy.from_settings(None, ["10.1.0.0/16"], "127.0.0.1")
    assert narrow.sends_key("10.1.2.3") and narrow.sends_key("::ffff:10.1.2.3")
    assert not narrow.sends_key("10.2.0.1") and not narrow.sends_key("127.0.0.1")


# --- settings ---


def test_networks_are_read_from_the_environment():
    settings = Settings.from_env({"NVLLM_ALLOWED_NETWORKS": " 10.0.0.0/8, 203.0.113.7 ,fd00::/8,",
                                  "NVLLM_UPSTREAM_KEY_NETWORKS": "10.1.0.0/16"})
    assert settings.allowed_networks == ("10.0.0.0/8", "203.0.113.7", "fd00::/8")
    assert settings.upstream_key_networks == ("10.1.0.0/16",)
    assert Settings.from_env({"NVLLM_ALLOWED_NETWORKS": ""}).allowed_networks is None
    assert (Settings().max_nodes, Settings().max_nodes_per_account) == (1024, 256)


@pytest.mark.parametrize("var", ["NVLLM_ALLOWED_NETWORKS", "NVLLM_UPSTREAM_KEY_NETWORKS"])
@pytest.mark.parametrize("raw", ["10.0.0.1/8", "10.0.0.0/33", "gpu.lan", "10.0.0.0/8;192.168.0.0/16"])
def test_bad_networks_stop_nvllm_naming_the_variable(var, raw):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: raw})


@pytest.mark.parametrize("var", ["NVLLM_MAX_NODES", "NVLLM_MAX_NODES_PER_ACCOUNT"])
def test_bad_caps_stop_nvllm_naming_the_variable(var):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: "0"})


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("0.0.0.0", False), ("::", False), ("10.0.0.5", False)])
def test_listens_on_loopback(host, loopback):
    assert listens_on_loopback(host) is loopback

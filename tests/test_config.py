"""Configuration (SPEC §3): validation at construction with exact messages, defaults, immutability."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from fabstir import (
    ChainConfig,
    ConfigurationError,
    DiscoveryConfig,
    MockConfig,
    MockHostSpec,
    P2PConfig,
    RecoveryConfig,
    RejectReason,
    RetryConfig,
    SDKConfig,
    SelectionStrategy,
    TimeoutConfig,
)
from fabstir._config_validation import SELECTION_STRATEGIES
from fabstir.protocol import PeerIdentity

PEER_ID = PeerIdentity(b"\x01" * 32).peer_id
NODE = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"
ADDRESS = "0x" + "ab" * 20
PRIVATE_KEY = "0x" + "5f" * 32


def expect(message: str, build: Callable[[], object]) -> None:
    """``build()`` raises a ConfigurationError whose message is exactly ``message``."""
    with pytest.raises(ConfigurationError) as info:
        build()
    assert str(info.value) == message


def production(**p2p: Any) -> SDKConfig:
    return SDKConfig(mode="production", p2p=P2PConfig(**{"bootstrap_nodes": [NODE], **p2p}))


# -- defaults ------------------------------------------------------------------------------------------


def test_default_config_is_mock_mode_without_p2p() -> None:
    """``SDKConfig()`` constructs: mock mode, devnet, no P2P settings, every part at its defaults."""
    config = SDKConfig()
    assert config.mode == "mock"
    assert config.network == "devnet"
    assert config.p2p is None
    assert config.retry == RetryConfig()
    assert config.mock == MockConfig()


def test_documented_defaults() -> None:
    """Dial 30 s, request 60 s, 3 retries, backoff 100 ms × 2 capped at 5 s, discovery cache 5 min,
    blacklist 5 min, recovery data 1 h."""
    p2p, config = P2PConfig(), SDKConfig()
    assert (p2p.dial_timeout, p2p.request_timeout, p2p.max_retries) == (30.0, 60.0, 3)
    retry = config.retry
    assert (retry.max_retries, retry.initial_delay, retry.multiplier, retry.max_delay) == (3, 0.1, 2.0, 5.0)
    assert config.discovery.cache_ttl == 300.0
    assert config.recovery.blacklist_duration == 300.0
    assert config.recovery.recovery_data_ttl == 3600.0


def test_configuration_error_is_a_value_error() -> None:
    """A bad option is also a ``ValueError``, for callers that catch the builtin."""
    with pytest.raises(ValueError, match="Invalid SDK mode"):
        SDKConfig(mode="MOCK")


# -- mode ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "shown"), [(None, "None"), (1, "1"), ("", ""), ("MOCK", "MOCK"), ("Production", "Production")]
)
def test_invalid_mode(mode: Any, shown: str) -> None:
    """Anything but the exact strings "mock" and "production" is rejected, quoting the value."""
    expect(f'Invalid SDK mode: {shown}. Must be "mock" or "production"', lambda: SDKConfig(mode=mode))


def test_invalid_mode_through_from_kwargs() -> None:
    """``from_kwargs`` (what ``FabstirSDK(**kwargs)`` calls) validates the same way."""
    expect(
        'Invalid SDK mode: prod. Must be "mock" or "production"', lambda: SDKConfig.from_kwargs(mode="prod")
    )


# -- P2P in production ---------------------------------------------------------------------------------


def test_production_requires_p2p() -> None:
    """Production mode without P2P settings cannot dial anyone."""
    expect("P2P configuration required for production mode", lambda: SDKConfig(mode="production"))


@pytest.mark.parametrize(
    "p2p", [{}, {"bootstrap_nodes": None}, {"bootstrap_nodes": NODE}, {"bootstrap_nodes": {NODE}}]
)
def test_production_requires_bootstrap_list(p2p: dict[str, Any]) -> None:
    """bootstrap_nodes missing, None, a bare string or a set is not a list of nodes."""
    expect(
        "P2P configuration must include bootstrap_nodes list",
        lambda: SDKConfig(mode="production", p2p=P2PConfig(**p2p)),
    )


@pytest.mark.parametrize("nodes", [[], ()])
def test_production_requires_a_bootstrap_node(nodes: Any) -> None:
    """An empty bootstrap list is rejected."""
    expect(
        "At least one bootstrap node required for production mode",
        lambda: SDKConfig.from_kwargs(mode="production", p2p={"bootstrap_nodes": nodes}),
    )


@pytest.mark.parametrize("nodes", [[4001], [NODE, None], [NODE.encode()]])
def test_bootstrap_nodes_must_be_strings(nodes: list[Any]) -> None:
    """Every bootstrap node is a string (bytes are not)."""
    expect("Bootstrap nodes must be strings", lambda: production(bootstrap_nodes=nodes))


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/127.0.0.1/tcp/4001",  # no peer id
        "not-a-multiaddr",
        "/ip4/127.0.0.1/tcp/4001/p2p/invalid",  # not a peer id
        f"/p2p/{PEER_ID}/ip4/127.0.0.1/tcp/4001",  # parses, but the peer id is not last
        f"/p2p/{PEER_ID}",  # a peer id and no address to dial
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}/p2p/{PEER_ID}",
        f"/ip4/127.0.0.1/tcp/4001/ipfs/{PEER_ID}",  # the old name is unknown to multiaddr 0.2
        f"/ip4/999.0.0.1/tcp/4001/p2p/{PEER_ID}",
        "",
        "/",
    ],
)
def test_invalid_bootstrap_node_format(addr: str) -> None:
    """A bootstrap node must be a multiaddr with an address and, last, ``/p2p/<peer id>``."""
    expect(f"Invalid bootstrap node format: {addr}", lambda: production(bootstrap_nodes=[NODE, addr]))


@pytest.mark.parametrize(
    "addr",
    [
        NODE,
        f"/ip6/::1/tcp/4001/p2p/{PEER_ID}",
        f"/dns4/boot.example.org/tcp/4001/p2p/{PEER_ID}",
        "/ip4/10.0.0.1/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # legacy RSA-style id
    ],
)
def test_valid_production_config(addr: str) -> None:
    """A dialable multiaddr ending in a real peer id is accepted; the list is stored as a tuple."""
    config = SDKConfig.from_kwargs(mode="production", p2p={"bootstrap_nodes": [addr]})
    assert config.mode == "production"
    assert isinstance(config.p2p, P2PConfig)
    assert config.p2p.bootstrap_nodes == (addr,)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dial_timeout": 0}, "p2p.dial_timeout must be a positive number"),
        ({"dial_timeout": -1.0}, "p2p.dial_timeout must be a positive number"),
        ({"dial_timeout": "30"}, "p2p.dial_timeout must be a positive number"),
        ({"dial_timeout": True}, "p2p.dial_timeout must be a positive number"),
        ({"request_timeout": math.nan}, "p2p.request_timeout must be a positive number"),
        ({"retry_delay": 0.0}, "p2p.retry_delay must be a positive number"),
        ({"max_retries": -1}, "p2p.max_retries must be a non-negative integer"),
        ({"max_retries": 1.5}, "p2p.max_retries must be a non-negative integer"),
        ({"max_retries": False}, "p2p.max_retries must be a non-negative integer"),
        ({"enable_dht": "yes"}, "p2p.enable_dht must be a boolean"),
        ({"enable_dht": 1}, "p2p.enable_dht must be a boolean"),
        ({"enable_mdns": None}, "p2p.enable_mdns must be a boolean"),
        ({"listen_addrs": "/ip4/0.0.0.0/tcp/0"}, "p2p.listen_addrs must be a list of strings"),
        ({"listen_addrs": [4001]}, "p2p.listen_addrs must be a list of strings"),
        ({"listen_addrs": ["tcp:4001"]}, "p2p.listen_addrs has an invalid multiaddr: tcp:4001"),
        ({"listen_addrs": [""]}, "p2p.listen_addrs has an invalid multiaddr: "),
    ],
)
def test_invalid_p2p_fields_in_production(overrides: dict[str, Any], message: str) -> None:
    """Production validates every P2P field, naming it."""
    expect(message, lambda: production(**overrides))


def test_production_p2p_edge_values_accepted() -> None:
    """No retries, no listen address (dial-only client) and integer timeouts are all valid."""
    config = production(max_retries=0, listen_addrs=[], dial_timeout=5, enable_mdns=True)
    assert config.p2p == P2PConfig(
        bootstrap_nodes=(NODE,), max_retries=0, listen_addrs=(), dial_timeout=5, enable_mdns=True
    )


def test_production_rejects_unknown_p2p_key() -> None:
    """A typo in a production P2P mapping is reported, not silently dropped."""
    expect(
        "Unknown configuration option: p2p.bootsrap_nodes",
        lambda: SDKConfig.from_kwargs(mode="production", p2p={"bootsrap_nodes": [NODE]}),
    )


# -- P2P in mock mode ----------------------------------------------------------------------------------


def test_mock_mode_keeps_garbage_p2p_instance() -> None:
    """Mock mode never dials, so it stores P2P settings without judging them (lists still frozen)."""
    garbage = P2PConfig(bootstrap_nodes=[1, "nonsense"], dial_timeout=-5, enable_dht="maybe")  # type: ignore[arg-type]
    config = SDKConfig(p2p=garbage)
    assert config.p2p is garbage
    nodes: Any = config.p2p.bootstrap_nodes
    assert nodes == (1, "nonsense")
    assert config.p2p.dial_timeout == -5


def test_mock_mode_keeps_garbage_p2p_mapping_and_drops_unknown_keys() -> None:
    """A P2P mapping in mock mode becomes a P2PConfig as given; keys it does not know are ignored."""
    config = SDKConfig.from_kwargs(
        p2p={"bootstrap_nodes": ["not-a-multiaddr"], "max_retries": "many", "bootsrap_nodes": [], 7: 7}
    )
    assert config.p2p == P2PConfig(bootstrap_nodes=("not-a-multiaddr",), max_retries="many")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["mock", "production"])
@pytest.mark.parametrize("p2p", ["bootstrap", 5, [NODE]])
def test_p2p_must_be_config_or_mapping(mode: str, p2p: Any) -> None:
    """p2p itself must be a P2PConfig, a mapping or None, in either mode."""
    expect("p2p must be a P2PConfig, a mapping or None", lambda: SDKConfig(mode=mode, p2p=p2p))


# -- the parts validated in every mode -----------------------------------------------------------------

_HOST = {"name": "h"}

INVALID_PARTS: list[tuple[str, dict[str, Any], str]] = [
    # retry
    ("retry", {"max_retries": -1}, "retry.max_retries must be a non-negative integer"),
    ("retry", {"max_retries": 2.0}, "retry.max_retries must be a non-negative integer"),
    ("retry", {"max_retries": True}, "retry.max_retries must be a non-negative integer"),
    ("retry", {"initial_delay": 0}, "retry.initial_delay must be a positive number"),
    ("retry", {"initial_delay": "0.1"}, "retry.initial_delay must be a positive number"),
    ("retry", {"initial_delay": math.nan}, "retry.initial_delay must be a positive number"),
    ("retry", {"multiplier": 0.5}, "retry.multiplier must be a number of at least 1"),
    ("retry", {"multiplier": True}, "retry.multiplier must be a number of at least 1"),
    ("retry", {"max_delay": 0}, "retry.max_delay must be a positive number"),
    (
        "retry",
        {"initial_delay": 2.0, "max_delay": 1.0},
        "retry.max_delay must be at least retry.initial_delay",
    ),
    ("retry", {"jitter": 1.5}, "retry.jitter must be a number between 0 and 1"),
    ("retry", {"jitter": -0.1}, "retry.jitter must be a number between 0 and 1"),
    # timeouts
    ("timeouts", {"overall": 0}, "timeouts.overall must be a positive number or None"),
    ("timeouts", {"overall": "300"}, "timeouts.overall must be a positive number or None"),
    ("timeouts", {"first_token": 0}, "timeouts.first_token must be a positive number"),
    ("timeouts", {"first_token": None}, "timeouts.first_token must be a positive number"),
    ("timeouts", {"connect": True}, "timeouts.connect must be a positive number"),
    ("timeouts", {"discovery": -1}, "timeouts.discovery must be a positive number"),
    ("timeouts", {"negotiation": 0.0}, "timeouts.negotiation must be a positive number"),
    ("timeouts", {"inter_token": math.nan}, "timeouts.inter_token must be a positive number"),
    ("timeouts", {"request": "60"}, "timeouts.request must be a positive number"),
    # discovery
    ("discovery", {"cache_ttl": 0}, "discovery.cache_ttl must be a positive number"),
    ("discovery", {"max_nodes": 0}, "discovery.max_nodes must be a positive integer"),
    ("discovery", {"max_nodes": 2.5}, "discovery.max_nodes must be a positive integer"),
    ("discovery", {"timeout": -1}, "discovery.timeout must be a positive number"),
    ("discovery", {"liveness_check": 1}, "discovery.liveness_check must be a boolean"),
    # chain
    ("chain", {"rpc_url": "localhost:8545"}, "chain.rpc_url must be an http(s):// or ws(s):// URL"),
    ("chain", {"rpc_url": "ftp://node"}, "chain.rpc_url must be an http(s):// or ws(s):// URL"),
    ("chain", {"rpc_url": "http://"}, "chain.rpc_url must be an http(s):// or ws(s):// URL"),
    ("chain", {"rpc_url": 8545}, "chain.rpc_url must be an http(s):// or ws(s):// URL"),
    ("chain", {"chain_id": 0}, "chain.chain_id must be a positive integer"),
    ("chain", {"chain_id": "1"}, "chain.chain_id must be a positive integer"),
    ("chain", {"chain_id": True}, "chain.chain_id must be a positive integer"),
    ("chain", {"contracts": [ADDRESS]}, "chain.contracts must be a mapping of contract names to addresses"),
    (
        "chain",
        {"contracts": {"": ADDRESS}},
        "chain.contracts must be a mapping of contract names to addresses",
    ),
    (
        "chain",
        {"contracts": {1: ADDRESS}},
        "chain.contracts must be a mapping of contract names to addresses",
    ),
    (
        "chain",
        {"contracts": {"escrow": "0x1234"}},
        "chain.contracts['escrow'] must be a 0x-prefixed address of 40 hex digits",
    ),
    (
        "chain",
        {"contracts": {"escrow": "ab" * 20}},
        "chain.contracts['escrow'] must be a 0x-prefixed address of 40 hex digits",
    ),
    ("chain", {"private_key": "0x1234"}, "chain.private_key must be 0x followed by 64 hex digits"),
    ("chain", {"private_key": "5f" * 32}, "chain.private_key must be 0x followed by 64 hex digits"),
    ("chain", {"private_key": "0x" + "zz" * 32}, "chain.private_key must be 0x followed by 64 hex digits"),
    ("chain", {"private_key": 12345}, "chain.private_key must be 0x followed by 64 hex digits"),
    ("chain", {"confirmations": -1}, "chain.confirmations must be a non-negative integer"),
    ("chain", {"payment_token": ""}, "chain.payment_token must be a non-empty string"),
    ("chain", {"session_expiry": 0}, "chain.session_expiry must be a positive number"),
    ("chain", {"jobs_per_session": 0}, "chain.jobs_per_session must be a positive integer"),
    ("chain", {"jobs_per_session": 1001}, "chain.jobs_per_session must be at most 1000"),
    # recovery
    ("recovery", {"failover": "yes"}, "recovery.failover must be a boolean"),
    ("recovery", {"max_failovers": -1}, "recovery.max_failovers must be a non-negative integer"),
    ("recovery", {"blacklist_duration": 0}, "recovery.blacklist_duration must be a positive number"),
    ("recovery", {"recovery_data_ttl": -5}, "recovery.recovery_data_ttl must be a positive number"),
    ("recovery", {"journal_path": ""}, "recovery.journal_path must be a non-empty string or None"),
    # mock
    ("mock", {"seed": "1"}, "mock.seed must be an integer"),
    ("mock", {"seed": True}, "mock.seed must be an integer"),
    ("mock", {"hosts": "alpha"}, "mock.hosts must be a list of MockHostSpec or mappings"),
    ("mock", {"hosts": ["alpha"]}, "mock.hosts must be a list of MockHostSpec or mappings"),
    ("mock", {"hosts": [_HOST, _HOST]}, "mock.hosts has two hosts named 'h'"),
    ("mock", {"realistic_pacing": 1}, "mock.realistic_pacing must be a boolean"),
    ("mock", {"initial_balance": -1}, "mock.initial_balance must be a non-negative integer"),
    ("mock", {"fee_basis_points": 10_001}, "mock.fee_basis_points must be an integer between 0 and 10000"),
    ("mock", {"fee_basis_points": -1}, "mock.fee_basis_points must be an integer between 0 and 10000"),
    ("mock", {"fee_basis_points": 1.0}, "mock.fee_basis_points must be an integer between 0 and 10000"),
]

INVALID_HOSTS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "mock.hosts.name must be a non-empty string"),
    ({"name": None}, "mock.hosts.name must be a non-empty string"),
    ({"models": []}, "mock.hosts.models must be a non-empty list of strings"),
    ({"models": "llama"}, "mock.hosts.models must be a non-empty list of strings"),
    ({"models": [1]}, "mock.hosts.models must be a non-empty list of strings"),
    ({"models": [""]}, "mock.hosts.models must not hold an empty model id"),
    ({"models": ["m", "m"]}, "mock.hosts.models must not list a model twice"),
    ({"price_per_token": -1}, "mock.hosts.price_per_token must be a positive integer"),
    ({"price_per_token": 0}, "mock.hosts.price_per_token must be a positive integer"),
    ({"price_per_token": 1.5}, "mock.hosts.price_per_token must be a positive integer"),
    ({"latency_ms": -1}, "mock.hosts.latency_ms must be a non-negative number"),
    ({"tokens_per_second": 0}, "mock.hosts.tokens_per_second must be a positive number"),
    ({"reliability": 1.5}, "mock.hosts.reliability must be a number between 0 and 1"),
    ({"max_concurrent_jobs": 0}, "mock.hosts.max_concurrent_jobs must be a positive integer"),
    (
        {"reject": "nope"},
        "mock.hosts.reject must be None or one of busy, unsupported_model, insufficient_payment, "
        "version_mismatch, error",
    ),
    ({"drop_at_token": -1}, "mock.hosts.drop_at_token must be a non-negative integer or None"),
    ({"error_at_token": 1.5}, "mock.hosts.error_at_token must be a non-negative integer or None"),
    ({"first_token_delay": -0.5}, "mock.hosts.first_token_delay must be a non-negative number"),
    ({"overclaim_tokens": -1}, "mock.hosts.overclaim_tokens must be a non-negative integer"),
]

_PART_CLASSES: dict[str, Callable[..., object]] = {
    "retry": RetryConfig,
    "timeouts": TimeoutConfig,
    "discovery": DiscoveryConfig,
    "chain": ChainConfig,
    "recovery": RecoveryConfig,
    "mock": MockConfig,
}


@pytest.mark.parametrize("mode", ["mock", "production"])
@pytest.mark.parametrize(("part", "overrides", "message"), INVALID_PARTS)
def test_invalid_part_field(mode: str, part: str, overrides: dict[str, Any], message: str) -> None:
    """Every part is validated in both modes, naming ``<part>.<field>``."""
    p2p = {"bootstrap_nodes": [NODE]} if mode == "production" else None
    expect(message, lambda: SDKConfig.from_kwargs(mode=mode, p2p=p2p, **{part: overrides}))


@pytest.mark.parametrize(("part", "overrides", "message"), INVALID_PARTS)
def test_invalid_part_built_directly(part: str, overrides: dict[str, Any], message: str) -> None:
    """A part built on its own raises the same message as inside an SDKConfig."""
    expect(message, lambda: _PART_CLASSES[part](**overrides))


@pytest.mark.parametrize(("overrides", "message"), INVALID_HOSTS)
def test_invalid_mock_host(overrides: dict[str, Any], message: str) -> None:
    """Each scripted mock host is validated, whether built directly or from a mapping."""
    spec = {**_HOST, **overrides}
    expect(message, lambda: MockHostSpec(**spec))
    expect(message, lambda: SDKConfig.from_kwargs(mock={"hosts": [spec]}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"network": ""}, "network must be a non-empty string"),
        ({"network": None}, "network must be a non-empty string"),
        (
            {"selection_strategy": "fastest"},
            "selection_strategy must be one of reliability, price, latency, random",
        ),
        (
            {"selection_strategy": "PRICE"},
            "selection_strategy must be one of reliability, price, latency, random",
        ),
        ({"negotiation_fanout": 0}, "negotiation_fanout must be a positive integer"),
        ({"negotiation_fanout": True}, "negotiation_fanout must be a positive integer"),
        ({"retry": 5}, "retry must be a RetryConfig or a mapping"),
        ({"chain": "http://localhost:8545"}, "chain must be a ChainConfig or a mapping"),
        ({"mock": MockHostSpec(name="a")}, "mock must be a MockConfig or a mapping"),
    ],
)
def test_invalid_top_level_field(overrides: dict[str, Any], message: str) -> None:
    """The top-level fields are validated and named without a part prefix."""
    expect(message, lambda: SDKConfig(**overrides))


def test_selection_strategies_match_the_enum() -> None:
    """The strategies the config accepts are exactly those of ``SelectionStrategy``."""
    assert set(SELECTION_STRATEGIES) == {s.value for s in SelectionStrategy}


@pytest.mark.parametrize("strategy", [*SELECTION_STRATEGIES, SelectionStrategy.PRICE])
def test_every_selection_strategy_accepted(strategy: str) -> None:
    """Each strategy, as a string or as the enum, is accepted."""
    assert SDKConfig(selection_strategy=strategy).selection_strategy == strategy


def test_edge_values_accepted() -> None:
    """Zero where zero makes sense, the ends of closed ranges, and ``overall=None`` are valid."""
    config = SDKConfig.from_kwargs(
        retry={"max_retries": 0, "jitter": 1, "initial_delay": 5, "max_delay": 5},
        timeouts={"overall": None},
        chain={
            "confirmations": 0,
            "chain_id": 31337,
            "rpc_url": "WSS://node.example",
            "private_key": PRIVATE_KEY,
        },
        recovery={"max_failovers": 0, "failover": False},
        mock={"fee_basis_points": 10_000, "initial_balance": 0, "hosts": [MockHostSpec(name="a")]},
    )
    assert config.timeouts.overall is None
    assert config.retry.max_retries == 0
    assert config.chain.confirmations == 0
    assert config.mock.fee_basis_points == 10_000
    assert RetryConfig(jitter=0).jitter == 0
    assert MockConfig(fee_basis_points=0).fee_basis_points == 0


@pytest.mark.parametrize("reason", [None, *RejectReason, *(r.value for r in RejectReason)])
def test_mock_host_reject_reasons_accepted(reason: str | None) -> None:
    """A mock host may reject with any RejectReason, given as the enum or its string, or not at all."""
    spec = MockHostSpec(name="h", reject=reason, drop_at_token=0, error_at_token=0, price_per_token=1)
    assert spec.reject == reason


def test_part_given_as_none_takes_defaults() -> None:
    """``retry=None`` (as from a config file with an empty section) means the part's defaults."""
    assert SDKConfig.from_kwargs(retry=None, chain=None).retry == RetryConfig()


# -- unknown and missing options -----------------------------------------------------------------------


def test_unknown_top_level_option() -> None:
    """An unknown keyword names just the key."""
    expect("Unknown configuration option: foo", lambda: SDKConfig.from_kwargs(foo=1))


def test_unknown_keyword_is_not_a_type_error() -> None:
    """Even the dataclass constructor itself reports an unknown keyword as a ConfigurationError."""
    kwargs: dict[str, Any] = {"bootstrap": [NODE]}
    expect("Unknown configuration option: bootstrap", lambda: SDKConfig(**kwargs))
    expect("Unknown configuration option: retry.retries", lambda: RetryConfig(retries=3))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": {"max_retry": 3}}, "Unknown configuration option: retry.max_retry"),
        ({"timeouts": {"total": 3}}, "Unknown configuration option: timeouts.total"),
        ({"chain": {"rpc": "http://x"}}, "Unknown configuration option: chain.rpc"),
        ({"chain": {1: "x"}}, "Unknown configuration option: chain.1"),
        ({"mock": {"hosts": [{"name": "a", "speed": 1}]}}, "Unknown configuration option: mock.hosts.speed"),
        ({"mock": {"hosts": [{"models": ["m"]}]}}, "Missing configuration option: mock.hosts.name"),
    ],
)
def test_unknown_option_in_mapping(kwargs: dict[str, Any], message: str) -> None:
    """A mapping key that names no option is reported with its part; so is a missing required one."""
    expect(message, lambda: SDKConfig.from_kwargs(**kwargs))


def test_mock_host_name_is_required() -> None:
    """A mock host without a name is a configuration error, not a TypeError."""
    expect("Missing configuration option: mock.hosts.name", lambda: MockHostSpec())  # type: ignore[call-arg]


# -- mappings ------------------------------------------------------------------------------------------


def test_mappings_become_parts() -> None:
    """Every part may be given as a mapping; the result equals the one built from instances."""
    from_mappings = SDKConfig.from_kwargs(
        retry={"max_retries": 5},
        timeouts={"first_token": 10},
        discovery={"max_nodes": 3},
        chain={"contracts": {"escrow": ADDRESS}},
        recovery={"failover": False},
        mock={"seed": 7, "hosts": [{"name": "a", "models": ["m"]}]},
    )
    from_instances = SDKConfig(
        retry=RetryConfig(max_retries=5),
        timeouts=TimeoutConfig(first_token=10),
        discovery=DiscoveryConfig(max_nodes=3),
        chain=ChainConfig(contracts={"escrow": ADDRESS}),
        recovery=RecoveryConfig(failover=False),
        mock=MockConfig(seed=7, hosts=(MockHostSpec(name="a", models=("m",)),)),
    )
    assert from_mappings == from_instances
    assert isinstance(from_mappings.mock.hosts[0], MockHostSpec)


# -- immutability --------------------------------------------------------------------------------------


def test_config_objects_are_frozen() -> None:
    """Assigning to any config field raises FrozenInstanceError."""
    config = production()
    assert config.p2p is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "mock"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.p2p.bootstrap_nodes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry.max_retries = 9  # type: ignore[misc]


def test_lists_become_tuples() -> None:
    """Lists given by the caller are stored as tuples, so changing the caller's list changes nothing."""
    nodes, models = [NODE], ["m"]
    config = SDKConfig.from_kwargs(
        mode="production",
        p2p={"bootstrap_nodes": nodes, "listen_addrs": ["/ip4/0.0.0.0/tcp/0"]},
        mock={"hosts": [{"name": "a", "models": models}]},
    )
    nodes.append("/ip4/1.1.1.1/tcp/1")
    models.append("other")
    assert config.p2p is not None
    assert config.p2p.bootstrap_nodes == (NODE,)
    assert config.p2p.listen_addrs == ("/ip4/0.0.0.0/tcp/0",)
    assert config.mock.hosts[0].models == ("m",)
    assert isinstance(config.mock.hosts, tuple)


def test_contracts_are_a_read_only_copy() -> None:
    """``chain.contracts`` is a read-only copy: neither it nor the caller's dict can change it."""
    contracts = {"escrow": ADDRESS}
    chain = ChainConfig(contracts=contracts)
    contracts["escrow"] = "0x" + "00" * 20
    assert isinstance(chain.contracts, MappingProxyType)
    assert chain.contracts == {"escrow": ADDRESS}
    with pytest.raises(TypeError):
        chain.contracts["escrow"] = ADDRESS  # type: ignore[index]


def test_config_survives_copy_and_pickle() -> None:
    """Configs (read-only contracts included) deep-copy and pickle to equal values."""
    config = SDKConfig(chain=ChainConfig(contracts={"escrow": ADDRESS}, private_key=PRIVATE_KEY))
    assert copy.deepcopy(config) == config
    restored = pickle.loads(pickle.dumps(config))
    assert restored == config
    assert isinstance(restored.chain.contracts, MappingProxyType)


# -- evolve --------------------------------------------------------------------------------------------


def test_evolve_merges_a_mapping_into_a_part() -> None:
    """``evolve(retry={...})`` changes the named fields of the part and keeps the others."""
    config = SDKConfig(retry=RetryConfig(max_retries=5, jitter=0.0))
    evolved = config.evolve(retry={"max_delay": 9.0}, negotiation_fanout=1)
    assert evolved.retry == RetryConfig(max_retries=5, jitter=0.0, max_delay=9.0)
    assert evolved.negotiation_fanout == 1
    assert config.retry.max_delay == 5.0


def test_evolve_replaces_a_part_given_as_instance() -> None:
    """An instance given to ``evolve`` replaces the part wholesale."""
    config = SDKConfig(retry=RetryConfig(max_retries=5))
    assert config.evolve(retry=RetryConfig(jitter=0.5)).retry == RetryConfig(jitter=0.5)


def test_evolve_validates() -> None:
    """``evolve`` builds a new, validated config: bad values and unknown keys raise."""
    config = SDKConfig()
    expect("negotiation_fanout must be a positive integer", lambda: config.evolve(negotiation_fanout=0))
    expect("Unknown configuration option: retry.tries", lambda: config.evolve(retry={"tries": 1}))
    expect("Unknown configuration option: fanout", lambda: config.evolve(fanout=1))
    expect("P2P configuration required for production mode", lambda: config.evolve(mode="production"))


def test_evolve_to_production_merges_p2p() -> None:
    """Switching to production with a P2P mapping validates the merged P2P settings."""
    config = SDKConfig(p2p=P2PConfig(dial_timeout=5.0))
    evolved = config.evolve(mode="production", p2p={"bootstrap_nodes": [NODE]})
    assert evolved.p2p == P2PConfig(bootstrap_nodes=(NODE,), dial_timeout=5.0)


# -- secrets -------------------------------------------------------------------------------------------


def test_repr_hides_private_key() -> None:
    """The private key never appears in the repr of the chain part or of the whole config."""
    config = SDKConfig(chain=ChainConfig(private_key=PRIVATE_KEY))
    assert "***" in repr(config.chain)
    assert PRIVATE_KEY[2:12] not in repr(config.chain)
    assert PRIVATE_KEY[2:12] not in repr(config)
    assert PRIVATE_KEY[2:12] not in str(config)


def test_invalid_private_key_is_not_quoted() -> None:
    """A malformed key (one hex digit short) is reported without quoting it."""
    with pytest.raises(ConfigurationError) as info:
        ChainConfig(private_key=PRIVATE_KEY[:-1])
    assert PRIVATE_KEY[2:12] not in str(info.value)

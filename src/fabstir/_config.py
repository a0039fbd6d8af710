"""Configuration: frozen, keyword-only value objects, validated at construction.

``SDKConfig`` is what :class:`fabstir.FabstirSDK` takes; its parts group related settings so that no
constructor needs twenty keywords. Every part accepts a plain mapping in its place (``p2p={...}``) and
every list is stored as a tuple, so a config never changes after construction. Use
``dataclasses.replace(config, ...)`` (or :meth:`SDKConfig.evolve`) for per-call variations.

Documented defaults: dial 30 s, request 60 s, 3 retries, backoff 100 ms × 2 capped at 5 s, discovery
cache 5 min, blacklist 5 min, recovery data 1 h.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._config_validation import (
    validate_chain,
    validate_discovery,
    validate_mock,
    validate_mode,
    validate_p2p_for_production,
    validate_recovery,
    validate_retry,
    validate_selection_strategy,
    validate_timeouts,
)

__all__ = [
    "ChainConfig",
    "DiscoveryConfig",
    "MockConfig",
    "MockHostSpec",
    "P2PConfig",
    "RecoveryConfig",
    "RetryConfig",
    "SDKConfig",
    "TimeoutConfig",
]

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True, slots=True)
class P2PConfig:
    """libp2p settings. Validated only in production mode (mock mode keeps them as given)."""

    bootstrap_nodes: tuple[str, ...] | None = None
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    enable_dht: bool = True
    enable_mdns: bool = False
    dial_timeout: float = 30.0
    request_timeout: float = 60.0
    max_retries: int = 3
    retry_delay: float = 0.1

    def __post_init__(self) -> None:
        _freeze_lists(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryConfig:
    """Exponential backoff with jitter: ``min(initial_delay × multiplier**(attempt-1), max_delay) ± jitter``."""

    max_retries: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.1  # fraction of the delay

    def __post_init__(self) -> None:
        validate_retry(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class TimeoutConfig:
    """Per-phase timeouts (seconds) inside one overall deadline per job (``overall``; None = no deadline)."""

    overall: float | None = 300.0
    connect: float = 30.0
    discovery: float = 10.0
    negotiation: float = 10.0
    first_token: float = 30.0
    inter_token: float = 30.0
    request: float = 60.0

    def __post_init__(self) -> None:
        validate_timeouts(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class DiscoveryConfig:
    cache_ttl: float = 300.0
    max_nodes: int = 20
    timeout: float = 10.0
    liveness_check: bool = True

    def __post_init__(self) -> None:
        validate_discovery(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainConfig:
    """Where payments settle. In mock mode the in-memory ledger ignores ``rpc_url``/``contracts``."""

    rpc_url: str | None = None
    chain_id: int | None = None
    contracts: Mapping[str, str] = field(default_factory=dict)
    private_key: str | None = None
    confirmations: int = 1
    payment_token: str = "ETH"
    session_expiry: float = 3600.0

    def __post_init__(self) -> None:
        _freeze_lists(self)
        validate_chain(self)

    def __repr__(self) -> str:  # never print a private key
        key = "'***'" if self.private_key else "None"
        return (
            f"ChainConfig(rpc_url={self.rpc_url!r}, chain_id={self.chain_id!r}, contracts={dict(self.contracts)!r}, "
            f"private_key={key}, confirmations={self.confirmations!r}, payment_token={self.payment_token!r}, "
            f"session_expiry={self.session_expiry!r})"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RecoveryConfig:
    failover: bool = True
    max_failovers: int = 2
    blacklist_duration: float = 300.0
    recovery_data_ttl: float = 3600.0
    journal_path: str | None = None

    def __post_init__(self) -> None:
        validate_recovery(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class MockHostSpec:
    """One simulated host of the mock marketplace, and the faults it is scripted to commit."""

    name: str
    models: tuple[str, ...] = ("llama-3.2-1b-instruct", "tiny-vicuna-1b")
    price_per_token: int = 2_000_000_000  # wei (2 gwei) per token
    latency_ms: float = 20.0  # reported latency; real delay only when MockConfig.realistic_pacing
    tokens_per_second: float = 50.0  # pacing when MockConfig.realistic_pacing
    reliability: float = 0.99  # advertised prior
    max_concurrent_jobs: int = 4
    # scripted faults
    reject: str | None = None  # always reject with this reason ("busy", "unsupported_model", ...)
    drop_at_token: int | None = None  # vanish (reset the stream) after sending this many tokens
    first_token_delay: float = 0.0  # seconds before the first token (always applied)
    overclaim_tokens: int = 0  # report this many more completion tokens than sent
    error_at_token: int | None = None  # send an error frame after this many tokens

    def __post_init__(self) -> None:
        _freeze_lists(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class MockConfig:
    """The simulated marketplace of mock mode: deterministic for a ``seed``; no delays unless
    ``realistic_pacing`` asks for them."""

    seed: int = 0
    hosts: tuple[MockHostSpec, ...] = ()  # empty: the default three hosts
    realistic_pacing: bool = False
    initial_balance: int = 10**21  # wei given to the client's mock account (1000 ETH)
    fee_basis_points: int = 100  # treasury fee, 1 %

    def __post_init__(self) -> None:
        if isinstance(self.hosts, list | tuple):
            hosts = tuple(MockHostSpec(**h) if isinstance(h, Mapping) else h for h in self.hosts)
            object.__setattr__(self, "hosts", hosts)
        validate_mock(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class SDKConfig:
    """Everything :class:`fabstir.FabstirSDK` needs. ``mode`` is ``"mock"`` (default) or ``"production"``."""

    mode: str = "mock"
    network: str = "devnet"
    p2p: P2PConfig | None = None
    chain: ChainConfig = field(default_factory=ChainConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    mock: MockConfig = field(default_factory=MockConfig)
    selection_strategy: str = "reliability"
    negotiation_fanout: int = 3

    def __post_init__(self) -> None:
        validate_mode(self.mode)
        p2p: Any = self.p2p
        if self.mode == "production":
            validate_p2p_for_production(p2p)
        if isinstance(p2p, Mapping):
            p2p = _build(P2PConfig, p2p, validate=False)
        object.__setattr__(self, "p2p", p2p)
        for name, cls in (
            ("chain", ChainConfig),
            ("retry", RetryConfig),
            ("timeouts", TimeoutConfig),
            ("discovery", DiscoveryConfig),
            ("recovery", RecoveryConfig),
            ("mock", MockConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, _build(cls, value))
            elif value is None:
                object.__setattr__(self, name, cls())
        validate_selection_strategy(self.selection_strategy)
        validate_positive_int_field(self.negotiation_fanout, "negotiation_fanout")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SDKConfig:
        return _build(cls, kwargs)

    def evolve(self, **changes: Any) -> SDKConfig:
        return dataclasses.replace(self, **changes)


def validate_positive_int_field(value: Any, name: str) -> None:
    from ._config_validation import require_positive_int

    require_positive_int(value, name)


def _build(cls: type[_T], values: Mapping[str, Any], *, validate: bool = True) -> _T:
    """Builds a config part from a mapping, with a clear error for unknown keys."""
    from ._config_validation import reject_unknown_keys

    reject_unknown_keys(cls, values)
    if validate:
        return cls(**values)
    try:
        return cls(**values)
    except Exception:  # mock mode keeps P2P settings it cannot use without judging them
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            object.__setattr__(obj, f.name, values.get(f.name, f.default))
        return obj


def _freeze_lists(obj: Any) -> None:
    """Lists become tuples and dicts read-only mappings, so a config never changes after construction."""
    from types import MappingProxyType

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list):
            object.__setattr__(obj, f.name, tuple(value))
        elif isinstance(value, dict):
            object.__setattr__(obj, f.name, MappingProxyType(dict(value)))

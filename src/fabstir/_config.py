"""Configuration: frozen, keyword-only value objects, validated at construction.

``SDKConfig`` is what :class:`fabstir.FabstirSDK` takes; its parts group related settings so that no
constructor needs twenty keywords. Every part accepts a plain mapping in its place (``retry={...}``),
every list is stored as a tuple and every mapping as a read-only copy, so a config never changes after
construction. Use :meth:`SDKConfig.evolve` (or ``dataclasses.replace``) for per-call variations.

Every mistake raises :class:`~fabstir.ConfigurationError` (a ``ValueError``) when the config is built,
naming the option as ``<part>.<field>``; an unknown keyword or mapping key is
``Unknown configuration option: <part>.<key>``. The rules and their messages live in
``_config_validation``.

Documented defaults: dial 30 s, request 60 s, 3 retries, backoff 100 ms × 2 capped at 5 s, discovery
cache 5 min, blacklist 5 min, recovery data 1 h.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from ._config_validation import (
    check_options,
    option_keywords,
    validate_chain,
    validate_discovery,
    validate_mock,
    validate_mock_host,
    validate_mode,
    validate_p2p_for_production,
    validate_recovery,
    validate_retry,
    validate_sdk,
    validate_timeouts,
)
from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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

_C = TypeVar("_C", bound="DataclassInstance")


def _options(part: str) -> Callable[[type[_C]], type[_C]]:
    """Makes an unknown or missing keyword a :class:`ConfigurationError` naming the option
    (``Unknown configuration option: retry.max_retry``) instead of the ``TypeError`` of the generated
    ``__init__``, so that a typo in ``from_kwargs``, in a mapping or in ``evolve`` reads like one."""

    def decorate(cls: type[_C]) -> type[_C]:
        fields = dataclasses.fields(cls)
        known = frozenset(f.name for f in fields)
        required = tuple(f.name for f in fields if f.default is MISSING and f.default_factory is MISSING)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: _C, *args: Any, **kwargs: Any) -> None:
            if not args:  # positional arguments are a programming error: keep the TypeError
                check_options(part, known, required, kwargs)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[method-assign,assignment]
        return cls

    return decorate


def _frozen(value: Any) -> Any:
    """Lists become tuples and mappings read-only copies (the caller's own objects stay theirs)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    return value


@_options("p2p")
@dataclass(frozen=True, kw_only=True, slots=True)
class P2PConfig:
    """libp2p settings. Validated only in production mode, by :class:`SDKConfig`; mock mode keeps them
    as given (lists frozen to tuples).

    Each bootstrap node is dialled up to ``1 + max_retries`` times, ``retry_delay`` doubling between
    attempts; a dial or a new stream waits at most ``dial_timeout`` / ``request_timeout``; every
    connection is pinged every ``ping_interval`` and dropped when a ping goes unanswered for
    ``ping_timeout`` (how a frozen host is noticed)."""

    bootstrap_nodes: tuple[str, ...] | None = None
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    enable_dht: bool = True
    enable_mdns: bool = False
    dial_timeout: float = 30.0
    request_timeout: float = 60.0
    max_retries: int = 3
    retry_delay: float = 0.1
    ping_interval: float = 2.0
    ping_timeout: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap_nodes", _frozen(self.bootstrap_nodes))
        object.__setattr__(self, "listen_addrs", _frozen(self.listen_addrs))


@_options("retry")
@dataclass(frozen=True, kw_only=True, slots=True)
class RetryConfig:
    """Exponential backoff with jitter: ``min(initial_delay × multiplier**(attempt-1), max_delay) ± jitter``.

    ``max_retries`` retries follow the first attempt (0: never retry); ``jitter`` is a fraction of the
    delay in [0, 1]; ``max_delay`` is at least ``initial_delay``.
    """

    max_retries: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        validate_retry(self)


@_options("timeouts")
@dataclass(frozen=True, kw_only=True, slots=True)
class TimeoutConfig:
    """Per-phase timeouts (seconds) inside one overall deadline per job (``overall``; None = no deadline).

    ``resume``: how long a stream that broke is tried again on the same host (a network blip) before the
    job fails over to another host (capped by ``inter_token``)."""

    overall: float | None = 300.0
    connect: float = 30.0
    discovery: float = 10.0
    negotiation: float = 10.0
    first_token: float = 30.0
    inter_token: float = 30.0
    resume: float = 2.0
    request: float = 60.0

    def __post_init__(self) -> None:
        validate_timeouts(self)


@_options("discovery")
@dataclass(frozen=True, kw_only=True, slots=True)
class DiscoveryConfig:
    """Found nodes are cached ``cache_ttl`` seconds; a lookup returns at most ``max_nodes`` and takes at
    most ``timeout`` seconds; ``liveness_check`` pings candidates before offering them."""

    cache_ttl: float = 300.0
    max_nodes: int = 20
    timeout: float = 10.0
    liveness_check: bool = True

    def __post_init__(self) -> None:
        validate_discovery(self)


@_options("chain")
@dataclass(frozen=True, kw_only=True, slots=True)
class ChainConfig:
    """Where payments settle. In mock mode the in-memory ledger ignores ``rpc_url``/``contracts``.

    ``contracts`` maps contract names to 0x-addresses (stored read-only); ``private_key`` is 0x + 64 hex
    digits and never appears in ``repr`` or in an error message.

    ``escrow=False`` runs production jobs **without payment** (nothing is deposited or paid; receipts
    are still signed and checked, see :class:`fabstir.chain.UnescrowedLedger`); mock mode always escrows
    on its in-memory ledger.

    ``jobs_per_session`` > 1 lets one payment session carry several jobs to the same host (at the same
    price and token), one after another, so that opening and settling it is paid for once: a new session
    deposits ``jobs_per_session`` times the first job's maximum cost, and later jobs to that host reuse
    it while what is left covers them. The host settles after each job (or in one batch when the session
    closes); it closes the session — refunding the rest — when the client says the job is the last one,
    or when the session has been idle for a while. Sessions expire after ``session_expiry`` seconds.
    """

    rpc_url: str | None = None
    chain_id: int | None = None
    contracts: Mapping[str, str] = field(default_factory=dict)
    private_key: str | None = None
    confirmations: int = 1
    payment_token: str = "ETH"
    session_expiry: float = 3600.0
    escrow: bool = True
    jobs_per_session: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "contracts", _frozen(self.contracts))
        validate_chain(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # A MappingProxyType can be neither pickled nor deep-copied: rebuild from a plain dict instead.
        return (_rebuild, (ChainConfig, {**_as_mapping(self), "contracts": dict(self.contracts)}))

    def __repr__(self) -> str:  # never print a private key
        key = "'***'" if self.private_key else "None"
        return (
            f"ChainConfig(rpc_url={self.rpc_url!r}, chain_id={self.chain_id!r}, "
            f"contracts={dict(self.contracts)!r}, "
            f"private_key={key}, confirmations={self.confirmations!r}, payment_token={self.payment_token!r}, "
            f"session_expiry={self.session_expiry!r}, escrow={self.escrow!r}, "
            f"jobs_per_session={self.jobs_per_session!r})"
        )


@_options("recovery")
@dataclass(frozen=True, kw_only=True, slots=True)
class RecoveryConfig:
    """Failover to another host (at most ``max_failovers`` times per job); a host caught lying or failing
    repeatedly is avoided for ``blacklist_duration`` seconds; ``journal_path`` (a SQLite file) keeps every
    job so that a restarted client can find, resume and reclaim it — finished jobs whose money is all
    settled are dropped after ``recovery_data_ttl`` seconds; ``reliability_path`` (a JSON file) keeps the
    hosts' reliability statistics between runs."""

    failover: bool = True
    max_failovers: int = 2
    blacklist_duration: float = 300.0
    recovery_data_ttl: float = 3600.0
    journal_path: str | None = None
    reliability_path: str | None = None

    def __post_init__(self) -> None:
        validate_recovery(self)


@_options("mock.hosts")
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
    reject: str | None = None  # always reject with this RejectReason ("busy", "unsupported_model", ...)
    drop_at_token: int | None = None  # vanish (reset the stream) after sending this many tokens
    first_token_delay: float = 0.0  # seconds before the first token (always applied)
    overclaim_tokens: int = 0  # report this many more completion tokens than sent
    error_at_token: int | None = None  # send an error frame after this many tokens
    hang_at_token: int | None = None  # stop sending after this many tokens, connection kept (a frozen host)
    serve_model: str | None = None  # declare (and serve) another model than the one asked for

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", _frozen(self.models))
        validate_mock_host(self)


def _mock_host(value: Any) -> MockHostSpec:
    if isinstance(value, MockHostSpec):
        return value
    if isinstance(value, Mapping):
        return MockHostSpec(**option_keywords("mock.hosts", value))
    raise ConfigurationError("mock.hosts must be a list of MockHostSpec or mappings")


@_options("mock")
@dataclass(frozen=True, kw_only=True, slots=True)
class MockConfig:
    """The simulated marketplace of mock mode: deterministic for a ``seed``; no delays unless
    ``realistic_pacing`` asks for them. ``hosts`` (MockHostSpec or mappings, unique names) replaces the
    default three hosts."""

    seed: int = 0
    hosts: tuple[MockHostSpec, ...] = ()
    realistic_pacing: bool = False
    initial_balance: int = 10**21  # wei given to the client's mock account (1000 ETH)
    fee_basis_points: int = 100  # treasury fee, 1 %

    def __post_init__(self) -> None:
        hosts: Any = self.hosts
        if not isinstance(hosts, list | tuple):
            raise ConfigurationError("mock.hosts must be a list of MockHostSpec or mappings")
        object.__setattr__(self, "hosts", tuple(_mock_host(h) for h in hosts))
        validate_mock(self)


_P2P_OPTIONS = frozenset(f.name for f in dataclasses.fields(P2PConfig))


def _p2p(value: Any, *, production: bool) -> P2PConfig | None:
    if value is None or isinstance(value, P2PConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError("p2p must be a P2PConfig, a mapping or None")
    if production:
        return P2PConfig(**option_keywords("p2p", value))
    # Mock mode keeps P2P settings without judging them, and so drops the keys it does not know.
    return P2PConfig(**{key: item for key, item in value.items() if key in _P2P_OPTIONS})


def _part(name: str, cls: type[_C], value: Any) -> _C:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**option_keywords(name, value))
    raise ConfigurationError(f"{name} must be a {cls.__name__} or a mapping")


@_options("")  # the top level: options are named without a prefix
@dataclass(frozen=True, kw_only=True, slots=True)
class SDKConfig:
    """Everything :class:`fabstir.FabstirSDK` needs. ``mode`` is ``"mock"`` (default) or ``"production"``.

    Production needs ``p2p`` with at least one bootstrap node (``/ip4/…/tcp/…/p2p/<peer id>``); mock
    mode keeps ``p2p`` unvalidated. Every part may be given as an instance, a mapping, or None (its
    defaults).
    """

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
        production = self.mode == "production"
        object.__setattr__(self, "p2p", _p2p(self.p2p, production=production))
        if production:
            validate_p2p_for_production(self.p2p)
        for name, cls in _PARTS.items():
            object.__setattr__(self, name, _part(name, cls, getattr(self, name)))
        validate_sdk(self.network, self.selection_strategy, self.negotiation_fanout)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SDKConfig:
        """``SDKConfig(**kwargs)``, spelled for callers that forward user keywords (``FabstirSDK(**kw)``)."""
        return cls(**kwargs)

    def evolve(self, **changes: Any) -> SDKConfig:
        """A validated copy with ``changes`` applied. A mapping given for a part (``retry={...}``)
        updates that part's fields and keeps the others; an instance replaces the part."""
        merged: dict[str, Any] = {}
        for name, value in changes.items():
            current = getattr(self, name) if name in _EVOLVING_PARTS else None
            merged[name] = (
                {**_as_mapping(current), **value} if current and isinstance(value, Mapping) else value
            )
        return dataclasses.replace(self, **merged)


_PARTS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "chain": ChainConfig,
        "retry": RetryConfig,
        "timeouts": TimeoutConfig,
        "discovery": DiscoveryConfig,
        "recovery": RecoveryConfig,
        "mock": MockConfig,
    }
)
_EVOLVING_PARTS = frozenset({"p2p", *_PARTS})


def _rebuild(cls: type[_C], values: Mapping[str, Any]) -> _C:
    return cls(**values)


def _as_mapping(part: DataclassInstance) -> dict[str, Any]:
    """The fields of a part, shallow (``dataclasses.asdict`` would turn nested hosts into dicts)."""
    return {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}

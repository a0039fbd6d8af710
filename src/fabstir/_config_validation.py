"""The validation rules of the configuration, with the messages of SPEC §3.

Every rule raises :class:`~fabstir.ConfigurationError` and names the offending field the way a user wrote
it: ``<part>.<field>`` (``retry.max_retries``, ``mock.hosts.price_per_token``), or just the field at the
top level (``negotiation_fanout``). Messages never quote a private key.

Numbers are ``int`` or ``float`` but never ``bool`` (``True`` is an ``int`` to Python, not to a config
file); NaN fails every range check. The P2P rules run only in production mode: mock mode never dials, so
it keeps whatever P2P settings it is given.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from ._exceptions import ConfigurationError
from ._models import RejectReason

if TYPE_CHECKING:
    from ._config import (
        ChainConfig,
        DiscoveryConfig,
        MockConfig,
        MockHostSpec,
        P2PConfig,
        RecoveryConfig,
        RetryConfig,
        TimeoutConfig,
    )

__all__ = [
    "MODES",
    "SELECTION_STRATEGIES",
    "check_options",
    "option_keywords",
    "validate_chain",
    "validate_discovery",
    "validate_mock",
    "validate_mock_host",
    "validate_mode",
    "validate_p2p_for_production",
    "validate_recovery",
    "validate_retry",
    "validate_sdk",
    "validate_timeouts",
]

MODES = ("mock", "production")
#: The values of ``fabstir.SelectionStrategy``, spelled out here because ``fabstir.core`` imports this
#: module's package and cannot be imported back (a test keeps the two in step).
SELECTION_STRATEGIES = ("reliability", "price", "latency", "random")

_PRIVATE_KEY = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_URL_SCHEMES = ("http://", "https://", "ws://", "wss://")
_MAX_FEE_BASIS_POINTS = 10_000  # 100 %
#: A session's deposit is jobs_per_session × one job's maximum cost: bounded so a typo cannot lock a fortune.
MAX_JOBS_PER_SESSION = 1_000


def _fail(message: str) -> NoReturn:
    raise ConfigurationError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(where: str, value: Any) -> None:
    if not (_is_number(value) and value > 0):
        _fail(f"{where} must be a positive number")


def _non_negative_number(where: str, value: Any) -> None:
    if not (_is_number(value) and value >= 0):
        _fail(f"{where} must be a non-negative number")


def _fraction(where: str, value: Any) -> None:
    if not (_is_number(value) and 0 <= value <= 1):
        _fail(f"{where} must be a number between 0 and 1")


def _positive_int(where: str, value: Any) -> None:
    if not (_is_int(value) and value > 0):
        _fail(f"{where} must be a positive integer")


def _non_negative_int(where: str, value: Any) -> None:
    if not (_is_int(value) and value >= 0):
        _fail(f"{where} must be a non-negative integer")


def _optional_non_negative_int(where: str, value: Any) -> None:
    if value is not None and not (_is_int(value) and value >= 0):
        _fail(f"{where} must be a non-negative integer or None")


def _boolean(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(f"{where} must be a boolean")


def _non_empty_string(where: str, value: Any) -> None:
    if not (isinstance(value, str) and value):
        _fail(f"{where} must be a non-empty string")


def _string_list(where: str, value: Any, *, non_empty: bool = False) -> None:
    """Lists were frozen to tuples before validation, so only tuples are lists here."""
    strings = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    if not strings or (non_empty and not value):
        _fail(f"{where} must be a {'non-empty ' if non_empty else ''}list of strings")


def _parse_multiaddr(text: str) -> tuple[str, ...] | None:
    """The protocol names of ``text``, or None if it is not a multiaddr."""
    # Imported here: only production mode needs it, and mock-mode users need not pay for its import.
    import multiaddr
    from multiaddr.exceptions import Error as MultiaddrError

    try:
        return tuple(p.name for p in multiaddr.Multiaddr(text).protocols())
    except (MultiaddrError, ValueError):
        return None


# -- options (keywords and mapping keys) ----------------------------------------------------------------


def _qualified(part: str, key: object) -> str:
    return f"{part}.{key}" if part else str(key)


def check_options(
    part: str, known: Collection[str], required: Collection[str], given: Collection[str]
) -> None:
    """Unknown and missing keywords as configuration errors, not the ``TypeError`` of a dataclass."""
    for key in given:
        if key not in known:
            _fail(f"Unknown configuration option: {_qualified(part, key)}")
    for key in required:
        if key not in given:
            _fail(f"Missing configuration option: {_qualified(part, key)}")


def option_keywords(part: str, values: Mapping[Any, Any]) -> dict[str, Any]:
    """``values`` as keyword arguments; a key that is not a string cannot name an option."""
    for key in values:
        if not isinstance(key, str):
            _fail(f"Unknown configuration option: {_qualified(part, key)}")
    return dict(values)


# -- the top level -------------------------------------------------------------------------------------


def validate_mode(mode: Any) -> None:
    """Case-sensitive: ``"MOCK"`` is as wrong as ``None``."""
    if not (isinstance(mode, str) and mode in MODES):
        _fail(f'Invalid SDK mode: {mode}. Must be "mock" or "production"')


def validate_sdk(network: Any, selection_strategy: Any, negotiation_fanout: Any) -> None:
    """The scalar top-level fields (mode, P2P and the parts have their own rules)."""
    _non_empty_string("network", network)
    if not (isinstance(selection_strategy, str) and selection_strategy in SELECTION_STRATEGIES):
        _fail(f"selection_strategy must be one of {', '.join(SELECTION_STRATEGIES)}")
    _positive_int("negotiation_fanout", negotiation_fanout)


# -- P2P (production only) -----------------------------------------------------------------------------


def validate_p2p_for_production(p2p: P2PConfig | None) -> None:
    """Production dials real peers, so it needs at least one bootstrap node it can dial: a multiaddr
    with a transport address and, last, ``/p2p/<peer id>`` (the peer id is checked by the parser)."""
    if p2p is None:
        _fail("P2P configuration required for production mode")
    nodes: Any = p2p.bootstrap_nodes
    if not isinstance(nodes, tuple):
        _fail("P2P configuration must include bootstrap_nodes list")
    if not nodes:
        _fail("At least one bootstrap node required for production mode")
    for node in nodes:
        if not isinstance(node, str):
            _fail("Bootstrap nodes must be strings")
    for node in nodes:
        protocols = _parse_multiaddr(node)
        if protocols is None or len(protocols) < 2 or protocols[-1] != "p2p" or "p2p" in protocols[:-1]:
            _fail(f"Invalid bootstrap node format: {node}")

    _string_list("p2p.listen_addrs", p2p.listen_addrs)
    for addr in p2p.listen_addrs:
        if not _parse_multiaddr(addr):
            _fail(f"p2p.listen_addrs has an invalid multiaddr: {addr}")
    _boolean("p2p.enable_dht", p2p.enable_dht)
    _boolean("p2p.enable_mdns", p2p.enable_mdns)
    _positive_number("p2p.dial_timeout", p2p.dial_timeout)
    _positive_number("p2p.request_timeout", p2p.request_timeout)
    _non_negative_int("p2p.max_retries", p2p.max_retries)
    _positive_number("p2p.retry_delay", p2p.retry_delay)
    _positive_number("p2p.ping_interval", p2p.ping_interval)
    _positive_number("p2p.ping_timeout", p2p.ping_timeout)


# -- the parts validated in every mode -----------------------------------------------------------------


def validate_retry(config: RetryConfig) -> None:
    _non_negative_int("retry.max_retries", config.max_retries)
    _positive_number("retry.initial_delay", config.initial_delay)
    # A multiplier below 1 would shrink the delays: that is not backoff.
    if not (_is_number(config.multiplier) and config.multiplier >= 1):
        _fail("retry.multiplier must be a number of at least 1")
    _positive_number("retry.max_delay", config.max_delay)
    if config.max_delay < config.initial_delay:
        _fail("retry.max_delay must be at least retry.initial_delay")
    _fraction("retry.jitter", config.jitter)


def validate_timeouts(config: TimeoutConfig) -> None:
    if config.overall is not None and not (_is_number(config.overall) and config.overall > 0):
        _fail("timeouts.overall must be a positive number or None")
    for name in ("connect", "discovery", "negotiation", "first_token", "inter_token", "resume", "request"):
        _positive_number(f"timeouts.{name}", getattr(config, name))


def validate_discovery(config: DiscoveryConfig) -> None:
    _positive_number("discovery.cache_ttl", config.cache_ttl)
    _positive_int("discovery.max_nodes", config.max_nodes)
    _positive_number("discovery.timeout", config.timeout)
    _boolean("discovery.liveness_check", config.liveness_check)


def validate_chain(config: ChainConfig) -> None:
    rpc_url: Any = config.rpc_url
    if rpc_url is not None and not (
        isinstance(rpc_url, str) and rpc_url.lower().startswith(_URL_SCHEMES) and rpc_url.split("://", 1)[1]
    ):
        _fail("chain.rpc_url must be an http(s):// or ws(s):// URL")
    if config.chain_id is not None:
        _positive_int("chain.chain_id", config.chain_id)
    contracts: Any = config.contracts
    if not isinstance(contracts, Mapping):
        _fail("chain.contracts must be a mapping of contract names to addresses")
    for name, address in contracts.items():
        if not (isinstance(name, str) and name):
            _fail("chain.contracts must be a mapping of contract names to addresses")
        if not (isinstance(address, str) and _ADDRESS.fullmatch(address)):
            _fail(f"chain.contracts[{name!r}] must be a 0x-prefixed address of 40 hex digits")
    key: Any = config.private_key
    # The message must not quote the key: an error message ends up in logs.
    if key is not None and not (isinstance(key, str) and _PRIVATE_KEY.fullmatch(key)):
        _fail("chain.private_key must be 0x followed by 64 hex digits")
    _non_negative_int("chain.confirmations", config.confirmations)
    _non_empty_string("chain.payment_token", config.payment_token)
    _positive_number("chain.session_expiry", config.session_expiry)
    _boolean("chain.escrow", config.escrow)
    _positive_int("chain.jobs_per_session", config.jobs_per_session)
    if config.jobs_per_session > MAX_JOBS_PER_SESSION:
        _fail(f"chain.jobs_per_session must be at most {MAX_JOBS_PER_SESSION}")


def validate_recovery(config: RecoveryConfig) -> None:
    _boolean("recovery.failover", config.failover)
    _non_negative_int("recovery.max_failovers", config.max_failovers)
    _positive_number("recovery.blacklist_duration", config.blacklist_duration)
    _positive_number("recovery.recovery_data_ttl", config.recovery_data_ttl)
    for name in ("journal_path", "reliability_path"):
        path: Any = getattr(config, name)
        if path is not None and not (isinstance(path, str) and path):
            _fail(f"recovery.{name} must be a non-empty string or None")


def validate_mock_host(spec: MockHostSpec) -> None:
    _non_empty_string("mock.hosts.name", spec.name)
    _string_list("mock.hosts.models", spec.models, non_empty=True)
    if not all(spec.models):
        _fail("mock.hosts.models must not hold an empty model id")
    if len(set(spec.models)) != len(spec.models):
        _fail("mock.hosts.models must not list a model twice")
    # Escrow needs a positive deposit, so a mock host cannot be free.
    _positive_int("mock.hosts.price_per_token", spec.price_per_token)
    _non_negative_number("mock.hosts.latency_ms", spec.latency_ms)
    _positive_number("mock.hosts.tokens_per_second", spec.tokens_per_second)
    _fraction("mock.hosts.reliability", spec.reliability)
    _positive_int("mock.hosts.max_concurrent_jobs", spec.max_concurrent_jobs)
    reasons = tuple(r.value for r in RejectReason)
    if spec.reject is not None and not (isinstance(spec.reject, str) and spec.reject in reasons):
        _fail(f"mock.hosts.reject must be None or one of {', '.join(reasons)}")
    _optional_non_negative_int("mock.hosts.drop_at_token", spec.drop_at_token)
    _optional_non_negative_int("mock.hosts.error_at_token", spec.error_at_token)
    _optional_non_negative_int("mock.hosts.hang_at_token", spec.hang_at_token)
    serve: Any = spec.serve_model
    if serve is not None and not (isinstance(serve, str) and serve):
        _fail("mock.hosts.serve_model must be a non-empty model id or None")
    _non_negative_number("mock.hosts.first_token_delay", spec.first_token_delay)
    _non_negative_int("mock.hosts.overclaim_tokens", spec.overclaim_tokens)


def validate_mock(config: MockConfig) -> None:
    """The hosts validated themselves when they were built; here only what concerns them together."""
    if not _is_int(config.seed):
        _fail("mock.seed must be an integer")
    # A host's peer id and account derive from its name: two hosts with one name would be one peer.
    names = [host.name for host in config.hosts]
    for name in names:
        if names.count(name) > 1:
            _fail(f"mock.hosts has two hosts named {name!r}")
    _boolean("mock.realistic_pacing", config.realistic_pacing)
    _non_negative_int("mock.initial_balance", config.initial_balance)
    fee: Any = config.fee_basis_points
    if not (_is_int(fee) and 0 <= fee <= _MAX_FEE_BASIS_POINTS):
        _fail(f"mock.fee_basis_points must be an integer between 0 and {_MAX_FEE_BASIS_POINTS}")

"""A host ready to run: the seams a :class:`HostNode` needs, built from one set of options.

:class:`HostService` is what ``fabstir host run`` (and the devnet) starts: a libp2p node serving the DHT,
a backend (the built-in model, any OpenAI-compatible server, or the simulated generator for tests and
benchmarks), a ledger and a wallet, and the node itself. It owns all of them and closes them in order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .._exceptions import ConfigurationError, FabstirError
from ..backend import Backend, SimulatedBackend
from ..chain import HostRegistration, PaymentLedger, UnescrowedLedger
from ..protocol import PeerIdentity
from ..transport import PeerInfo, dialable_addrs, parse_peer_addr
from ._config import HostConfig, HostFaults
from ._node import HostNode

__all__ = ["BackendKind", "HostService", "HostServiceOptions", "load_identity"]

_log = logging.getLogger("fabstir.host")

#: A lost bootstrap peer is dialled again after this many seconds, doubling up to BOOTSTRAP_RETRY_MAX
#: while it stays unreachable.
BOOTSTRAP_RETRY_MIN = 5.0
BOOTSTRAP_RETRY_MAX = 60.0

BackendKind = Literal["builtin", "openai", "simulated"]
_SEED_BYTES = 32
_PRIVATE_KEY = re.compile(r"0x[0-9a-fA-F]{64}")


def load_identity(path: Path | None) -> PeerIdentity:
    """The node's libp2p identity: kept in ``path`` (hex seed, created with mode 0600 if missing) so the
    peer id survives restarts, or a fresh one each run when ``path`` is ``None``."""
    if path is None:
        return PeerIdentity()
    if path.exists():
        try:
            seed = bytes.fromhex(path.read_text().strip())
        except ValueError as exc:
            raise ConfigurationError(f"identity file {path} does not hold a hex seed") from exc
        if len(seed) != _SEED_BYTES:
            raise ConfigurationError(f"identity file {path} must hold {_SEED_BYTES} bytes of hex")
        return PeerIdentity(seed)
    seed = secrets.token_bytes(_SEED_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(seed.hex() + "\n")
    os.replace(tmp, path)  # never a half-written key
    return PeerIdentity(seed)


@dataclass(frozen=True, kw_only=True, slots=True)
class HostServiceOptions:
    """What ``fabstir host run`` takes.

    * ``backend``: ``"builtin"`` (SmolLM2 in an embedded llama.cpp server, ``threads`` threads),
      ``"openai"`` (the server at ``backend_url``; ``model_map`` maps marketplace ids to its model names,
      ``api_key`` is its bearer token) or ``"simulated"`` (deterministic text, ``token_delay`` s per token;
      for tests and benchmarks).
    * ``prices``: model → price per token (smallest unit of ``payment_token``); ``default_price`` applies
      to models without one.
    * ``escrow``: jobs are paid through the contracts at ``rpc_url`` (``contracts`` names
      ``PaymentSessions`` and ``HostRegistry``; ``private_key`` is the wallet, required), which the host
      checks before it generates and settles after each job; ``register_stake`` (wei) registers the host
      in the HostRegistry at start if it is not registered. ``escrow=False`` serves without payment
      (:class:`fabstir.chain.UnescrowedLedger`), explicitly.
    * ``announce_addrs``: the addresses clients are told to dial, instead of ``listen_addrs`` (needed
      when listening on ``0.0.0.0`` or behind a port forward).
    * ``settlement`` / ``session_idle_timeout``: how sessions that carry several jobs are settled and when
      an idle one is closed (:class:`~fabstir.host.HostConfig`).
    * ``identity_path`` keeps the peer id across restarts; ``private_key`` is the payment wallet
      (0x + 64 hex; a fresh one per run if absent).
    * ``faults``: scripted misbehaviour for fault tests (:class:`~fabstir.host.HostFaults`); the
      simulated backend also serves the ``serve_model`` fault's model, so its text is that model's.
    """

    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce_addrs: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    backend: BackendKind = "builtin"
    backend_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # secrets stay out of logs and tracebacks
    model_map: Mapping[str, str] = field(default_factory=dict)
    threads: int = 1
    token_delay: float = 0.0
    prices: Mapping[str, int] = field(default_factory=dict)
    default_price: int = 1_000_000_000
    payment_token: str = "ETH"
    max_concurrent_jobs: int = 2
    max_queue: int = 4
    max_tokens: int = 2048
    escrow: bool = True
    rpc_url: str | None = None
    contracts: Mapping[str, str] = field(default_factory=dict)
    register_stake: int | None = None
    chain_id: int | None = None
    identity_path: Path | None = None
    private_key: str | None = field(default=None, repr=False)
    dial_timeout: float = 5.0
    stream_timeout: float = 10.0
    # A host pings each connection every ping_interval: its peers are mostly clients, whose death it
    # also notices from a write or a receipt timeout, so it can afford a slower pace than the clients
    # (2 s); each ping costs CPU, times the number of peers.
    ping_interval: float = 10.0
    ping_timeout: float = 5.0
    # Connections that carried no stream for this long are closed (the DHT redials when it needs one):
    # otherwise a host keeps, and pings, a connection to every peer its DHT walks ever reached.
    idle_connection_timeout: float = 60.0
    record_ttl: float = 300.0
    record_refresh: float = 60.0
    provider_refresh: float = 600.0
    settlement: str = "per_job"
    session_idle_timeout: float = 120.0
    faults: HostFaults | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("builtin", "openai", "simulated"):
            raise ConfigurationError(f"backend must be builtin, openai or simulated, not {self.backend!r}")
        if self.backend == "openai":
            if not self.backend_url:
                raise ConfigurationError("the openai backend needs a backend URL (--backend-url)")
            if not self.model_map:
                raise ConfigurationError(
                    "the openai backend needs at least one model (--model ID or --model ID=SERVER_NAME)"
                )
        for addr in self.bootstrap:
            parse_peer_addr(addr)
        if type(self.default_price) is not int or self.default_price <= 0:
            raise ConfigurationError("the price per token must be a positive integer")
        for model, price in self.prices.items():
            if type(price) is not int or price <= 0:
                raise ConfigurationError(f"the price of {model} must be a positive integer, got {price!r}")
        if not (math.isfinite(self.token_delay) and self.token_delay >= 0):
            raise ConfigurationError("token_delay must be a non-negative number of seconds")
        for name in (
            "dial_timeout",
            "stream_timeout",
            "ping_interval",
            "ping_timeout",
            "idle_connection_timeout",
            "record_ttl",
            "record_refresh",
            "provider_refresh",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.record_refresh >= self.record_ttl:
            raise ConfigurationError(
                f"record_refresh ({self.record_refresh} s) must be shorter than "
                f"record_ttl ({self.record_ttl} s)"
            )
        if type(self.threads) is not int or self.threads < 1:
            raise ConfigurationError("threads must be a positive integer")
        key: Any = self.private_key
        if key is not None and not (isinstance(key, str) and _PRIVATE_KEY.fullmatch(key)):
            # never quote the key: the message ends up in logs
            raise ConfigurationError("the payment wallet key must be 0x followed by 64 hex digits")
        object.__setattr__(self, "model_map", MappingProxyType(dict(self.model_map)))
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        object.__setattr__(self, "contracts", MappingProxyType(dict(self.contracts)))
        if self.register_stake is not None and (
            type(self.register_stake) is not int or self.register_stake < 0
        ):
            raise ConfigurationError("the registration stake must be a non-negative integer (wei)")
        object.__setattr__(self, "listen_addrs", tuple(self.listen_addrs))
        object.__setattr__(self, "announce_addrs", tuple(self.announce_addrs))
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))

    def models(self) -> tuple[str, ...]:
        if self.backend == "builtin":
            from ..backend._llamacpp import BUILTIN_MODEL_ID

            return (BUILTIN_MODEL_ID,)
        if self.model_map:
            return tuple(self.model_map)
        return ("simulated-model",)

    def host_config(self) -> HostConfig:
        models = self.models()
        unknown = sorted(set(self.prices) - set(models))
        if unknown:
            raise ConfigurationError(f"a price is given for model(s) not served: {', '.join(unknown)}")
        return HostConfig(
            models=models,
            prices={m: {self.payment_token: self.prices.get(m, self.default_price)} for m in models},
            max_concurrent_jobs=self.max_concurrent_jobs,
            max_queue=self.max_queue,
            max_tokens=self.max_tokens,
            record_ttl=self.record_ttl,
            record_refresh=self.record_refresh,
            provider_refresh=self.provider_refresh,
            settlement=self.settlement,
            session_idle_timeout=self.session_idle_timeout,
            faults=self.faults,
        )


class HostService:
    """``async with HostService(options) as service:`` — a running host; ``service.node`` is its
    :class:`HostNode`, :meth:`describe` what a devnet file or a status line shows about it.
    ``process_fault`` is handed to the node (its kill/stop faults)."""

    def __init__(
        self, options: HostServiceOptions, *, process_fault: Callable[[str], None] | None = None
    ) -> None:
        if options.escrow:
            missing = [
                what
                for what, present in (
                    ("a chain RPC URL (--rpc-url)", options.rpc_url),
                    (
                        "the PaymentSessions address (--contract PaymentSessions=0x...)",
                        "PaymentSessions" in options.contracts,
                    ),
                    (
                        "the HostRegistry address (--contract HostRegistry=0x...)",
                        "HostRegistry" in options.contracts,
                    ),
                    ("the wallet key (--private-key or FABSTIR_HOST_PRIVATE_KEY)", options.private_key),
                )
                if not present
            ]
            if missing:
                raise ConfigurationError(
                    "a host paid through escrow needs " + ", ".join(missing) + "; or serve without payment "
                    "explicitly (--no-escrow)"
                )
        self.options = options
        self.config = options.host_config()
        self._process_fault = process_fault
        self._identity = load_identity(options.identity_path)
        self._account: LocalAccount = (
            Account.from_key(options.private_key) if options.private_key else Account.create()
        )
        self._transport: Any = None
        self._backend: Backend | None = None
        self._ledger: PaymentLedger | None = None
        self.registration: HostRegistration | None = None
        self.node: HostNode | None = None
        self._bootstrap_keeper: asyncio.Task[None] | None = None

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    def _build_backend(self) -> Backend:
        options = self.options
        if options.backend == "builtin":
            from ..backend._llamacpp import LlamaCppBackend

            return LlamaCppBackend(n_threads=options.threads, n_parallel=max(1, options.max_concurrent_jobs))
        if options.backend == "openai":
            from ..backend._openai import OpenAIBackend

            assert options.backend_url is not None
            return OpenAIBackend(options.backend_url, api_key=options.api_key, model_map=options.model_map)
        models = self.config.models
        serve_model = options.faults.serve_model if options.faults is not None else None
        if serve_model is not None and serve_model not in models:
            models = (*models, serve_model)
        return SimulatedBackend(models=models, token_delay=options.token_delay)

    async def start(self) -> None:
        """Starts the backend first (a host must not announce what it cannot serve), then libp2p, then
        the node. Anything started is closed again if a later step fails."""
        from ..transport._libp2p import Libp2pTransport

        options = self.options
        try:
            self._backend = backend = self._build_backend()
            start = getattr(backend, "start", None)
            if start is not None:
                await start()
            check = getattr(backend, "check", None)
            if check is not None:  # an OpenAI-compatible server: reachable, and takes our API key?
                await check()
            self._transport = transport = Libp2pTransport(
                self._identity,
                listen_addrs=options.listen_addrs,
                announce_addrs=options.announce_addrs,
                bootstrap=[parse_peer_addr(a) for a in options.bootstrap],
                dht_mode="server",
                dial_timeout=options.dial_timeout,
                stream_timeout=options.stream_timeout,
                ping_interval=options.ping_interval,
                idle_connection_timeout=options.idle_connection_timeout,
                ping_timeout=options.ping_timeout,
            )
            await transport.start()
            self._ledger = ledger = await self._open_ledger()
            self.node = HostNode(
                self.config,
                transport=transport,
                ledger=ledger,
                backend=backend,
                account=self._account,
                process_fault=self._process_fault,
            )
            await self.node.start()
            if options.bootstrap:
                self._bootstrap_keeper = asyncio.create_task(
                    self._keep_bootstrap_peers([parse_peer_addr(a) for a in options.bootstrap]),
                    name="fabstir-host-bootstrap",
                )
        except BaseException:
            await self.aclose()
            raise
        _log.info("host %s serving %s on %s", self.peer_id, ", ".join(self.config.models), self.addrs())

    async def _keep_bootstrap_peers(self, peers: list[PeerInfo]) -> None:
        """Dials again every bootstrap peer the host is not connected to (one that was down when the host
        started, or restarted since: it lost its DHT), and then announces the host again at once — or a
        host started before its bootstrap peer stays unfindable, and one whose bootstrap peer restarted
        too, until its next re-announcement."""
        transport, node = self._transport, self.node
        assert transport is not None
        assert node is not None
        delay = BOOTSTRAP_RETRY_MIN
        while True:
            await asyncio.sleep(delay)
            connected = set(transport.connected_peers())
            missing = [peer for peer in peers if peer.peer_id not in connected]
            if not missing:
                delay = BOOTSTRAP_RETRY_MIN
                continue
            back = 0
            for peer in missing:
                try:
                    await transport.bootstrap(peer)
                except FabstirError as exc:
                    _log.debug("bootstrap peer %s still unreachable: %s", peer.peer_id, exc)
                else:
                    _log.info("bootstrap peer %s reached again", peer.peer_id)
                    back += 1
            if back:
                node.reannounce()
            delay = BOOTSTRAP_RETRY_MIN if back == len(missing) else min(delay * 2, BOOTSTRAP_RETRY_MAX)

    async def _open_ledger(self) -> PaymentLedger:
        """The contracts (escrow), registered with ``register_stake`` if asked and not yet registered;
        or the ledger of jobs without payment."""
        options = self.options
        if not options.escrow:
            return UnescrowedLedger(chain_id=options.chain_id) if options.chain_id else UnescrowedLedger()
        from .._config import ChainConfig
        from ..chain._web3 import Web3Ledger

        ledger = await Web3Ledger.from_config(
            ChainConfig(
                rpc_url=options.rpc_url,
                chain_id=options.chain_id,
                contracts=dict(options.contracts),
                private_key=options.private_key,
            )
        )
        try:
            self.registration = await ledger.get_host(self._account.address)
            if self.registration is None and options.register_stake is not None:
                prices = tuple(self.config.prices[m].get("ETH", 0) for m in self.config.models)
                self.registration = await ledger.register_host(
                    self._account,
                    peer_id=self.peer_id,
                    models=self.config.models,
                    stake=options.register_stake,
                    prices=prices,
                )
        except BaseException:
            await ledger.aclose()
            raise
        return ledger

    async def aclose(self) -> None:
        """Stops the node (jobs in flight end and are settled), then the chain connection, libp2p and
        the backend."""
        keeper, self._bootstrap_keeper = self._bootstrap_keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        node, self.node = self.node, None
        if node is not None:
            await node.aclose()
        ledger, self._ledger = self._ledger, None
        closer = getattr(ledger, "aclose", None)
        if closer is not None:
            await closer()
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.aclose()

    async def __aenter__(self) -> HostService:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def addrs(self) -> list[str]:
        """The full multiaddrs (with ``/p2p/<peer id>``) others dial this host at."""
        return dialable_addrs(self._transport, self.peer_id)

    def describe(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addrs": self.addrs(),
            "models": list(self.config.models),
            "prices": {m: dict(p) for m, p in self.config.prices.items()},
            "payment_address": self._account.address,
            "backend": self.options.backend,
            "escrow": self.options.escrow,
            "pid": os.getpid(),
        }

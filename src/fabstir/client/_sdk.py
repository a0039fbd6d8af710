"""``FabstirSDK``: the asyncio client. It wires the core (discovery, selection, negotiation, job runner,
payments, events) to the seams chosen by the mode: in mock mode the in-memory network, ledger and
simulated hosts; in production libp2p, the chain and real hosts. The logic is the same in both."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from eth_account.signers.local import LocalAccount

from .._config import SDKConfig
from .._events import Event, EventBus, EventName
from .._exceptions import (
    CancelledError,
    ConfigurationError,
    DiscoveryError,
    ErrorCode,
    FabstirError,
    HostError,
    InvalidStateError,
    JobNotFoundError,
    NoNodesAcceptedError,
    NotConnectedError,
    PaymentError,
    RefundNotAllowedError,
    RemoteProtocolError,
    TimeoutError,
    TransportError,
    ValidationError,
)
from .._models import (
    ChainTransaction,
    CostBreakdown,
    CostEstimate,
    FinishReason,
    JobDetails,
    JobRecoveryInfo,
    JobRequest,
    JobStatus,
    ModelInfo,
    NodeInfo,
    PaymentDetails,
    PaymentStatus,
    RecoverySession,
    StreamSummary,
    Token,
)
from ..chain import ChainReorg, PaymentLedger, SessionInfo
from ..core._channel import FrameChannel
from ..core._client_job import JobOutcome, JobRunner
from ..core._discovery import DiscoveryFilter, NodeDiscovery
from ..core._negotiation import OfferInHand, Rejection, decline, negotiate
from ..core._pricing import estimate_cost, max_cost
from ..core._reliability import FailureVerdict, ReliabilityTracker
from ..core._retry import backoff_delay, should_retry
from ..core._selection import SelectionStrategy, rank_nodes
from ..core._stream import ResponseStream, TokenBuffer
from ..protocol import PROTOCOL_ID, Request, Role
from ..transport import PeerEvent, PeerEventKind, PeerInfo, Transport, parse_peer_addr
from ._chain_follow import ChainFollower, SessionState
from ._journal import JobJournal, JournalSession
from ._recorder import JournalRecorder, request_from_journal, session_from_journal
from ._sessions import PooledSession, SessionPool

__all__ = ["FabstirSDK", "JobHandle"]

_log = logging.getLogger("fabstir.client")
_AGENT = "fabstir-llm-sdk/0.1.0 (python)"
_MAX_PROMPT_CHARS = 256 * 1024


@dataclass(slots=True)
class _Job:
    """Everything the SDK knows about one job (internal, mutable)."""

    job_id: int
    key: str  # the job id on the wire
    request: JobRequest
    status: JobStatus
    created_at: float
    updated_at: float
    buffer: TokenBuffer
    host: str | None = None
    price_per_token: int | None = None
    session: SessionInfo | None = None
    runner: JobRunner | None = None
    task: asyncio.Task[None] | None = None
    outcome: JobOutcome | None = None
    error: FabstirError | None = None
    payment_status: PaymentStatus = PaymentStatus.NONE
    refunded: int = 0
    settled: int = 0
    cancel_requested: bool = False
    rejections: list[Rejection] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    settlement: asyncio.Task[None] | None = None
    base_amount: int = 0  # the session's cumulative amount before this job (sessions carrying several jobs)
    closes_session: bool = True  # the host closes the session after this job (its last, or only, job)
    refund_reported: bool = False  # payment:refunded was emitted
    #: the hosts that failed this job before the current one, oldest first: each a record of that host's
    #: part (host, session, runner, payment), with ``error`` saying how it failed
    legs: list[_Job] = field(default_factory=list)
    #: the amount signed last when there is no runner (a job part read back from the journal)
    signed_hint: int | None = None


#: The session events whose transactions get_job_transactions lists, and what each did.
_EVENT_TRANSACTIONS = {
    "Settled": "settling a receipt",
    "SessionClosed": "closing a session",
    "Reclaimed": "reclaiming a session",
}
#: Seconds between the chain follower's polls of the contract's logs.
_CHAIN_POLL_INTERVAL = 1.0
#: How long request_refund waits for a host to close the session of a failed or cancelled job.
_REFUND_PATIENCE = 5.0


def _fee(ledger: PaymentLedger, cumulative: int) -> int:
    """The treasury's share of a session that settled ``cumulative`` (rounded down on the running total,
    as the contract does)."""
    return cumulative * ledger.fee_basis_points // 10_000


def _share(settled: int, end: int, base: int) -> int:
    """A job's part of a session that settled ``settled`` in all: what its receipts added (from ``base``
    to ``end``), as far as it was settled."""
    return max(0, min(settled, end) - base)


@dataclass(frozen=True, slots=True)
class JobHandle:
    """What ``submit_job`` returns: the job id and, with ``stream=True``, its response stream."""

    job_id: int
    stream: ResponseStream | None = None

    def __int__(self) -> int:
        return self.job_id

    def __index__(self) -> int:
        return self.job_id


JobRef = int | JobHandle


class FabstirSDK:
    """The client SDK. ``async with FabstirSDK() as sdk:`` (mock mode by default) or
    ``FabstirSDK(mode="production", p2p={...}, chain={...})``.

    Keyword arguments build an :class:`SDKConfig` (validated now, with clear
    :class:`ConfigurationError`\\ s); or pass a ready ``SDKConfig``. ``marketplace=`` shares one mock
    marketplace between several SDK instances (mock mode only).
    """

    def __init__(self, config: SDKConfig | None = None, /, *, marketplace: Any = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ConfigurationError("pass either an SDKConfig or keyword options, not both")
        self.config: SDKConfig = config if config is not None else SDKConfig.from_kwargs(**kwargs)
        if marketplace is not None and self.config.mode != "mock":
            raise ConfigurationError("a marketplace can only be shared in mock mode")
        self._shared_marketplace = marketplace
        self._marketplace: Any = None
        self._transport: Transport | None = None
        self._ledger: PaymentLedger | None = None
        self._account: LocalAccount | None = None
        self._events = EventBus()
        self._reliability = ReliabilityTracker(
            time.time, blacklist_duration=self.config.recovery.blacklist_duration
        )
        self._recorder: JournalRecorder | None = None
        self._session_pool = SessionPool(self.config.chain.jobs_per_session)
        self._follower: ChainFollower | None = None
        self._discovery: NodeDiscovery | None = None
        self._jobs: dict[int, _Job] = {}
        self._next_job_id = 1
        self._rng = random.Random(self.config.mock.seed) if self.config.mode == "mock" else random.Random()
        self._connected = False
        self._connected_at: float | None = None
        self._peer_unsubscribe: Callable[[], None] | None = None
        self._counters: dict[str, int] = {
            "jobs_submitted": 0,
            "jobs_completed": 0,
            "jobs_failed": 0,
            "jobs_cancelled": 0,
            "tokens_received": 0,
            "retries": 0,
            "failovers": 0,
        }

    @classmethod
    def from_devnet(cls, directory: str | os.PathLike[str] | None = None, **overrides: Any) -> FabstirSDK:
        """An SDK in production mode on the devnet running on this machine (``fabstir devnet up``), read
        from its devnet file in ``directory`` (default: ``$FABSTIR_DEVNET_DIR`` or ``~/.fabstir/devnet``).
        Keyword ``overrides`` are SDK options; mappings (``p2p={...}``) are merged into the devnet's."""
        from ..devnet import read_devnet_file

        devnet = read_devnet_file(Path(directory) if directory is not None else None)
        options: dict[str, Any] = {
            "mode": "production",
            "p2p": {"bootstrap_nodes": list(devnet.bootstrap_nodes)},
            "chain": {"escrow": devnet.escrow, "chain_id": devnet.chain_id},
        }
        if devnet.escrow:  # the devnet's chain, its contracts and the test account kept for clients
            options["chain"].update(
                rpc_url=devnet.rpc_url, contracts=dict(devnet.contracts), private_key=devnet.client_key
            )
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(options.get(key), dict):
                options[key] = {**options[key], **value}
            else:
                options[key] = value
        return cls(**options)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """Starts the mode's seams (idempotent). Emits ``connected``."""
        if self._connected:
            return
        self._open_state()  # first: the hosts' priors of a mock market go into the loaded tracker
        try:
            if self.config.mode == "mock":
                await self._connect_mock()
            else:
                await self._connect_production()
        except BaseException:
            self._close_state()
            raise
        assert self._transport is not None
        self._peer_unsubscribe = self._transport.add_peer_listener(self._on_peer_event)
        self._discovery = NodeDiscovery(
            self._transport,
            self._reliability,
            cache_ttl=self.config.discovery.cache_ttl,
            max_nodes=self.config.discovery.max_nodes,
            liveness_check=self.config.discovery.liveness_check,
            probe=self._mock_probe if self.config.mode == "mock" else None,
        )
        self._connected = True
        self._connected_at = time.time()
        self._events.emit(EventName.CONNECTED, mode=self.config.mode, address=self.get_address())

    async def _connect_mock(self) -> None:
        from ..mock import MockMarketplace

        market = self._shared_marketplace or MockMarketplace(self.config.mock)
        await market.start()
        self._marketplace = market
        for host in market.hosts:
            self._reliability.set_prior(host.peer_id, host.spec.reliability)
        index = market.register_client()
        self._account = market.client_account(index)
        self._ledger = market.ledger
        transport = market.create_client_transport(index)
        await transport.start()
        self._transport = transport

    async def _connect_production(self) -> None:
        """Starts a libp2p node (DHT client) and dials the bootstrap peers; the ledger is chosen by
        ``chain.escrow``: the contracts at ``chain.rpc_url`` (paid with ``chain.private_key``), or jobs
        without payment (``escrow=False``, explicitly)."""
        chain = self.config.chain
        if chain.escrow and (chain.rpc_url is None or chain.private_key is None):
            raise ConfigurationError(
                "payments need chain.rpc_url, chain.contracts (PaymentSessions, HostRegistry) and "
                "chain.private_key; to run production jobs without payment, pass chain={'escrow': False}",
            )
        try:
            from ..transport._libp2p import Libp2pTransport
        except ImportError as exc:  # the p2p extra is not installed
            raise ConfigurationError(
                f"production mode needs libp2p: pip install 'fabstir-llm-sdk[p2p]' ({exc})"
            ) from exc
        from eth_account import Account

        from ..chain import UnescrowedLedger
        from ..protocol import PeerIdentity

        p2p = self.config.p2p
        assert p2p is not None  # validated with the config
        assert p2p.bootstrap_nodes is not None
        if chain.escrow:
            from ..chain._web3 import Web3Ledger

            ledger = await Web3Ledger.from_config(chain)
            self._ledger = ledger
            self._follower = ChainFollower(
                ledger.session_watcher(
                    confirmations=max(1, chain.confirmations), poll_interval=_CHAIN_POLL_INTERVAL
                ),
                on_state=self._on_chain_state,
                on_reorg=self._on_chain_reorg,
            )
            self._follower.start()
        else:
            self._ledger = UnescrowedLedger(chain_id=chain.chain_id) if chain.chain_id else UnescrowedLedger()
        self._account = Account.from_key(chain.private_key) if chain.private_key else Account.create()
        transport = Libp2pTransport(
            PeerIdentity(),
            listen_addrs=p2p.listen_addrs,
            dht_mode="client",
            dial_timeout=min(p2p.dial_timeout, self.config.timeouts.connect),
            stream_timeout=p2p.request_timeout,
            ping_interval=p2p.ping_interval,
            ping_timeout=p2p.ping_timeout,
        )
        await transport.start()
        self._transport = transport
        addrs = list(transport.listen_addrs)
        self._events.emit(EventName.P2P_STARTED, peer_id=transport.peer_id, addrs=addrs)
        peers = [parse_peer_addr(addr) for addr in p2p.bootstrap_nodes]
        reached = await asyncio.gather(*(self._dial_bootstrap(transport, peer) for peer in peers))
        if not any(reached):
            _log.warning("no bootstrap peer answered: discovery will find nothing until one does")

    async def _dial_bootstrap(self, transport: Any, peer: PeerInfo) -> bool:
        """Dials one bootstrap peer with exponential backoff (``p2p.max_retries`` retries from
        ``p2p.retry_delay``); reports each retry and the final failure as events, never raises."""
        p2p = self.config.p2p
        assert p2p is not None
        attempts = 1 + p2p.max_retries
        for attempt in range(1, attempts + 1):
            try:
                await transport.bootstrap(peer)
                return True
            except FabstirError as exc:
                if attempt == attempts:
                    self._events.emit(
                        EventName.P2P_CONNECTION_FAILED,
                        node_id=peer.peer_id,
                        attempts=attempt,
                        error=str(exc),
                    )
                    return False
                delay = p2p.retry_delay * 2 ** (attempt - 1)
                self._events.emit(
                    EventName.P2P_CONNECTION_RETRY,
                    node_id=peer.peer_id,
                    attempt=attempt,
                    delay=delay,
                    error=str(exc),
                )
                await asyncio.sleep(delay)
        return False

    async def _mock_probe(self, peer: PeerInfo) -> float:
        assert self._transport is not None
        assert self._marketplace is not None
        rtt = await self._transport.ping(peer)  # a real liveness check over the in-memory network
        simulated = self._marketplace.simulated_latency_ms(peer.peer_id)
        return simulated / 1000.0 if simulated is not None else rtt

    async def transition_mode(self, mode: str, **changes: Any) -> None:
        """Switches between ``"mock"`` and ``"production"`` (``changes`` as for :meth:`SDKConfig.evolve`,
        e.g. ``p2p={"bootstrap_nodes": [...]}``), reconnecting if connected.

        Kept: the finished jobs (details, results, payments as last seen), event subscriptions (callbacks
        and iterators), counters, host reliability statistics, the journal. Not kept: what belongs to a
        mode — its network, ledger, account, discovery cache and open payment sessions. Raises
        :class:`InvalidStateError` while jobs are running (wait for them or cancel them first), and the
        configuration errors of the new mode (then nothing changed)."""
        if mode not in ("mock", "production"):
            raise ConfigurationError(f'Invalid SDK mode: {mode}. Must be "mock" or "production"')
        running = [j.job_id for j in self._jobs.values() if not j.status.is_terminal]
        if running:
            raise InvalidStateError(
                f"cannot switch modes while jobs {running} are running; wait for them or cancel them",
                context={"running": running},
            )
        config = self.config.evolve(mode=mode, **changes)  # validated before anything is torn down
        was_connected = self._connected
        previous = self.config.mode
        await self._disconnect(end_iterators=False)
        self.config = config
        self._transport = None
        self._ledger = None
        self._account = None
        self._marketplace = None
        self._discovery = None
        self._follower = None
        self._session_pool = SessionPool(config.chain.jobs_per_session)
        self._rng = random.Random(config.mock.seed) if config.mode == "mock" else random.Random()
        _log.info("switched from %s to %s mode", previous, config.mode)
        if was_connected:
            await self.connect()

    async def disconnect(self) -> None:
        """Cancels running jobs (hosts are paid for what they delivered), stops the seams. Idempotent."""
        await self._disconnect(end_iterators=True)

    async def _disconnect(self, *, end_iterators: bool) -> None:
        if not self._connected:
            return
        self._connected = False
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for job in self._jobs.values():
            if job.runner is not None and not job.status.is_terminal:
                job.cancel_requested = True
                await job.runner.cancel("the client is disconnecting")
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        watchers = [
            leg.settlement
            for j in self._jobs.values()
            for leg in (*j.legs, j)
            if leg.settlement is not None and not leg.settlement.done()
        ]
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._peer_unsubscribe is not None:
            self._peer_unsubscribe()
        if self._follower is not None:
            await self._follower.aclose()
            self._follower = None
        closer = getattr(self._ledger, "aclose", None)
        if self.config.mode == "production" and closer is not None:
            await closer()  # the chain connection (a mock marketplace's ledger belongs to the marketplace)
        if self._transport is not None:
            await self._transport.aclose()
            if self.config.mode == "production":
                self._events.emit(EventName.P2P_STOPPED, peer_id=self._transport.peer_id)
        if self._marketplace is not None and self._shared_marketplace is None:
            await self._marketplace.aclose()
        self._close_state()
        self._events.emit(EventName.DISCONNECTED, mode=self.config.mode)
        if end_iterators:
            self._events.close()

    async def __aenter__(self) -> FabstirSDK:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    # ------------------------------------------------------------------------------------------ status
    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def mode(self) -> str:
        return self.config.mode

    def is_p2p_enabled(self) -> bool:
        """True in production mode (real libp2p); mock mode simulates the network in-process."""
        return self.config.mode == "production"

    def is_p2p_connected(self) -> bool:
        return self.is_p2p_enabled() and self._connected and bool(self._require_transport().connected_peers())

    def get_p2p_status(self) -> dict[str, Any]:
        transport = self._transport
        return {
            "enabled": self.is_p2p_enabled(),
            "connected": self._connected,
            "peer_id": transport.peer_id if transport else None,
            "listen_addrs": list(transport.listen_addrs) if transport else [],
            "connected_peers": len(transport.connected_peers()) if transport else 0,
        }

    def get_p2p_metrics(self) -> dict[str, Any]:
        transport = self._transport
        return {
            "connected_peers": len(transport.connected_peers()) if transport else 0,
            "uptime": (time.time() - self._connected_at) if self._connected_at and self._connected else 0.0,
            **{k: v for k, v in self._counters.items() if k in ("retries", "failovers")},
        }

    def get_address(self) -> str | None:
        return self._account.address if self._account is not None else None

    def get_gas_spent(self) -> int | None:
        """Wei this SDK's account spent on gas through this connection (opening sessions, reclaims), or
        ``None`` where there is no chain (mock mode, jobs without escrow)."""
        spent = getattr(self._ledger, "gas_spent", None)
        if spent is None or self._account is None:
            return None
        return int(spent(self._account.address))

    def get_chain_id(self) -> int | None:
        return self._ledger.chain_id if self._ledger is not None else None

    # ------------------------------------------------------------------------------------------ events
    def on(self, name: str, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Calls ``callback(event)`` for each event named ``name`` (``"*"``: all); returns unsubscribe."""
        return self._events.on(name, callback)

    def events(self, *names: str) -> AsyncIterator[Event]:
        """Async iterator over events (all, or those named), until the SDK disconnects."""
        return self._events.iterate(names or None)

    def on_job_status_change(
        self, job: JobRef, callback: Callable[[JobStatus], object]
    ) -> Callable[[], None]:
        job_id = self._job(job).job_id

        def relay(event: Event) -> None:
            if event.job_id == job_id:
                callback(JobStatus(event.data["status"]))

        return self._events.on(EventName.JOB_STATUS, relay)

    def stream_job_events(self, job: JobRef, callback: Callable[[Event], object]) -> Callable[[], None]:
        job_id = self._job(job).job_id

        def relay(event: Event) -> None:
            if event.job_id == job_id:
                callback(event)

        return self._events.on("*", relay)

    def on_payment_event(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        unsubscribers = [
            self._events.on(name, callback)
            for name in (
                EventName.PAYMENT_ESCROWED,
                EventName.PAYMENT_RELEASED,
                EventName.PAYMENT_REFUNDED,
                EventName.PAYMENT_DISPUTED,
            )
        ]

        def unsubscribe() -> None:
            for undo in unsubscribers:
                undo()

        return unsubscribe

    # ------------------------------------------------------------------------------------------ models, cost
    async def get_models(self) -> list[ModelInfo]:
        """Models offered by the live hosts."""
        nodes = await self.discover_nodes()
        ids = sorted({m for n in nodes for m in n.capabilities.models})
        return [ModelInfo(id=m, name=m) for m in ids]

    async def estimate_job_cost(self, request: JobRequest | None = None, **kwargs: Any) -> CostEstimate:
        """The TypeScript SDK's estimate (ceil(len(prompt)/4) + floor(0.8 × max_tokens) tokens) at the
        lowest price among live hosts serving the model."""
        req = self._build_request(request, kwargs)
        nodes = await self.discover_nodes(model=req.model)
        prices = [
            p for n in nodes if (p := n.capabilities.price_for(req.model, req.payment_token)) is not None
        ]
        if not prices:
            raise DiscoveryError(f"no live host serves model {req.model}")
        return estimate_cost(req.prompt, req.max_tokens, min(prices), req.payment_token)

    # ------------------------------------------------------------------------------------------ discovery
    async def discover_nodes(
        self,
        *,
        model: str | None = None,
        max_price: int | None = None,
        max_latency_ms: float | None = None,
        min_reputation: float | None = None,
        exclude: Sequence[str] = (),
        preferred: Sequence[str] = (),
        payment_token: str | None = None,
        force_refresh: bool = False,
    ) -> list[NodeInfo]:
        """Live hosts matching the filters, best first (by the configured selection strategy)."""
        discovery = self._require_discovery()
        token = payment_token or self.config.chain.payment_token
        self._events.emit(EventName.DISCOVERY_START, model=model)
        try:
            async with asyncio.timeout(self.config.discovery.timeout):
                nodes = await discovery.discover(
                    DiscoveryFilter(
                        model=model,
                        payment_token=token,
                        max_price=max_price,
                        max_latency_ms=max_latency_ms,
                        min_reputation=min_reputation,
                        exclude=frozenset(exclude),
                    ),
                    force_refresh=force_refresh,
                )
        except builtins.TimeoutError as exc:
            raise TimeoutError(
                f"discovery took longer than {self.config.discovery.timeout:g} s", phase="discovery"
            ) from exc
        ranked = rank_nodes(
            nodes,
            strategy=self.config.selection_strategy,
            model=model or "",
            payment_token=token,
            preferred=preferred,
            rng=self._rng,
        )
        self._events.emit(EventName.NODES_DISCOVERED, count=len(ranked), peers=[n.peer_id for n in ranked])
        self._events.emit(EventName.DISCOVERY_COMPLETE, model=model, count=len(ranked))
        return ranked

    async def select_best_node(self, *, model: str, strategy: str | None = None, **filters: Any) -> NodeInfo:
        nodes = await self.discover_nodes(model=model, **filters)
        if not nodes:
            raise DiscoveryError(f"no live host serves model {model}")
        if strategy is not None:
            nodes = rank_nodes(
                nodes,
                strategy=SelectionStrategy(strategy),
                model=model,
                payment_token=filters.get("payment_token") or self.config.chain.payment_token,
                rng=self._rng,
            )
        return nodes[0]

    # ------------------------------------------------------------------------------------------ negotiation
    async def negotiate_with_nodes(
        self, request: JobRequest | None = None, *, nodes: Sequence[NodeInfo] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Asks the top K hosts (``negotiation_fanout``) for offers and declines them all: a price check.
        Returns one entry per host: ``{"node_id", "accepted", "price_per_token", "estimated_time_ms",
        "reason", "message"}``."""
        req = self._build_request(request, kwargs)
        candidates = list(nodes) if nodes is not None else await self.discover_nodes(model=req.model)
        offers, rejections = await self._negotiate(None, req, candidates[: self.config.negotiation_fanout])
        for offer in offers:
            await decline(offer.channel)
        results: list[dict[str, Any]] = [
            {
                "node_id": o.node.peer_id,
                "accepted": True,
                "price_per_token": o.offer.price_per_token,
                "estimated_time_ms": o.offer.estimated_time_ms,
                "reason": None,
                "message": "",
            }
            for o in offers
        ]
        results += [
            {
                "node_id": r.node.peer_id,
                "accepted": False,
                "price_per_token": None,
                "estimated_time_ms": None,
                "reason": r.reason,
                "message": r.message,
            }
            for r in rejections
        ]
        return results

    async def _negotiate(
        self,
        job: _Job | None,
        req: JobRequest,
        nodes: Sequence[NodeInfo],
        *,
        continuation: str = "",
        first: int = 0,
    ) -> tuple[list[OfferInHand], list[Rejection]]:
        job_id = job.job_id if job else None
        key = job.key if job else self._new_key()
        self._events.emit(EventName.NEGOTIATION_START, job_id=job_id, nodes=[n.peer_id for n in nodes])
        frame = Request(
            job_id=key,
            model=req.model,
            prompt=req.prompt,
            max_tokens=req.max_tokens - first,
            client_address=self._require_account().address,
            payment_token=req.payment_token,
            temperature=req.temperature,
            seed=req.seed,
            system=req.system,
            max_price_per_token=req.max_price_per_token,
            continuation=continuation,
            first_index=first,
        )
        offers, rejections = await negotiate(
            self._require_transport(),
            nodes,
            frame,
            agent=_AGENT,
            chain_id=self._require_ledger().chain_id,
            timeout=self.config.timeouts.negotiation,
        )
        for offer in offers:
            self._events.emit(
                EventName.NEGOTIATION_OFFER,
                job_id=job_id,
                node_id=offer.node.peer_id,
                accepted=True,
                price_per_token=offer.offer.price_per_token,
                estimated_time_ms=offer.offer.estimated_time_ms,
            )
        for rejection in rejections:
            self._events.emit(
                EventName.NEGOTIATION_OFFER,
                job_id=job_id,
                node_id=rejection.node.peer_id,
                accepted=False,
                reason=rejection.reason,
                message=rejection.message,
            )
        self._events.emit(
            EventName.NEGOTIATION_COMPLETE, job_id=job_id, offers=len(offers), rejections=len(rejections)
        )
        return offers, rejections

    # ------------------------------------------------------------------------------------------ jobs
    async def submit_job(
        self,
        request: JobRequest | None = None,
        *,
        stream: bool = False,
        node: str | None = None,
        exclude: Sequence[str] = (),
        **kwargs: Any,
    ) -> JobHandle:
        """Validates the request and starts the job in the background: discovery → negotiation → escrow →
        streaming → settlement. Returns at once with the job id (and, with ``stream=True``, a
        :class:`ResponseStream` that owns the job: closing it early cancels the job). ``node`` prefers a
        host; ``exclude`` rules hosts out."""
        req = self._build_request(request, kwargs)
        return self._submit(req, stream=stream, node=node, exclude=exclude, deadline=None)

    def _submit(
        self,
        req: JobRequest,
        *,
        stream: bool = False,
        node: str | None = None,
        exclude: Sequence[str] = (),
        deadline: float | None,
    ) -> JobHandle:
        """Starts a validated job; ``deadline`` (event-loop time) caps its overall deadline (retries)."""
        self._require_connected()
        now = time.time()
        job = _Job(
            job_id=self._next_job_id,
            key=self._new_key(),
            request=req,
            status=JobStatus.POSTED,
            created_at=now,
            updated_at=now,
            buffer=TokenBuffer(),
        )
        self._next_job_id += 1
        self._jobs[job.job_id] = job
        if self._recorder is not None:
            self._recorder.job_submitted(
                job.job_id, job.key, req, job.status.value, job.created_at, self.get_address()
            )
        self._counters["jobs_submitted"] += 1
        self._events.emit(
            EventName.JOB_SUBMITTED, job_id=job.job_id, model=req.model, max_tokens=req.max_tokens
        )
        self._emit_status(job)
        job.task = asyncio.create_task(
            self._run_job(job, preferred=node, exclude=exclude, deadline=deadline),
            name=f"fabstir-job-{job.job_id}",
        )
        response = (
            ResponseStream(job.job_id, job.buffer, on_close=lambda: self.cancel_job(job.job_id))
            if stream
            else None
        )
        return JobHandle(job.job_id, response)

    async def submit_job_with_negotiation(
        self, request: JobRequest | None = None, **kwargs: Any
    ) -> JobHandle:
        """Discover → negotiate → pay → run, and wait for the result. Raises :class:`NoNodesAcceptedError`
        (``No nodes accepted the job``) when every host declined."""
        handle = await self.submit_job(request, **kwargs)
        await self.wait_for_job_completion(handle.job_id)
        return handle

    async def submit_job_with_retry(
        self,
        request: JobRequest | None = None,
        *,
        should_retry_hook: Callable[[FabstirError, int], bool] | None = None,
        on_retry: Callable[[FabstirError, int, float], object] | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Like :meth:`submit_job_with_negotiation`, retrying retryable failures with exponential backoff
        (``retry`` config) inside one overall deadline shared by every attempt; hosts that failed are
        excluded from later attempts. ``should_retry_hook(error, attempt)`` can veto a retry;
        ``on_retry(error, attempt, delay)`` is told of each. Cancelling the call cancels the job."""
        req = self._build_request(request, kwargs)
        loop = asyncio.get_running_loop()
        overall = self.config.timeouts.overall
        deadline = None if overall is None else loop.time() + overall  # one deadline for every attempt
        attempt = 0
        failed_hosts: list[str] = []
        while True:
            attempt += 1
            handle = self._submit(req, exclude=failed_hosts, deadline=deadline)
            try:
                await self.wait_for_job_completion(handle.job_id)
                return handle
            except asyncio.CancelledError:
                # the caller gave up: so does the job (its host is paid for what it delivered)
                await asyncio.shield(self.cancel_job(handle.job_id))
                raise
            except FabstirError as error:
                record = self._jobs[handle.job_id]
                # hosts that failed (also those a failover left behind) are not asked again in this call
                failed_hosts.extend(h for h in (*(leg.host for leg in record.legs), record.host) if h)
                remaining = None if deadline is None else deadline - loop.time()
                allowed = should_retry(error, attempt, self.config.retry, remaining)
                if should_retry_hook is not None:
                    allowed = allowed and should_retry_hook(error, attempt)
                if not allowed:
                    raise
                delay = backoff_delay(attempt, self.config.retry, self._rng)
                if remaining is not None:
                    delay = min(delay, remaining)
                self._counters["retries"] += 1
                if on_retry is not None:
                    on_retry(error, attempt, delay)
                await asyncio.sleep(delay)

    async def get_job_status(self, job: JobRef) -> JobStatus:
        return self._job(job).status

    async def get_job_details(self, job: JobRef) -> JobDetails:
        record = self._job(job)
        return JobDetails(
            job_id=record.job_id,
            status=record.status,
            request=record.request,
            host=record.host,
            created_at=record.created_at,
            updated_at=record.updated_at,
            price_per_token=record.price_per_token,
            tokens_generated=len(record.buffer.tokens),
            result=record.buffer.text if record.status is JobStatus.COMPLETED else None,
            error=str(record.error) if record.error else None,
            extra={
                "session_id": record.session.session_id if record.session else None,
                "usage_mismatch": record.outcome.usage_mismatch if record.outcome else False,
                "finish_reason": record.outcome.finish_reason.value if record.outcome else None,
                "rejections": [(r.node.peer_id, r.reason) for r in record.rejections],
            },
        )

    async def get_job_result(self, job: JobRef) -> str:
        """The completed job's text. Raises the job's error if it failed, :class:`InvalidStateError` if it
        has not finished."""
        record = self._job(job)
        if record.error is not None and record.status is JobStatus.FAILED:
            raise record.error
        if record.status is not JobStatus.COMPLETED and record.status is not JobStatus.CANCELLED:
            raise InvalidStateError(f"Job {record.job_id} has not completed", job_id=record.job_id)
        return record.buffer.text

    async def wait_for_job_completion(self, job: JobRef, timeout: float | None = None) -> JobDetails:
        """Waits until the job ends. Raises the job's error if it failed, :class:`TimeoutError` after
        ``timeout`` seconds (the job keeps running)."""
        record = self._job(job)
        try:
            async with asyncio.timeout(timeout):
                await record.done.wait()
        except builtins.TimeoutError as exc:
            raise TimeoutError(
                f"Job {record.job_id} did not complete within {timeout:g} s",
                phase="wait",
                job_id=record.job_id,
            ) from exc
        if record.status is JobStatus.FAILED and record.error is not None:
            raise record.error
        return await self.get_job_details(record.job_id)

    async def cancel_job(self, job: JobRef) -> None:
        """Stops the job: the host ends it, is paid for the tokens delivered, the rest is refunded."""
        record = self._job(job)
        if record.status.is_terminal:
            return
        record.cancel_requested = True
        if record.runner is not None:
            await record.runner.cancel()
        elif record.task is not None:
            record.task.cancel()
            await asyncio.gather(record.task, return_exceptions=True)
            if not record.done.is_set():  # cancelled before it ever ran
                error = CancelledError(f"Job {record.job_id} was cancelled", job_id=record.job_id)
                self._fail(record, error, cancelled=True)
        await record.done.wait()

    async def get_job_host(self, job: JobRef) -> str | None:
        return self._job(job).host

    def create_response_stream(self, job: JobRef, resume_from: int | None = None) -> ResponseStream:
        """A stream over the job's tokens, from ``resume_from`` (default: the first token). Returns at
        once; several streams may read one job. This stream does not own the job: closing it leaves the
        job running."""
        record = self._job(job)
        return ResponseStream(record.job_id, record.buffer, resume_from=resume_from or 0)

    async def resume_response_stream(self, job: JobRef, resume_from: int | None = None) -> ResponseStream:
        """A stream over the job's tokens from ``resume_from`` — also for a job an earlier process ran,
        read back from the journal (``recovery.journal_path``): its delivered tokens come first, and an
        unfinished job goes on, on a host that continues the same completion (as after a failover). The
        returned stream does not own the job. Raises :class:`JobNotFoundError` for an unknown job."""
        job_id = int(job)
        if job_id not in self._jobs:
            self._require_connected()
            self._restore(job_id)
        return self.create_response_stream(job_id, resume_from)

    async def get_job_recovery_info(self, job: JobRef) -> JobRecoveryInfo:
        """What is known about a job — from this process, or from the journal for a job an earlier
        process ran: status, the text delivered, whether it can be resumed, and each payment session with
        what it holds (``reclaimable`` once it is open past its expiry). Raises :class:`JobNotFoundError`."""
        job_id = int(job)
        now = await self._require_ledger().timestamp() if self._ledger is not None else time.time()
        record = self._jobs.get(job_id)
        if record is None:
            entry = self._recorder.journal.get(job_id) if self._recorder is not None else None
            if entry is None:
                raise JobNotFoundError(f"Job {job_id} not found", job_id=job_id)
            status = JobStatus(entry.status)
            return JobRecoveryInfo(
                job_id=job_id,
                status=status,
                host=entry.host,
                tokens_delivered=entry.tokens,
                text=entry.text,
                can_resume=not status.is_terminal,
                error=entry.error,
                error_code=entry.error_code,
                sessions=tuple(
                    RecoverySession(
                        session_id=s.session_id,
                        host=s.host,
                        deposit=s.deposit,
                        signed_amount=s.signed_amount,
                        settled=s.settled,
                        refunded=s.refunded,
                        closed=s.closed,
                        expiry=s.expiry,
                        reclaimable=not s.closed and s.expiry <= now,
                    )
                    for s in entry.sessions
                ),
                from_journal=True,
            )
        return JobRecoveryInfo(
            job_id=job_id,
            status=record.status,
            host=record.host,
            tokens_delivered=len(record.buffer.tokens),
            text=record.buffer.text,
            can_resume=not record.status.is_terminal,
            error=str(record.error) if record.error else None,
            error_code=record.error.code.value if record.error else None,
            sessions=tuple(
                RecoverySession(
                    session_id=leg.session.session_id,
                    host=leg.host,
                    deposit=leg.session.deposit,
                    signed_amount=self._job_end_amount(leg),
                    settled=leg.session.settled,
                    refunded=leg.session.refunded,
                    closed=leg.session.closed,
                    expiry=leg.session.expiry,
                    reclaimable=not leg.session.closed and leg.session.expiry <= now,
                )
                for leg in (*record.legs, record)
                if leg.session is not None
            ),
            from_journal=False,
        )

    def _restore(self, job_id: int) -> _Job:
        """Reads a job an earlier process ran back from the journal into memory: its delivered tokens, its
        sessions (each a finished part, followed on the chain), and — if it had not finished — restarts it
        where it stopped, on a host that continues the same completion."""
        entry = self._recorder.journal.get(job_id) if self._recorder is not None else None
        if entry is None:
            raise JobNotFoundError(f"Job {job_id} not found", job_id=job_id)
        request = request_from_journal(entry.request)
        buffer = TokenBuffer()
        lengths = entry.token_lengths or ((len(entry.text),) if entry.text else ())
        tokens, start = [], 0
        for index, length in enumerate(lengths):
            tokens.append(Token(index, entry.text[start : start + length], entry.updated_at))
            start += length
        if tokens:
            buffer.append(tokens)
        status = JobStatus(entry.status)
        job = _Job(
            job_id=job_id,
            key=entry.key,
            request=request,
            status=status,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
            buffer=buffer,
            host=entry.host,
        )
        client = entry.client_address or self.get_address() or ""
        for saved in entry.sessions:
            leg = _Job(
                job_id=job_id,
                key=entry.key,
                request=request,
                status=JobStatus.FAILED,
                created_at=entry.created_at,
                updated_at=entry.updated_at,
                buffer=buffer,
                host=saved.host,
                price_per_token=saved.price_per_token,
                session=session_from_journal(saved, client),
                base_amount=saved.base_amount,
                closes_session=saved.closes_session,
                signed_hint=saved.signed_amount,
                payment_status=PaymentStatus.ESCROWED,
            )
            leg.done.set()
            job.legs.append(leg)
        if status.is_terminal and job.legs:  # the last part is the job's own payment
            last = job.legs.pop()
            for name in (
                "host",
                "price_per_token",
                "session",
                "base_amount",
                "closes_session",
                "signed_hint",
            ):
                setattr(job, name, getattr(last, name))
            job.payment_status = last.payment_status
        self._jobs[job_id] = job
        for leg in (*job.legs, job):
            if leg.session is not None:
                if self._follower is not None:
                    self._follower.follow([leg.session.session_id])
                self._watch_settlement(leg)
        if status.is_terminal:
            summary = StreamSummary(
                total_tokens=len(tokens),
                duration=0.0,
                finish_reason=FinishReason.STOP,
                text=entry.text,
                prompt_tokens=0,
                completion_tokens=len(tokens),
            )
            if status is JobStatus.FAILED:
                error = FabstirError(entry.error or "the job failed", code=entry.error_code, job_id=job_id)
                job.error = error
                buffer.fail(error)
            else:
                buffer.finish(summary)
            job.done.set()
        else:
            job.status = JobStatus.PROCESSING if tokens else JobStatus.POSTED
            job.host = None
            # a new request under a new wire id: the old host may still hold the old one for a resume
            # by the (dead) peer that asked for it, and would refuse a second job under its id
            job.key = self._new_key()
            job.task = asyncio.create_task(
                self._run_job(job, preferred=None), name=f"fabstir-job-{job.job_id}-resumed"
            )
        return job

    def _open_state(self) -> None:
        """Opens the job journal and loads the hosts' reliability (``recovery`` paths), if configured."""
        recovery = self.config.recovery
        if recovery.journal_path is not None and self._recorder is None:
            journal = JobJournal(recovery.journal_path, ttl=recovery.recovery_data_ttl)
            pruned = journal.prune()
            if pruned:
                _log.info("job journal: pruned %d finished jobs", pruned)
            self._next_job_id = max(self._next_job_id, journal.next_job_id())
            self._recorder = JournalRecorder(journal)
        if recovery.reliability_path is not None:
            self._reliability = ReliabilityTracker.load(
                recovery.reliability_path, time.time, blacklist_duration=recovery.blacklist_duration
            )

    def _close_state(self) -> None:
        if self._recorder is not None:
            for job in self._jobs.values():
                self._recorder.progress(job.job_id, job.buffer.tokens, force=True)
            self._recorder.close()
            self._recorder = None
        self._save_reliability()

    def _save_reliability(self) -> None:
        path = self.config.recovery.reliability_path
        if path is not None:
            try:
                self._reliability.save(path)
            except OSError as exc:
                _log.warning("could not save host reliability to %s: %s", path, exc)

    def list_jobs(self) -> list[int]:
        return sorted(self._jobs)

    # ------------------------------------------------------------------------------------------ the job flow
    async def _run_job(
        self,
        job: _Job,
        *,
        preferred: str | None,
        exclude: Sequence[str] = (),
        deadline: float | None = None,
    ) -> None:
        """The whole job inside one overall deadline: discover → negotiate → pay → stream, and — when a host
        fails — failover to another host that continues the same completion from the tokens delivered."""
        req = job.request
        avoid = list(exclude)
        loop = asyncio.get_running_loop()
        overall = self.config.timeouts.overall
        until = None if overall is None else loop.time() + overall
        if deadline is not None:
            until = deadline if until is None else min(until, deadline)
        try:
            async with asyncio.timeout_at(until):
                while True:
                    delivered = len(job.buffer.tokens)
                    if delivered >= req.max_tokens:  # the failed host had delivered everything asked for
                        self._complete_delivered(job)
                        return
                    try:
                        await self._attempt(job, preferred=None if job.legs else preferred, exclude=avoid)
                        return
                    except FabstirError as exc:
                        if not self._can_fail_over(job, exc):
                            raise
                        assert job.host is not None
                        avoid.append(job.host)
                        self._retire_leg(job, exc)
                        self._counters["failovers"] += 1
        except asyncio.CancelledError:
            self._watch_settlement(job)
            self._fail(
                job, CancelledError(f"Job {job.job_id} was cancelled", job_id=job.job_id), cancelled=True
            )
            return
        except builtins.TimeoutError as exc:
            error = (
                exc
                if isinstance(exc, TimeoutError)
                else TimeoutError(
                    f"Job {job.job_id} exceeded its overall deadline of {self.config.timeouts.overall:g} s",
                    phase="overall",
                    job_id=job.job_id,
                )
            )
            self._watch_settlement(job)
            self._fail(job, error)
        except FabstirError as exc:
            if exc.job_id is None:
                exc.job_id = job.job_id
            failed_host = job.legs[-1].error if job.legs and job.host is None else None
            if failed_host is not None:
                # a failover found no replacement: the job fails with the host's error (which says what
                # happened), and the search's error says why nobody took over
                failed_host.context = MappingProxyType({**failed_host.context, "failover": str(exc)})
                exc = failed_host
            self._watch_settlement(job)
            self._fail(job, exc, cancelled=job.cancel_requested)
        except Exception as exc:  # a bug: still end the job cleanly and say so
            _log.exception("job %s crashed", job.job_id)
            self._fail(job, FabstirError(f"internal error: {exc!r}", job_id=job.job_id))

    async def _attempt(self, job: _Job, *, preferred: str | None, exclude: Sequence[str]) -> None:
        """One host's turn: discover, negotiate (continuing the tokens delivered so far, after a failover),
        pay and stream."""
        req = job.request
        delivered = len(job.buffer.tokens)
        nodes = await self.discover_nodes(
            model=req.model,
            max_price=req.max_price_per_token,
            payment_token=req.payment_token,
            preferred=[preferred] if preferred else (),
            exclude=exclude,
        )
        if not nodes:
            limit = (
                f" at or below {req.max_price_per_token} per token"
                if req.max_price_per_token is not None
                else ""
            )
            raise DiscoveryError(f"no live host serves model {req.model}{limit}", job_id=job.job_id)
        # Ask the best K hosts; if none of them takes the job (all busy, say), the next K, and so on.
        fanout = self.config.negotiation_fanout
        offers: list[OfferInHand] = []
        rejections: list[Rejection] = []
        for start in range(0, len(nodes), fanout):
            offers, refused = await self._negotiate(
                job,
                req,
                nodes[start : start + fanout],
                continuation=job.buffer.text if delivered else "",
                first=delivered,
            )
            rejections += refused
            if offers:
                break
        job.rejections = rejections
        if not offers:
            reasons = sorted({r.reason for r in rejections})
            raise NoNodesAcceptedError(
                "No nodes accepted the job",
                reason=reasons[0] if len(reasons) == 1 else "error",
                job_id=job.job_id,
                context={"rejections": [(r.node.peer_id, r.reason, r.message) for r in rejections]},
            )
        chosen, others = offers[0], offers[1:]
        for other in others:
            await decline(other.channel)
        if job.legs:
            failed = job.legs[-1]
            error = failed.error
            self._events.emit(
                EventName.JOB_FAILOVER,
                job_id=job.job_id,
                from_node=failed.host,
                to_node=chosen.node.peer_id,
                delivered=delivered,
                error=str(error) if error else None,
                code=error.code.value if error else None,
                failover=len(job.legs),
            )
        await self._execute(job, chosen)

    def _can_fail_over(self, job: _Job, error: FabstirError) -> bool:
        """Whether a failure is the host's (it crashed, hung, reset, reported an error, or was caught
        lying) and another host may take the job over: failover on, attempts left, not cancelled."""
        recovery = self.config.recovery
        if not recovery.failover or job.cancel_requested or job.host is None or job.runner is None:
            return False
        if len(job.legs) >= recovery.max_failovers:
            return False
        if isinstance(error, TimeoutError):
            return error.phase in ("first_token", "inter_token")
        return isinstance(error, TransportError | HostError | RemoteProtocolError)

    def _retire_leg(self, job: _Job, error: FabstirError) -> None:
        """Ends the failed host's part of ``job``: a record of it (host, session, what it was paid for) goes
        to ``job.legs`` and its settlement is followed on its own; the job starts afresh on another host."""
        leg = dataclasses.replace(
            job, error=error, legs=[], task=None, settlement=None, done=asyncio.Event(), closes_session=True
        )
        leg.done.set()
        job.legs.append(leg)
        self._watch_settlement(leg)
        job.host = None
        job.price_per_token = None
        job.session = None
        job.runner = None
        job.outcome = None
        job.payment_status = PaymentStatus.NONE
        job.settled = job.refunded = job.base_amount = 0
        job.closes_session = True
        job.refund_reported = False
        job.signed_hint = None
        _log.info(
            "job %s: host %s failed after %d tokens (%s); failing over",
            job.job_id,
            leg.host,
            len(job.buffer.tokens),
            error,
        )

    def _complete_delivered(self, job: _Job) -> None:
        """A host failed after delivering every token the job asked for: the job is complete."""
        summary = StreamSummary(
            total_tokens=len(job.buffer.tokens),
            duration=job.buffer.metrics().elapsed,
            finish_reason=FinishReason.LENGTH,
            text=job.buffer.text,
            prompt_tokens=0,
            completion_tokens=len(job.buffer.tokens),
        )
        job.host = job.legs[-1].host if job.legs else None
        self._end_stream(job, summary)

    async def _execute(self, job: _Job, chosen: OfferInHand) -> None:
        ledger = self._require_ledger()
        account = self._require_account()
        offer = chosen.offer
        job.host = chosen.node.peer_id
        job.price_per_token = offer.price_per_token
        self._events.emit(
            EventName.JOB_NEGOTIATED,
            job_id=job.job_id,
            node_id=job.host,
            price_per_token=offer.price_per_token,
            estimated_time_ms=offer.estimated_time_ms,
        )
        cost = max_cost(job.request.max_tokens - len(job.buffer.tokens), offer.price_per_token)
        pool = self._session_pool
        pooled = (
            pool.take(
                peer_id=chosen.node.peer_id,
                payment_address=offer.payment_address,
                token=offer.payment_token,
                price=offer.price_per_token,
                cost=cost,
                now=time.time(),
            )
            if ledger.escrowed
            else None
        )
        reused = pooled is not None
        if pooled is None:
            try:
                session = await ledger.open_session(
                    account,
                    host=offer.payment_address,
                    token=offer.payment_token,
                    deposit=pool.deposit_for(cost) if ledger.escrowed else cost,
                    price_per_token=offer.price_per_token,
                    expiry=time.time() + self.config.chain.session_expiry,
                )
            except FabstirError:
                await decline(chosen.channel, reason="payment failed")
                raise
            pooled = pool.add(session, chosen.node.peer_id)
            if self._follower is not None:
                self._follower.follow([session.session_id])
        session = pooled.info
        job.session = session
        job.base_amount = pooled.signed
        job.closes_session = not pool.keep_open(pooled, cost)
        if self._recorder is not None:
            self._recorder.session_opened(
                job.job_id,
                session,
                host=chosen.node.peer_id,
                base_amount=job.base_amount,
                chain_id=ledger.chain_id,
                contract=ledger.verifying_contract,
                closes_session=job.closes_session,
            )
        if ledger.escrowed:  # without escrow the session is a promise: nothing was deposited
            job.payment_status = PaymentStatus.ESCROWED
            self._events.emit(
                EventName.PAYMENT_ESCROWED,
                job_id=job.job_id,
                node_id=job.host,
                session_id=session.session_id,
                deposit=session.deposit,
                token=session.token,
                reused=reused,
                base_amount=job.base_amount,
            )
        self._events.emit(EventName.JOB_POSTED, job_id=job.job_id, session_id=session.session_id)
        try:
            await self._run_on_session(job, chosen, pooled)
        finally:
            pool.release(
                pooled,
                job.runner.signed_amount if job.runner is not None else pooled.signed,
                reusable=job.error is None
                and job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
                and not job.closes_session,
            )

    async def _run_on_session(self, job: _Job, chosen: OfferInHand, pooled: PooledSession) -> None:
        ledger = self._require_ledger()
        account = self._require_account()
        session = pooled.info
        assert job.host is not None
        runner = JobRunner(
            job_key=job.key,
            offer=chosen,
            session=session,
            ledger=ledger,
            account=account,
            buffer=job.buffer,
            first_token_timeout=self.config.timeouts.first_token,
            inter_token_timeout=self.config.timeouts.inter_token,
            on_tokens=lambda tokens: self._on_tokens(job, tokens),
            reconnect=lambda: self._reopen(chosen.node),
            agent=_AGENT,
            base_amount=job.base_amount,
            keep_open=not job.closes_session,
            model=job.request.model,
            resume_timeout=self.config.timeouts.resume,
        )
        job.runner = runner
        if job.status is not JobStatus.PROCESSING:  # (after a failover the job goes on streaming)
            self._set_status(job, JobStatus.CLAIMED)
        self._events.emit(EventName.JOB_CLAIMED, job_id=job.job_id, node_id=job.host)
        if job.cancel_requested:
            await runner.cancel()
        try:
            outcome = await runner.run()
        except FabstirError as exc:
            lie = exc.code is ErrorCode.MODEL_MISMATCH
            verdict = self._reliability.record_failure(
                job.host,
                drop=isinstance(exc, TransportError),
                timeout=isinstance(exc, TimeoutError),
                lie=lie,
                reason=exc.code.value,
            )
            self._events.emit(
                EventName.NODE_FAILURE,
                job_id=job.job_id,
                node_id=job.host,
                error=str(exc),
                code=exc.code.value,
                delivered=runner.received,
            )
            self._reliability_alert(job, verdict, reason=exc.code.value if lie else None)
            self._discovery_invalidate(job.host)
            job.closes_session = True  # a host closes the session of a failed job
            raise
        job.outcome = outcome
        if outcome.usage_mismatch:
            verdict = self._reliability.record_failure(job.host, lie=True, reason="usage_overclaim")
            self._reliability_alert(
                job,
                verdict,
                reason="usage_overclaim",
                claimed=outcome.completion_tokens_claimed,
                delivered=outcome.tokens_received,
            )
        else:
            metrics = job.buffer.metrics()
            self._reliability.record_success(
                job.host,
                # the job's own timing only when one host served it all (a failover's gap is not theirs)
                ttft=None if job.legs else metrics.time_to_first_token,
                inter_token=None if job.legs else metrics.mean_inter_token_latency,
            )
        summary = runner.summary(outcome)
        if job.legs:  # the completion spans every host that worked on it
            summary = dataclasses.replace(summary, completion_tokens=summary.total_tokens)
        self._end_stream(job, summary)

    def _end_stream(self, job: _Job, summary: StreamSummary) -> None:
        """The job's stream ended well: it is COMPLETED (CANCELLED if the user asked), and its payment is
        followed on the ledger."""
        job.buffer.finish(summary)
        self._events.emit(
            EventName.STREAM_END,
            job_id=job.job_id,
            node_id=job.host,
            total_tokens=summary.total_tokens,
            finish_reason=summary.finish_reason.value,
        )
        self._set_status(job, JobStatus.CANCELLED if job.cancel_requested else JobStatus.COMPLETED)
        if job.status is JobStatus.COMPLETED:
            self._counters["jobs_completed"] += 1
            self._events.emit(
                EventName.JOB_COMPLETED, job_id=job.job_id, node_id=job.host, tokens=summary.total_tokens
            )
        else:
            self._counters["jobs_cancelled"] += 1
            self._events.emit(EventName.JOB_CANCELLED, job_id=job.job_id, node_id=job.host)
        self._watch_settlement(job)
        job.done.set()

    def _reliability_alert(
        self, job: _Job, verdict: FailureVerdict, *, reason: str | None = None, **details: Any
    ) -> None:
        """``node:reliability-alert`` when a host was caught lying (``reason``), fell below the alert
        threshold, or was blacklisted (``verdict``). Saves the reliability statistics (a failure is news)."""
        self._save_reliability()
        if reason is None and verdict.alert is None:
            return
        self._events.emit(
            EventName.NODE_RELIABILITY_ALERT,
            job_id=job.job_id,
            node_id=job.host,
            reason=reason or "reliability",
            alert=verdict.alert,
            reliability=self._reliability.reliability(job.host) if job.host else None,
            blacklisted_until=verdict.blacklisted_until,
            **details,
        )
        if verdict.blacklisted_until is not None and job.host is not None:
            self._discovery_invalidate(job.host)

    async def _reopen(self, node: NodeInfo) -> FrameChannel:
        """A new job stream to ``node`` (to resume a job whose stream broke)."""
        peer = PeerInfo(node.peer_id, node.addresses)
        stream = await self._require_transport().open_stream(peer, PROTOCOL_ID)
        return FrameChannel(stream, Role.CLIENT)

    def _on_tokens(self, job: _Job, tokens: list[Token]) -> None:
        if self._recorder is not None:
            self._recorder.progress(job.job_id, job.buffer.tokens)
        if job.status is JobStatus.CLAIMED:
            self._set_status(job, JobStatus.PROCESSING)
            self._events.emit(EventName.JOB_PROCESSING, job_id=job.job_id, node_id=job.host)
            self._events.emit(EventName.STREAM_START, job_id=job.job_id, node_id=job.host)
        self._counters["tokens_received"] += len(tokens)
        for token in tokens:
            self._events.emit(
                EventName.STREAM_TOKEN,
                job_id=job.job_id,
                node_id=job.host,
                index=token.index,
                text=token.text,
            )

    def _watch_settlement(self, job: _Job) -> None:
        """Follows the job's session on the ledger in the background (owned by the SDK)."""
        ledger = self._ledger  # (also while disconnecting: the job's money still matters)
        if job.session is not None and job.settlement is None and ledger is not None and ledger.escrowed:
            job.settlement = asyncio.create_task(
                self._observe_settlement(job), name=f"fabstir-settlement-{job.job_id}"
            )

    async def _settlement_observed(self, job: _Job, *, timeout: float | None = None) -> None:
        """Waits for the job's settlement watcher (at most ``timeout`` s; it goes on in the background)."""
        if job.settlement is not None:
            with contextlib.suppress(builtins.TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(job.settlement)

    async def _observe_settlement(self, job: _Job, *, patience: float = 30.0) -> None:
        """Waits (briefly, bounded) for the host to settle the job on the ledger and records the result.

        A job's share of its session is what its receipts added: from ``base_amount`` to the amount the
        client signed last. It is released once the session's settled total reaches that amount (the host
        settles after each job, or closes the session); the session's refund belongs to the job after which
        it closed. A host that does not settle leaves the payment ESCROWED; the client can reclaim after
        expiry."""
        if job.session is None or self._ledger is None:
            return
        ledger = self._ledger
        end = self._job_end_amount(job)
        delay = 0.0
        deadline = asyncio.get_running_loop().time() + patience
        while True:
            try:
                session = await ledger.get_session(job.session.session_id)
            except FabstirError as exc:
                # a chain node down for a while: keep asking (bounded by the patience); anything else
                # (the session is gone) ends the watch
                if not exc.retryable or asyncio.get_running_loop().time() >= deadline:
                    _log.info("could not read session of job %s: %s", job.job_id, exc)
                    return
                await asyncio.sleep(0.5)
                continue
            if (
                session.closed
                or job.base_amount < end <= session.settled
                or asyncio.get_running_loop().time() >= deadline
            ):
                break
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2 or 0.001)
        self._record_settlement(job, session, end)

    def _record_settlement(self, job: _Job, session: SessionInfo, end: int) -> None:
        """Records what the ledger says about ``job``'s share of ``session`` and emits the payment events
        (each once). Also while disconnecting: a settlement observed then is still the job's."""
        ledger = self._ledger
        if ledger is None:
            return
        previous_settled = job.settled
        job.session = session
        if self._recorder is not None:
            self._recorder.session_changed(job.job_id, session.session_id, signed_amount=end, session=session)
        share = _share(session.settled, end, job.base_amount)
        job.settled = share
        closing_job = session.closed and job.closes_session
        if share and session.settled >= end:
            job.payment_status = PaymentStatus.RELEASED
        if closing_job:
            job.refunded = session.refunded
            if not share:
                job.payment_status = PaymentStatus.REFUNDED
        if share and share != previous_settled:
            fee = _fee(ledger, job.base_amount + share) - _fee(ledger, job.base_amount)
            self._events.emit(
                EventName.PAYMENT_RELEASED,
                job_id=job.job_id,
                node_id=job.host,
                session_id=session.session_id,
                amount=share,
                host_amount=share - fee,
                fee=fee,
            )
        if closing_job and session.refunded and not job.refund_reported:
            job.refund_reported = True
            self._events.emit(
                EventName.PAYMENT_REFUNDED,
                job_id=job.job_id,
                node_id=job.host,
                session_id=session.session_id,
                amount=session.refunded,
            )

    def _jobs_on_session(self, session_id: str) -> list[_Job]:
        """The ended jobs — and the failed hosts' parts of jobs that failed over — paid by ``session_id``
        (the chain only matters for them once they ended)."""
        key = session_id.lower()
        return [
            leg
            for job in self._jobs.values()
            for leg in (*job.legs, job)
            if leg.session is not None and leg.session.session_id.lower() == key and leg.done.is_set()
        ]

    def _job_end_amount(self, job: _Job) -> int:
        if job.runner is not None:
            return job.runner.signed_amount
        return job.signed_hint if job.signed_hint is not None else job.base_amount

    def _on_chain_state(self, session_id: str, state: SessionState) -> None:
        """Confirmed events moved ``session_id`` forward: record each ended job's share (only forward;
        taking back is the reorg path's job)."""
        for job in self._jobs_on_session(session_id):
            assert job.session is not None
            if state.settled < job.session.settled or (job.session.closed and not state.closed):
                continue  # our own reading of the contract was already further (not yet confirmed)
            info = dataclasses.replace(
                job.session, settled=state.settled, refunded=state.refunded, closed=state.closed
            )
            self._record_settlement(job, info, self._job_end_amount(job))

    async def _on_chain_reorg(self, reorg: ChainReorg | None, sessions: frozenset[str]) -> None:
        """Blocks were replaced (``reorg``; ``None``: deeper than the watcher remembers): re-read the
        sessions whose events were retracted and correct each job whose payment we believed otherwise —
        the chain wins, and ``state:conflict`` says what changed."""
        ledger = self._ledger
        if ledger is None:
            return
        self._events.emit(
            EventName.CHAIN_REORG,
            fork_block=reorg.fork_block if reorg else None,
            depth=reorg.depth if reorg else None,
            retracted=len(reorg.retracted) if reorg else None,
            sessions=sorted(sessions),
        )
        for session_id in sessions:
            try:
                session: SessionInfo | None = await ledger.get_session(session_id)
            except PaymentError:  # the session itself is gone with the replaced blocks
                session = None
            except FabstirError as exc:
                _log.warning("after a reorg, could not re-read session %s: %s", session_id, exc)
                continue
            if self._follower is not None:
                state = SessionState(session.settled, session.refunded, session.closed) if session else None
                self._follower.set_state(session_id, state or SessionState())
            for job in self._jobs_on_session(session_id):
                self._correct_payment(job, session)

    def _correct_payment(self, job: _Job, session: SessionInfo | None) -> None:
        """Sets ``job``'s payment to what ``session`` (``None``: no such session on chain) says, emitting
        ``state:conflict`` if that differs from what we believed."""
        believed = (job.payment_status, job.settled, job.refunded)
        if session is None:
            actual = (PaymentStatus.NONE, 0, 0)
        else:
            end = self._job_end_amount(job)
            share = _share(session.settled, end, job.base_amount)
            closing = session.closed and job.closes_session
            if share and session.settled >= end:
                status = PaymentStatus.RELEASED
            elif closing and not share:
                status = PaymentStatus.REFUNDED
            else:
                status = PaymentStatus.ESCROWED
            actual = (status, share, session.refunded if closing else 0)
            job.session = session
        if actual == believed:
            return
        job.payment_status, job.settled, job.refunded = actual
        job.refund_reported = bool(job.refunded) and job.refund_reported
        self._events.emit(
            EventName.STATE_CONFLICT,
            job_id=job.job_id,
            node_id=job.host,
            session_id=job.session.session_id if job.session else None,
            believed={"status": believed[0].value, "settled": believed[1], "refunded": believed[2]},
            chain={"status": actual[0].value, "settled": actual[1], "refunded": actual[2]},
        )

    def _fail(self, job: _Job, error: FabstirError, *, cancelled: bool = False) -> None:
        job.error = error
        job.buffer.fail(error)
        if cancelled:
            self._set_status(job, JobStatus.CANCELLED)
            self._counters["jobs_cancelled"] += 1
            self._events.emit(EventName.JOB_CANCELLED, job_id=job.job_id, node_id=job.host)
        else:
            self._set_status(job, JobStatus.FAILED)
            self._counters["jobs_failed"] += 1
            self._events.emit(EventName.STREAM_ERROR, job_id=job.job_id, node_id=job.host, error=str(error))
            failure = {"error": str(error), "code": error.code.value}
            self._events.emit(EventName.JOB_FAILED, job_id=job.job_id, node_id=job.host, **failure)
            # one subscription sees every failure, whichever job (the TypeScript SDK's `error` event)
            self._events.emit(
                EventName.ERROR, job_id=job.job_id, node_id=job.host, retryable=error.retryable, **failure
            )
        job.done.set()

    def _set_status(self, job: _Job, status: JobStatus) -> None:
        job.status = status
        job.updated_at = time.time()
        if self._recorder is not None:
            if status.is_terminal:
                self._recorder.progress(job.job_id, job.buffer.tokens, force=True)
            self._recorder.status(job.job_id, status.value, job.host, job.error)
        self._emit_status(job)

    def _emit_status(self, job: _Job) -> None:
        self._events.emit(EventName.JOB_STATUS, job_id=job.job_id, node_id=job.host, status=job.status.value)

    def _discovery_invalidate(self, peer_id: str) -> None:
        if self._discovery is not None:
            self._discovery.invalidate(peer_id)

    # ------------------------------------------------------------------------------------------ payments
    async def get_payment_details(self, job: JobRef) -> PaymentDetails:
        """The job's payment. A job that failed over paid each host from its own session: ``legs`` lists
        each host's part (the failed ones first), and the amounts here are their totals; ``session_id``,
        ``host_address`` and ``status`` are the last host's."""
        record = self._job(job)
        last = self._leg_payment(record)
        if not record.legs:
            return last
        legs = (*(self._leg_payment(leg) for leg in record.legs), last)
        return dataclasses.replace(
            last,
            deposit=sum(p.deposit for p in legs),
            acknowledged_tokens=sum(p.acknowledged_tokens for p in legs),
            settled_amount=sum(p.settled_amount for p in legs),
            refunded_amount=sum(p.refunded_amount for p in legs),
            legs=legs,
        )

    def _leg_payment(self, record: _Job) -> PaymentDetails:
        session = record.session
        runner = record.runner
        return PaymentDetails(
            job_id=record.job_id,
            session_id=session.session_id if session else None,
            status=record.payment_status,
            payment_token=session.token if session else record.request.payment_token,
            deposit=session.deposit if session else 0,
            price_per_token=record.price_per_token or 0,
            acknowledged_tokens=runner.acknowledged
            if runner
            else (self._job_end_amount(record) - record.base_amount) // (record.price_per_token or 1),
            settled_amount=record.settled,
            refunded_amount=record.refunded,
            host_address=session.host if session else None,
            client_address=session.client if session else self.get_address(),
        )

    async def get_payment_status(self, job: JobRef) -> PaymentStatus:
        return self._job(job).payment_status

    async def get_payment_history(self) -> list[PaymentDetails]:
        return [await self.get_payment_details(j) for j in sorted(self._jobs) if self._jobs[j].session]

    async def calculate_actual_cost(self, job: JobRef) -> CostBreakdown:
        """What the job cost: tokens acknowledged × price, split host / treasury, and what was (or will be)
        refunded. A job on a session that carries more jobs leaves the rest of the deposit in the session
        (``refunded`` 0); the job after which the session closes gets its refund. A job that failed over
        sums every host's part (``price_per_token`` is the last host's)."""
        record = self._job(job)
        parts = [self._leg_cost(leg) for leg in (*record.legs, record)]
        last = parts[-1]
        if len(parts) == 1:
            return last
        return dataclasses.replace(
            last,
            tokens=sum(p.tokens for p in parts),
            total=sum(p.total for p in parts),
            host=sum(p.host for p in parts),
            treasury=sum(p.treasury for p in parts),
            refunded=sum(p.refunded for p in parts),
        )

    def _leg_cost(self, record: _Job) -> CostBreakdown:
        ledger = self._require_ledger()
        price = record.price_per_token or 0
        tokens = (self._job_end_amount(record) - record.base_amount) // price if price else 0
        observed = record.payment_status in (PaymentStatus.RELEASED, PaymentStatus.REFUNDED)
        total = record.settled if observed else tokens * price
        base = record.base_amount
        fee = _fee(ledger, base + total) - _fee(ledger, base)
        deposit = record.session.deposit if record.session else 0
        if record.session is not None and record.session.closed and record.closes_session:
            refunded = record.refunded
        elif record.closes_session and record.session is not None:
            refunded = deposit - base - total
        else:
            refunded = 0
        return CostBreakdown(
            tokens=total // price if price else 0,
            price_per_token=price,
            total=total,
            host=total - fee,
            treasury=fee,
            refunded=refunded,
            payment_token=record.session.token if record.session else record.request.payment_token,
            fee_basis_points=ledger.fee_basis_points,
        )

    async def get_job_transactions(self, job: JobRef) -> list[ChainTransaction]:
        """The on-chain transactions of the job's payment session, oldest first: the client's approval (an
        ERC-20 deposit) and open, then the host's settlements and close (or the client's reclaim) as far
        as the SDK has seen them confirmed. A session that carries several jobs lists the same
        transactions for each; a job that failed over lists each host's session in turn. Empty in mock
        mode and without escrow (nothing goes on chain)."""
        record = self._job(job)
        ledger: Any = self._ledger  # a Web3Ledger whenever there is a follower
        if self._follower is None or not hasattr(ledger, "opening_transactions"):
            return []
        found: list[ChainTransaction] = []
        for leg in (*record.legs, record):
            if leg.session is None:
                continue
            session_id = leg.session.session_id
            found.extend(ledger.opening_transactions(session_id))
            described: dict[
                str, str
            ] = {}  # tx hash → what it did (a close with a final receipt also settles)
            for event in self._follower.events(session_id):
                description = _EVENT_TRANSACTIONS.get(event.name)
                if description is not None:
                    earlier = described.get(event.transaction_hash)
                    described[event.transaction_hash] = (
                        f"{earlier} and {description}" if earlier else description
                    )
            for tx_hash, description in described.items():
                found.append(await ledger.transaction(tx_hash, description))
        return found

    async def approve_job_payment(self, job: JobRef) -> PaymentDetails:
        """Waits for the job to end and for its settlement to be observed on the ledger (every host's, when
        the job failed over)."""
        record = self._job(job)
        await record.done.wait()
        for leg in (*record.legs, record):
            await self._settlement_observed(leg)
        return await self.get_payment_details(record.job_id)

    async def request_refund(self, job: JobRef) -> PaymentDetails:
        """Refunds a failed or cancelled job's unspent deposit. Raises :class:`RefundNotAllowedError`
        (``Refund only available for failed or cancelled jobs``) otherwise."""
        record = self._job(job)
        if record.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise RefundNotAllowedError(
                "Refund only available for failed or cancelled jobs", job_id=record.job_id
            )
        ledger = self._require_ledger()
        if not ledger.escrowed:  # nothing was deposited, nothing to refund
            return await self.get_payment_details(record.job_id)
        # A live host settles and refunds on its own once the job ends: give it a moment, not forever (a
        # dead host never will, and then only the expiry helps). Every host's session of the job counts.
        waiting = [
            expiry
            for leg in (*record.legs, record)
            if (expiry := await self._reclaim_leg(leg, patience=_REFUND_PATIENCE)) is not None
        ]
        if waiting:
            raise PaymentError(
                f"a session of job {record.job_id} is still open; its host may settle until it expires at "
                f"{max(waiting):.0f}, after which the deposit can be reclaimed",
                job_id=record.job_id,
                retryable=True,
            )
        return await self.get_payment_details(record.job_id)

    async def reclaim_expired_sessions(self) -> list[PaymentDetails]:
        """Reclaims the deposit of every session of this SDK's jobs that its host left open past its expiry
        — typically a host that died mid-job, whose job then went on elsewhere — and, with a journal, of
        the jobs an earlier process ran with the same key. Returns the payments that changed. Sessions
        not yet expired are left to their hosts."""
        ledger = self._require_ledger()
        if not ledger.escrowed:
            return []
        now = await ledger.timestamp()
        changed: list[PaymentDetails] = []
        for record in list(self._jobs.values()):
            if not record.done.is_set():
                continue
            touched = False
            for leg in (*record.legs, record):
                if leg.session is None or leg.session.closed or leg.session.expiry > now:
                    continue
                if await self._reclaim_leg(leg, patience=0.0) is None:
                    touched = True
            if touched:
                changed.append(await self.get_payment_details(record.job_id))
        if self._recorder is not None:  # sessions of jobs an earlier process ran (read from the journal)
            account = self._require_account()
            for job_id, saved in self._recorder.journal.reclaimable(now):
                if job_id in self._jobs or saved.chain_id != ledger.chain_id:
                    continue
                session = await ledger.get_session(saved.session_id)
                if session.client.lower() != account.address.lower():
                    continue  # another key's session: not ours to reclaim
                if not session.closed:
                    await ledger.reclaim(account, saved.session_id)
                    session = await ledger.get_session(saved.session_id)
                self._recorder.session_changed(job_id, saved.session_id, session=session)
                changed.append(self._journal_payment(job_id, saved, session))
        return changed

    def _journal_payment(self, job_id: int, saved: JournalSession, session: SessionInfo) -> PaymentDetails:
        share = _share(session.settled, saved.signed_amount, saved.base_amount)
        return PaymentDetails(
            job_id=job_id,
            session_id=session.session_id,
            status=PaymentStatus.REFUNDED if session.refunded else PaymentStatus.RELEASED,
            payment_token=session.token,
            deposit=session.deposit,
            price_per_token=session.price_per_token,
            acknowledged_tokens=(saved.signed_amount - saved.base_amount) // (session.price_per_token or 1),
            settled_amount=share,
            refunded_amount=session.refunded,
            host_address=session.host,
            client_address=session.client,
        )

    async def _reclaim_leg(self, leg: _Job, *, patience: float) -> float | None:
        """Waits up to ``patience`` s for the host to close ``leg``'s session, and reclaims it if it has
        expired. Returns the expiry of a session still open (its host may settle until then), else None."""
        ledger = self._require_ledger()
        if leg.session is None:
            return None
        await self._settlement_observed(leg, timeout=patience)
        session = await ledger.get_session(leg.session.session_id)
        if not session.closed:
            if session.expiry > await ledger.timestamp():  # the chain's clock decides, not ours
                return session.expiry
            await ledger.reclaim(self._require_account(), session.session_id)
            await self._observe_settlement(leg, patience=0.0)
        if leg.payment_status is PaymentStatus.RELEASED and leg.refunded:
            leg.payment_status = PaymentStatus.REFUNDED
        return None

    # ------------------------------------------------------------------------------------------ health
    def get_node_reliability(self, peer_id: str) -> float:
        return self._reliability.reliability(peer_id)

    def blacklist_node(self, peer_id: str, duration: float | None = None) -> None:
        self._reliability.blacklist(peer_id, duration or self.config.recovery.blacklist_duration)
        self._discovery_invalidate(peer_id)

    def get_performance_metrics(self) -> dict[str, Any]:
        finished = [j for j in self._jobs.values() if j.status is JobStatus.COMPLETED]
        ttfts = [m for j in finished if (m := j.buffer.metrics().time_to_first_token) is not None]
        rates = [j.buffer.metrics().tokens_per_second for j in finished]
        return {
            **self._counters,
            "mean_time_to_first_token": sum(ttfts) / len(ttfts) if ttfts else None,
            "mean_tokens_per_second": sum(rates) / len(rates) if rates else None,
        }

    def get_system_health_report(self) -> dict[str, Any]:
        """Whether the SDK can do its job now: ``status`` is ``disconnected``, ``degraded`` (in production
        no peer connected, or at least half of the finished jobs failed), or ``healthy``; with the
        reasons, the jobs running, the failure rate and the hosts blacklisted now."""
        active = [j for j in self._jobs.values() if not j.status.is_terminal]
        failed = self._counters["jobs_failed"]
        finished = failed + self._counters["jobs_completed"]
        p2p = self.get_p2p_status()
        problems: list[str] = []
        if self._connected:
            if self.config.mode == "production" and not p2p["connected_peers"]:
                problems.append("no peer connected (bootstrap or hosts unreachable)")
            if finished and failed / finished >= 0.5:
                problems.append(f"{failed} of {finished} finished jobs failed")
        status = "disconnected" if not self._connected else "degraded" if problems else "healthy"
        return {
            "status": status,
            "problems": problems,
            "mode": self.config.mode,
            "connected": self._connected,
            "active_jobs": len(active),
            "failure_rate": failed / finished if finished else 0.0,
            "p2p": p2p,
            "blacklisted_nodes": sorted(self._reliability.blacklisted()),
            "journal": self.config.recovery.journal_path if self._recorder is not None else None,
            "jobs": dict(self._counters),
        }

    def get_error_recovery_report(self) -> dict[str, Any]:
        """What went wrong and what the SDK did about it: retries, failovers (which host failed how, after
        how many tokens, and who took over), jobs that failed, hosts blacklisted now."""
        failures = [
            {"job_id": j.job_id, "host": j.host, "error": str(j.error), "code": j.error.code.value}
            for j in self._jobs.values()
            if j.error is not None
        ]
        failovers = [
            {
                "job_id": job.job_id,
                "from_node": leg.host,
                "to_node": (job.legs[i + 1].host if i + 1 < len(job.legs) else job.host),
                "delivered_by_failed_host": leg.runner.received if leg.runner else 0,
                "error": str(leg.error),
                "code": leg.error.code.value if leg.error else None,
            }
            for job in self._jobs.values()
            for i, leg in enumerate(job.legs)
        ]
        return {
            "retries": self._counters["retries"],
            "failovers": self._counters["failovers"],
            "failover_details": failovers,
            "failures": failures,
            "blacklisted_nodes": sorted(self._reliability.blacklisted()),
            "hosts": [dataclasses.asdict(h) for h in self._reliability.report()],
        }

    # ------------------------------------------------------------------------------------------ helpers
    def _on_peer_event(self, event: PeerEvent) -> None:
        name = (
            EventName.P2P_PEER_CONNECT
            if event.kind is PeerEventKind.CONNECTED
            else EventName.P2P_PEER_DISCONNECT
        )
        self._events.emit(name, node_id=event.peer_id)

    def _new_key(self) -> str:
        if self.config.mode == "mock":
            return f"{self._rng.getrandbits(128):032x}"
        return secrets.token_hex(16)

    def _build_request(self, request: JobRequest | None, kwargs: Mapping[str, Any]) -> JobRequest:
        if request is not None and kwargs:
            raise ValidationError("pass either a JobRequest or keyword arguments, not both")
        if request is None:
            allowed = {f.name for f in dataclasses.fields(JobRequest)}
            unknown = sorted(set(kwargs) - allowed)
            if unknown:
                raise ValidationError(f"Unknown job option: {unknown[0]}")
            if "payment_token" not in kwargs:
                kwargs = {**kwargs, "payment_token": self.config.chain.payment_token}
            try:
                request = JobRequest(**{"prompt": "", "model": "", **kwargs})
            except TypeError as exc:
                raise ValidationError(str(exc)) from exc
        validate_request(request)
        return request

    def _job(self, job: JobRef) -> _Job:
        job_id = job.job_id if isinstance(job, JobHandle) else job
        record = self._jobs.get(job_id) if isinstance(job_id, int) and not isinstance(job_id, bool) else None
        if record is None:
            raise JobNotFoundError(
                f"Job {job_id} not found", job_id=job_id if isinstance(job_id, int) else None
            )
        return record

    def _require_connected(self) -> None:
        if not self._connected:
            raise NotConnectedError("The SDK is not connected: call connect() or use 'async with'")

    def _require_transport(self) -> Transport:
        self._require_connected()
        assert self._transport is not None
        return self._transport

    def _require_ledger(self) -> PaymentLedger:
        self._require_connected()
        assert self._ledger is not None
        return self._ledger

    def _require_account(self) -> LocalAccount:
        self._require_connected()
        assert self._account is not None
        return self._account

    def _require_discovery(self) -> NodeDiscovery:
        self._require_connected()
        assert self._discovery is not None
        return self._discovery

    # ------------------------------------------------------------------------------------------ summaries
    async def wait_for_summary(self, job: JobRef) -> StreamSummary:
        record = self._job(job)
        await record.done.wait()
        if record.buffer.summary is None:
            assert record.error is not None
            raise record.error
        return record.buffer.summary

    @contextlib.asynccontextmanager
    async def stream(self, request: JobRequest | None = None, **kwargs: Any) -> AsyncIterator[ResponseStream]:
        """``async with sdk.stream(prompt=..., model=...) as tokens:`` — submit with streaming, and cancel
        the job if the block exits early."""
        handle = await self.submit_job(request, stream=True, **kwargs)
        assert handle.stream is not None
        async with handle.stream as response:
            yield response


def validate_request(request: JobRequest) -> None:
    """The TypeScript SDK's validation, with its messages."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ValidationError("Prompt cannot be empty")
    if len(request.prompt) > _MAX_PROMPT_CHARS:
        raise ValidationError(f"Prompt is longer than {_MAX_PROMPT_CHARS} characters")
    if (
        isinstance(request.max_tokens, bool)
        or not isinstance(request.max_tokens, int)
        or request.max_tokens <= 0
    ):
        raise ValidationError("Max tokens must be positive")
    if not isinstance(request.model, str) or not request.model.strip() or len(request.model) > 256:
        raise ValidationError("Invalid model ID")
    if (
        isinstance(request.temperature, bool)
        or not isinstance(request.temperature, int | float)
        or not (0.0 <= request.temperature <= 2.0)
    ):
        raise ValidationError("Temperature must be between 0 and 2")
    if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int)):
        raise ValidationError("Seed must be an integer")
    if request.max_price_per_token is not None and (
        isinstance(request.max_price_per_token, bool)
        or not isinstance(request.max_price_per_token, int)
        or request.max_price_per_token <= 0
    ):
        raise ValidationError("Max price per token must be a positive integer")
    if not isinstance(request.payment_token, str) or not request.payment_token:
        raise ValidationError("Payment token must be a non-empty string")

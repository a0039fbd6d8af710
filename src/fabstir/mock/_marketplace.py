"""The simulated marketplace of mock mode: the real core (host nodes, job protocol, escrow semantics)
running over the in-memory seams — an in-memory network, an in-memory ledger, a simulated backend.

Deterministic for a seed: peer ids, accounts, and generated text depend only on ``MockConfig.seed``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .._config import MockConfig, MockHostSpec
from ..backend import SimulatedBackend
from ..chain import InMemoryLedger
from ..host import HostConfig, HostFaults, HostNode
from ..protocol import PeerIdentity
from ..transport import InMemoryNetwork, InMemoryTransport, PeerInfo

__all__ = ["DEFAULT_MOCK_HOSTS", "MockHost", "MockMarketplace"]

#: The default three hosts: a cheap slow one, a balanced one, a fast expensive one.
DEFAULT_MOCK_HOSTS: tuple[MockHostSpec, ...] = (
    MockHostSpec(
        name="mock-host-alpha", price_per_token=1_000_000_000, latency_ms=80.0, tokens_per_second=30.0
    ),
    MockHostSpec(
        name="mock-host-beta", price_per_token=2_000_000_000, latency_ms=40.0, tokens_per_second=60.0
    ),
    MockHostSpec(
        name="mock-host-gamma",
        price_per_token=3_000_000_000,
        latency_ms=15.0,
        tokens_per_second=120.0,
        models=("llama-3.2-1b-instruct", "tiny-vicuna-1b", "mistral-7b-instruct"),
    ),
)

#: USDC-like token: 6 decimals. Mock hosts price it so that 1 token costs ~ the same as in ETH at 3000 $/ETH.
_USDC_PER_GWEI = 3


@dataclass(slots=True)
class MockHost:
    spec: MockHostSpec
    node: HostNode
    transport: InMemoryTransport
    account: LocalAccount

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id


def _derive(seed: int, *parts: str) -> bytes:
    return hashlib.sha256(":".join(("fabstir-mock", str(seed), *parts)).encode()).digest()


class MockMarketplace:
    """``async with MockMarketplace(MockConfig(seed=1)) as market: ...`` — or let the SDK create one."""

    def __init__(self, config: MockConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config or MockConfig()
        self._clock = clock
        self.network = InMemoryNetwork(clock=clock)
        self.ledger = InMemoryLedger(
            chain_id=31337, fee_basis_points=self.config.fee_basis_points, clock=clock
        )
        self.hosts: list[MockHost] = []
        self._client_accounts: dict[int, LocalAccount] = {}
        self._clients = 0
        self._started = False
        self._closed = False

    @property
    def specs(self) -> tuple[MockHostSpec, ...]:
        return self.config.hosts or DEFAULT_MOCK_HOSTS

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        pacing = self.config.realistic_pacing
        for spec in self.specs:
            identity = PeerIdentity(_derive(self.config.seed, "host", spec.name))
            transport = self.network.create_transport(identity)
            account: LocalAccount = Account.from_key(_derive(self.config.seed, "host-account", spec.name))
            prices = {
                model: {
                    "ETH": spec.price_per_token,
                    "USDC": max(1, spec.price_per_token * _USDC_PER_GWEI // 10**9),
                }
                for model in spec.models
            }
            backend = SimulatedBackend(
                # the serve_model fault's model is served (never advertised): its text is that model's
                (*spec.models, spec.serve_model) if spec.serve_model else spec.models,
                token_delay=(1.0 / spec.tokens_per_second) if pacing else 0.0,
                first_token_delay=(spec.latency_ms / 1000.0) if pacing else 0.0,
                seed=self.config.seed,
            )
            faults = HostFaults(
                reject=spec.reject,
                drop_at_token=spec.drop_at_token,
                first_token_delay=spec.first_token_delay,
                overclaim_tokens=spec.overclaim_tokens,
                error_at_token=spec.error_at_token,
                # in-process, a "stop" fault hangs the job (there is no process to freeze)
                stop_at_token=spec.hang_at_token,
                serve_model=spec.serve_model,
            )
            node = HostNode(
                HostConfig(
                    models=spec.models,
                    prices=prices,
                    max_concurrent_jobs=spec.max_concurrent_jobs,
                    agent=f"fabstir-mock/{spec.name}",
                    faults=faults,
                    batch_interval=0.025 if pacing else 0.0,
                ),
                transport=transport,
                ledger=self.ledger,
                backend=backend,
                account=account,
                clock=self._clock,
            )
            await transport.start()
            await node.start()
            self.hosts.append(MockHost(spec, node, transport, account))

    def register_client(self) -> int:
        """A new client index: each SDK sharing this marketplace gets its own account and peer."""
        self._clients += 1
        return self._clients - 1

    def client_account(self, index: int = 0) -> LocalAccount:
        """A deterministic client account, funded with ``initial_balance`` in ETH and USDC on first use."""
        account = self._client_accounts.get(index)
        if account is None:
            account = Account.from_key(_derive(self.config.seed, "client", str(index)))
            self.ledger.mint(account.address, self.config.initial_balance, "ETH")
            self.ledger.mint(account.address, self.config.initial_balance // 10**9, "USDC")
            self._client_accounts[index] = account
        return account

    def create_client_transport(self, index: int = 0) -> InMemoryTransport:
        return self.network.create_transport(
            PeerIdentity(_derive(self.config.seed, "client-peer", str(index)))
        )

    def bootstrap_peers(self) -> list[PeerInfo]:
        return [PeerInfo(h.peer_id, h.transport.listen_addrs) for h in self.hosts]

    def host_by_peer(self, peer_id: str) -> MockHost | None:
        return next((h for h in self.hosts if h.peer_id == peer_id), None)

    def simulated_latency_ms(self, peer_id: str) -> float | None:
        host = self.host_by_peer(peer_id)
        return host.spec.latency_ms if host is not None else None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts:
            await host.node.aclose()
            await host.transport.aclose()

    async def __aenter__(self) -> MockMarketplace:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

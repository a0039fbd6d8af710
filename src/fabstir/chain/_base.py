"""The chain seam: payment sessions (escrow) and the host registry, whatever executes them.

Two implementations pass one conformance suite (``tests/chain/conformance.py``): the
:class:`~fabstir.chain.InMemoryLedger` (mock mode) and the contracts on an EVM through web3.py (issue 4).

Semantics of a payment session (SPEC §5), which every implementation must keep:

* ``open_session``: the client deposits ``deposit`` (native ETH or an ERC-20) for one ``host`` at
  ``price_per_token`` until ``expiry`` (epoch seconds). The deposit leaves the client's balance.
* The client signs EIP-712 receipts for the *cumulative* amount owed in the session
  (:func:`fabstir.protocol.sign_receipt`). ``settle`` (host only) pays the increment since the last
  settlement: ``host`` gets it minus the treasury fee (``fee_basis_points``), the treasury gets the fee.
  A receipt must be signed by the session's client for this chain and ledger, exceed what was already
  settled (no replay), and not exceed the deposit. Settling is allowed until expiry.
  The fee is rounded down on the *cumulative* amount: a settlement from ``a`` to ``b`` pays
  ``b * fee_bps // 10000 - a * fee_bps // 10000``, so a session's fees are ``settled * fee_bps // 10000``
  however it was split (small increments cannot round the fee away).
* ``close`` (host, with an optional last receipt) settles and refunds the remainder to the client.
* ``reclaim`` (client, after expiry) refunds whatever was never settled and closes the session.
* Funds are conserved: ``deposit == settled_to_host + fees + refunded + still_locked``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from eth_account.signers.local import LocalAccount

__all__ = ["HostRegistration", "PaymentLedger", "SessionInfo", "Settlement"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str  # 0x-prefixed 32-byte hex
    client: str  # checksum addresses
    host: str
    token: str  # "ETH" or a token symbol/address known to the ledger
    deposit: int
    price_per_token: int
    expiry: float
    settled: int  # cumulative amount paid out (host + fee)
    refunded: int
    closed: bool

    @property
    def locked(self) -> int:
        return self.deposit - self.settled - self.refunded


@dataclass(frozen=True, slots=True)
class Settlement:
    session_id: str
    amount: int  # increment paid by this call (host + fee)
    host_amount: int
    fee: int
    refunded: int  # refunded to the client by this call (close)
    tx_hash: str
    gas_used: int


@dataclass(frozen=True, slots=True)
class HostRegistration:
    address: str
    peer_id: str
    models: tuple[str, ...]
    stake: int
    active: bool


@runtime_checkable
class PaymentLedger(Protocol):
    """Errors: :class:`fabstir.InsufficientFundsError`, :class:`fabstir.InvalidReceiptError`,
    :class:`fabstir.PaymentError` (unknown session, wrong caller, expired / not yet expired, closed)."""

    #: ``False`` only for :class:`~fabstir.chain.UnescrowedLedger` (jobs without payment): the host then
    #: takes the session's terms from its own offer and settles nothing; the client watches no settlement.
    escrowed: bool

    @property
    def chain_id(self) -> int: ...

    @property
    def verifying_contract(self) -> str:
        """The address receipts are bound to (EIP-712 ``verifyingContract``)."""
        ...

    @property
    def fee_basis_points(self) -> int: ...

    @property
    def treasury(self) -> str: ...

    async def timestamp(self) -> float:
        """The ledger's clock (epoch seconds): what session expiry is judged by."""
        ...

    async def balance_of(self, address: str, token: str = "ETH") -> int: ...

    async def open_session(
        self,
        client: LocalAccount,
        *,
        host: str,
        token: str,
        deposit: int,
        price_per_token: int,
        expiry: float,
    ) -> SessionInfo: ...

    async def get_session(self, session_id: str) -> SessionInfo: ...

    async def settle(
        self, host: LocalAccount, session_id: str, amount: int, signature: bytes
    ) -> Settlement: ...

    async def close(
        self, host: LocalAccount, session_id: str, amount: int | None = None, signature: bytes | None = None
    ) -> Settlement: ...

    async def reclaim(self, client: LocalAccount, session_id: str) -> Settlement: ...

    async def register_host(
        self, host: LocalAccount, *, peer_id: str, models: tuple[str, ...], stake: int
    ) -> HostRegistration: ...

    async def get_host(self, address: str) -> HostRegistration | None: ...

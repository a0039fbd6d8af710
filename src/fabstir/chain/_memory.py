"""The in-memory ledger: the chain seam of mock mode, with the escrow semantics of the contracts.

Every method changes state without awaiting in between, so each call is atomic under asyncio
concurrency, like a transaction. Amounts are integers; nothing is ever created or destroyed except by
:meth:`InMemoryLedger.mint` (the test faucet), so ``total_supply`` is an invariant tests can check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .._exceptions import InsufficientFundsError, InvalidReceiptError, PaymentError
from ..protocol import recover_receipt_signer
from ._base import HostRegistration, SessionInfo, Settlement

__all__ = ["DEFAULT_TREASURY", "InMemoryLedger", "LedgerEvent"]

DEFAULT_TREASURY = to_checksum_address("0x" + "fe" * 20)


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One state change, as a contract event would record it."""

    index: int
    name: str  # SessionOpened, Settled, SessionClosed, Reclaimed, HostRegistered, ...
    subject: str  # a session id or an address
    timestamp: float
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class _Registration:
    peer_id: str
    models: tuple[str, ...]
    stake: int
    active: bool = True
    unbonding_until: float | None = None


class InMemoryLedger:
    """Implements :class:`~fabstir.chain.PaymentLedger` in process memory."""

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        fee_basis_points: int = 100,
        treasury: str = DEFAULT_TREASURY,
        clock: Callable[[], float] = time.time,
        tokens: Mapping[str, int] | None = None,
        min_stake: int = 0,
        unbonding_delay: float = 7 * 24 * 3600.0,
    ) -> None:
        if not 0 <= fee_basis_points <= 10_000:
            raise ValueError("fee_basis_points must be within 0..10000")
        self._chain_id = chain_id
        self._fee_bps = fee_basis_points
        self._treasury = to_checksum_address(treasury)
        self._clock = clock
        self._tokens = dict(tokens or {"ETH": 18, "USDC": 6})
        self._min_stake = min_stake
        self._unbonding_delay = unbonding_delay
        self._verifying_contract = to_checksum_address(
            keccak(b"fabstir-memory-ledger" + chain_id.to_bytes(32, "big"))[-20:]
        )
        self._balances: dict[tuple[str, str], int] = {}
        self._sessions: dict[str, SessionInfo] = {}
        self._hosts: dict[str, _Registration] = {}
        self._nonce = 0
        self._events: list[LedgerEvent] = []

    # properties --------------------------------------------------------------------------------------
    @property
    def chain_id(self) -> int:
        return self._chain_id

    @property
    def verifying_contract(self) -> str:
        return self._verifying_contract

    @property
    def fee_basis_points(self) -> int:
        return self._fee_bps

    @property
    def treasury(self) -> str:
        return self._treasury

    # balances ----------------------------------------------------------------------------------------
    def _token(self, token: str) -> str:
        if token not in self._tokens:
            raise PaymentError(f"unknown payment token {token!r}")
        return token

    def mint(self, address: str, amount: int, token: str = "ETH") -> None:
        """Test faucet: creates ``amount`` for ``address``."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        key = (to_checksum_address(address), self._token(token))
        self._balances[key] = self._balances.get(key, 0) + amount

    async def balance_of(self, address: str, token: str = "ETH") -> int:
        return self._balances.get((to_checksum_address(address), self._token(token)), 0)

    def total_supply(self, token: str = "ETH") -> int:
        """Everything that exists of ``token``: balances plus what sessions and stakes hold."""
        held = sum(v for (_, t), v in self._balances.items() if t == token)
        locked = sum(s.locked for s in self._sessions.values() if s.token == token)
        staked = sum(r.stake for r in self._hosts.values()) if token == "ETH" else 0
        return held + locked + staked

    def _move(self, source: str | None, target: str | None, token: str, amount: int) -> None:
        if source is not None:
            key = (source, token)
            if self._balances.get(key, 0) < amount:
                raise InsufficientFundsError(
                    f"{source} has {self._balances.get(key, 0)} {token}, needs {amount}"
                )
            self._balances[key] -= amount
        if target is not None:
            self._balances[(target, token)] = self._balances.get((target, token), 0) + amount

    def _emit(self, name: str, subject: str, **data: Any) -> None:
        self._events.append(
            LedgerEvent(len(self._events), name, subject, self._clock(), MappingProxyType(data))
        )

    def events(self, since: int = 0) -> list[LedgerEvent]:
        return self._events[since:]

    def _tx(self) -> str:
        self._nonce += 1
        return "0x" + keccak(b"fabstir-memory-tx" + self._nonce.to_bytes(32, "big")).hex()

    # sessions ----------------------------------------------------------------------------------------
    async def open_session(
        self,
        client: LocalAccount,
        *,
        host: str,
        token: str,
        deposit: int,
        price_per_token: int,
        expiry: float,
    ) -> SessionInfo:
        token = self._token(token)
        host = to_checksum_address(host)
        if deposit < 0:
            raise PaymentError("the deposit must not be negative")
        if price_per_token < 0:
            raise PaymentError("the price per token must not be negative")
        if expiry <= self._clock():
            raise PaymentError("the session would expire in the past")
        if host == client.address:
            raise PaymentError("a client cannot open a session with itself")
        self._move(client.address, None, token, deposit)
        self._nonce += 1
        session_id = (
            "0x"
            + keccak(
                b"fabstir-session" + bytes.fromhex(client.address[2:]) + self._nonce.to_bytes(32, "big")
            ).hex()
        )
        session = SessionInfo(
            session_id=session_id,
            client=client.address,
            host=host,
            token=token,
            deposit=deposit,
            price_per_token=price_per_token,
            expiry=expiry,
            settled=0,
            refunded=0,
            closed=False,
        )
        self._sessions[session_id] = session
        self._emit(
            "SessionOpened", session_id, client=client.address, host=host, token=token, deposit=deposit
        )
        return session

    async def get_session(self, session_id: str) -> SessionInfo:
        session = self._sessions.get(session_id)
        if session is None:
            raise PaymentError(f"unknown session {session_id}")
        return session

    def _check_receipt(self, session: SessionInfo, amount: int, signature: bytes) -> None:
        signer = recover_receipt_signer(
            signature,
            chain_id=self._chain_id,
            verifying_contract=self._verifying_contract,
            session_id=session.session_id,
            amount=amount,
        )
        if signer != session.client:
            raise InvalidReceiptError("the receipt is not signed by the session's client")
        if amount > session.deposit:
            raise InvalidReceiptError(f"the receipt claims {amount}, more than the deposit {session.deposit}")

    def _pay(self, session: SessionInfo, amount: int) -> tuple[SessionInfo, int, int]:
        """Pays the increment up to ``amount`` (cumulative): fee to the treasury, the rest to the host."""
        increment = amount - session.settled
        fee = increment * self._fee_bps // 10_000
        self._move(None, session.host, session.token, increment - fee)
        self._move(None, self._treasury, session.token, fee)
        updated = replace(session, settled=amount)
        self._sessions[session.session_id] = updated
        return updated, increment, fee

    def _open_session_for_host(self, host: LocalAccount, session_id: str) -> SessionInfo:
        session = self._sessions.get(session_id)
        if session is None:
            raise PaymentError(f"unknown session {session_id}")
        if session.closed:
            raise PaymentError(f"session {session_id} is closed")
        if host.address != session.host:
            raise PaymentError("only the session's host can settle it")
        if self._clock() >= session.expiry:
            raise PaymentError(f"session {session_id} expired")
        return session

    async def settle(self, host: LocalAccount, session_id: str, amount: int, signature: bytes) -> Settlement:
        session = self._open_session_for_host(host, session_id)
        self._check_receipt(session, amount, signature)
        if amount <= session.settled:
            raise InvalidReceiptError(
                f"the receipt's amount {amount} does not exceed what was settled ({session.settled})"
            )
        session, increment, fee = self._pay(session, amount)
        self._emit("Settled", session_id, amount=increment, host_amount=increment - fee, fee=fee)
        return Settlement(session_id, increment, increment - fee, fee, 0, self._tx(), 0)

    async def close(
        self, host: LocalAccount, session_id: str, amount: int | None = None, signature: bytes | None = None
    ) -> Settlement:
        session = self._open_session_for_host(host, session_id)
        increment = fee = 0
        if amount is not None:
            if signature is None:
                raise InvalidReceiptError("a final amount needs the client's signature")
            self._check_receipt(session, amount, signature)
            if amount < session.settled:
                raise InvalidReceiptError(f"the receipt's amount {amount} is below what was settled")
            if amount > session.settled:
                session, increment, fee = self._pay(session, amount)
                self._emit("Settled", session_id, amount=increment, host_amount=increment - fee, fee=fee)
        refund = session.locked
        self._move(None, session.client, session.token, refund)
        self._sessions[session_id] = replace(session, refunded=session.refunded + refund, closed=True)
        self._emit("SessionClosed", session_id, settled=session.settled, refunded=refund)
        return Settlement(session_id, increment, increment - fee, fee, refund, self._tx(), 0)

    async def reclaim(self, client: LocalAccount, session_id: str) -> Settlement:
        session = self._sessions.get(session_id)
        if session is None:
            raise PaymentError(f"unknown session {session_id}")
        if client.address != session.client:
            raise PaymentError("only the session's client can reclaim it")
        if session.closed:
            raise PaymentError(f"session {session_id} is closed")
        if self._clock() < session.expiry:
            raise PaymentError(f"session {session_id} has not expired yet")
        refund = session.locked
        self._move(None, session.client, session.token, refund)
        self._sessions[session_id] = replace(session, refunded=session.refunded + refund, closed=True)
        self._emit("Reclaimed", session_id, refunded=refund)
        return Settlement(session_id, 0, 0, 0, refund, self._tx(), 0)

    # host registry -----------------------------------------------------------------------------------
    async def register_host(
        self, host: LocalAccount, *, peer_id: str, models: tuple[str, ...], stake: int
    ) -> HostRegistration:
        current = self._hosts.get(host.address)
        if current is not None and (current.active or current.stake):
            raise PaymentError("host already registered")
        if stake < self._min_stake:
            raise PaymentError(f"the stake must be at least {self._min_stake}")
        if not peer_id or not models:
            raise PaymentError("a registration needs a peer id and at least one model")
        self._move(host.address, None, "ETH", stake)
        self._hosts[host.address] = _Registration(peer_id, tuple(models), stake)
        self._emit("HostRegistered", host.address, peer_id=peer_id, models=tuple(models), stake=stake)
        return HostRegistration(host.address, peer_id, tuple(models), stake, True)

    async def update_host(
        self, host: LocalAccount, *, peer_id: str, models: tuple[str, ...]
    ) -> HostRegistration:
        registration = self._active(host.address)
        registration.peer_id, registration.models = peer_id, tuple(models)
        self._emit("HostUpdated", host.address, peer_id=peer_id, models=tuple(models))
        return HostRegistration(host.address, peer_id, registration.models, registration.stake, True)

    async def deregister_host(self, host: LocalAccount) -> float:
        """Starts unbonding; returns when the stake can be withdrawn."""
        registration = self._active(host.address)
        registration.active = False
        registration.unbonding_until = self._clock() + self._unbonding_delay
        self._emit("HostDeregistered", host.address, unbonding_until=registration.unbonding_until)
        return registration.unbonding_until

    async def withdraw_stake(self, host: LocalAccount) -> int:
        registration = self._hosts.get(host.address)
        if registration is None or registration.active or registration.unbonding_until is None:
            raise PaymentError("deregister first")
        if self._clock() < registration.unbonding_until:
            raise PaymentError("the stake is still unbonding")
        stake = registration.stake
        del self._hosts[host.address]
        self._move(None, host.address, "ETH", stake)
        self._emit("StakeWithdrawn", host.address, stake=stake)
        return stake

    def _active(self, address: str) -> _Registration:
        registration = self._hosts.get(address)
        if registration is None or not registration.active:
            raise PaymentError("host not registered")
        return registration

    async def get_host(self, address: str) -> HostRegistration | None:
        registration = self._hosts.get(to_checksum_address(address))
        if registration is None:
            return None
        return HostRegistration(
            to_checksum_address(address),
            registration.peer_id,
            registration.models,
            registration.stake,
            registration.active,
        )

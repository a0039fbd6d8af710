"""The in-memory ledger: the chain seam of mock mode, with the escrow semantics the contracts have.

It passes the same conformance suite as the on-chain ledger (``tests/chain/conformance.py``), so what
mock mode shows about payments is what a chain does: the same checks, the same error classes, the same
integer fee arithmetic.

Concurrency: every method checks and then changes state without an ``await`` in between, so each call is
atomic under asyncio, like a transaction — two coroutines settling the same session cannot both pass the
"exceeds what was settled" check. The ledger is not thread-safe (nothing in an event loop needs it to be).

Conservation: amounts are integers and move between balances, sessions and stakes; only
:meth:`InMemoryLedger.mint` (the faucet of tests and mock mode) creates any, so
:meth:`~InMemoryLedger.total_supply` is an invariant tests can check.
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

from .._exceptions import (
    ConfigurationError,
    InsufficientFundsError,
    InvalidReceiptError,
    PaymentError,
    ValidationError,
)
from ..protocol import recover_receipt_signer
from ._base import HostRegistration, SessionInfo, Settlement

__all__ = ["DEFAULT_TREASURY", "InMemoryLedger", "LedgerEvent"]

#: Where fees go unless the ledger is given a treasury: an address nobody holds the key of.
DEFAULT_TREASURY = to_checksum_address("0x" + "fe" * 20)

#: The currency of gas and stakes; always known to the ledger.
NATIVE_TOKEN = "ETH"

_DEFAULT_TOKENS: Mapping[str, int] = MappingProxyType({NATIVE_TOKEN: 18, "USDC": 6})


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One state change, as a contract event records it.

    ``name`` is one of ``SessionOpened``, ``Settled``, ``SessionClosed``, ``Reclaimed``, ``HostRegistered``,
    ``HostUpdated``, ``HostDeregistered``, ``StakeWithdrawn``; ``subject`` is the session id (session
    events) or the host's address (registry events); ``index`` is the event's position in the log, so
    ``ledger.events(since=last.index + 1)`` reads what came after it.
    """

    name: str
    subject: str
    data: Mapping[str, Any] = field(default_factory=_empty, hash=False)
    timestamp: float = 0.0
    index: int = 0


@dataclass(slots=True)
class _Registration:
    peer_id: str
    models: tuple[str, ...]
    stake: int
    active: bool = True
    unbonding_until: float | None = None

    def public(self, address: str) -> HostRegistration:
        return HostRegistration(address, self.peer_id, self.models, self.stake, self.active)


class InMemoryLedger:
    """Implements :class:`~fabstir.chain.PaymentLedger` (sessions, receipts, fees, the host registry) in
    process memory, on a clock it is given (epoch seconds; tests pass a fake one).

    Every failure is a :class:`~fabstir.PaymentError`: :class:`~fabstir.InsufficientFundsError` when a
    balance is short, :class:`~fabstir.InvalidReceiptError` for a receipt that is forged, bound to other
    terms, replayed, not increasing or over the deposit, and a plain ``PaymentError`` for the rest
    (unknown session or token, wrong caller, expired / not expired, closed, bad arguments).

    Beyond the protocol: :meth:`mint` (faucet), :meth:`total_supply`, the registry's :meth:`update_host`,
    :meth:`deregister_host` and :meth:`withdraw_stake`, and the event log :meth:`events`.
    """

    escrowed = True

    def __init__(
        self,
        *,
        chain_id: int = 31337,
        fee_basis_points: int = 100,
        treasury: str = DEFAULT_TREASURY,
        clock: Callable[[], float] = time.time,
        tokens: Mapping[str, int] = _DEFAULT_TOKENS,
        min_stake: int = 0,
        unbonding_delay: float = 7 * 24 * 3600.0,
    ) -> None:
        if chain_id <= 0:
            raise ConfigurationError(f"chain_id must be positive, got {chain_id}")
        if not 0 <= fee_basis_points <= 10_000:
            raise ConfigurationError(f"fee_basis_points must be within 0..10000, got {fee_basis_points}")
        if NATIVE_TOKEN not in tokens:
            raise ConfigurationError(f"tokens must include {NATIVE_TOKEN} (stakes are paid in it)")
        if any(decimals < 0 for decimals in tokens.values()):
            raise ConfigurationError("token decimals must not be negative")
        if min_stake < 0:
            raise ConfigurationError(f"min_stake must not be negative, got {min_stake}")
        if unbonding_delay < 0:
            raise ConfigurationError(f"unbonding_delay must not be negative, got {unbonding_delay}")
        try:
            self._treasury = to_checksum_address(treasury)
        except ValueError as exc:
            raise ConfigurationError(f"treasury is not an address: {treasury!r}") from exc
        self._chain_id = chain_id
        self._fee_bps = fee_basis_points
        self._clock = clock
        self._tokens: Mapping[str, int] = MappingProxyType(dict(tokens))
        self._min_stake = min_stake
        self._unbonding_delay = unbonding_delay
        # Receipts are bound to (chain id, verifying contract): a receipt for one ledger is worthless on
        # another chain, as it would be for another deployment of the contracts.
        self._contract_bytes = keccak(b"fabstir-memory-ledger" + chain_id.to_bytes(32, "big"))[-20:]
        self._verifying_contract = to_checksum_address(self._contract_bytes)
        self._balances: dict[tuple[str, str], int] = {}
        self._sessions: dict[str, SessionInfo] = {}
        self._session_nonces: dict[str, int] = {}
        self._hosts: dict[str, _Registration] = {}
        self._tx_count = 0
        self._events: list[LedgerEvent] = []

    # ------------------------------------------------------------------------------------------ properties
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

    async def timestamp(self) -> float:
        """The ledger's clock, which judges expiry."""
        return self._clock()

    @property
    def tokens(self) -> Mapping[str, int]:
        """The tokens this ledger knows: symbol → decimals."""
        return self._tokens

    @property
    def min_stake(self) -> int:
        return self._min_stake

    @property
    def unbonding_delay(self) -> float:
        return self._unbonding_delay

    def fee_for(self, cumulative: int) -> int:
        """The treasury's share of a session that has settled ``cumulative`` in total.

        Rounding happens on the cumulative amount, so a settlement pays ``fee_for(new) - fee_for(old)``
        and the fees of a session do not depend on how its settlements were split (settling in
        increments too small to carry a fee cannot avoid it)."""
        return cumulative * self._fee_bps // 10_000

    # ------------------------------------------------------------------------------------------ balances
    def _token(self, token: str) -> str:
        if token not in self._tokens:
            raise PaymentError(f"unknown payment token {token!r} (known: {', '.join(self._tokens)})")
        return token

    @staticmethod
    def _address(address: str, what: str = "address") -> str:
        try:
            return to_checksum_address(address)
        except (ValueError, TypeError) as exc:
            raise PaymentError(f"{what} is not an address: {address!r}") from exc

    def mint(self, address: str, amount: int, token: str = NATIVE_TOKEN) -> None:
        """Test faucet: creates ``amount`` of ``token`` for ``address`` (the only way funds appear)."""
        if amount < 0:
            raise ValidationError(f"cannot mint a negative amount ({amount})")
        self._credit(self._address(address), self._token(token), amount)

    async def balance_of(self, address: str, token: str = NATIVE_TOKEN) -> int:
        return self._balances.get((self._address(address), self._token(token)), 0)

    def total_supply(self, token: str = NATIVE_TOKEN) -> int:
        """Everything that exists of ``token``: balances, plus what open sessions lock, plus stakes."""
        token = self._token(token)
        held = sum(amount for (_, t), amount in self._balances.items() if t == token)
        locked = sum(s.locked for s in self._sessions.values() if s.token == token)
        staked = sum(r.stake for r in self._hosts.values()) if token == NATIVE_TOKEN else 0
        return held + locked + staked

    def _debit(self, address: str, token: str, amount: int) -> None:
        balance = self._balances.get((address, token), 0)
        if balance < amount:
            raise InsufficientFundsError(
                f"{address} has {balance} {token}, needs {amount}",
                context={"address": address, "token": token, "balance": balance, "needed": amount},
            )
        self._balances[(address, token)] = balance - amount

    def _credit(self, address: str, token: str, amount: int) -> None:
        self._balances[(address, token)] = self._balances.get((address, token), 0) + amount

    # ------------------------------------------------------------------------------------------ events
    def _emit(self, name: str, subject: str, **data: Any) -> None:
        self._events.append(
            LedgerEvent(name, subject, MappingProxyType(data), self._clock(), len(self._events))
        )

    def events(self, since: int = 0) -> list[LedgerEvent]:
        """The events from index ``since`` on, oldest first (the log only grows)."""
        return self._events[since:]

    def _tx_hash(self) -> str:
        self._tx_count += 1
        return "0x" + keccak(self._contract_bytes + b"tx" + self._tx_count.to_bytes(32, "big")).hex()

    # ------------------------------------------------------------------------------------------ sessions
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
        """Locks ``deposit`` of the client's ``token`` for ``host`` until ``expiry``. The session id is
        ``0x`` + 64 hex digits, derived from this ledger, the client and the client's session count."""
        token = self._token(token)
        host = self._address(host, "host")
        if deposit <= 0:
            raise PaymentError(f"the deposit must be positive, got {deposit}")
        if price_per_token <= 0:
            raise PaymentError(f"the price per token must be positive, got {price_per_token}")
        if expiry <= self._clock():
            raise PaymentError(f"the session would already be expired (expiry {expiry})")
        if host == client.address:
            raise PaymentError("a client cannot open a session with itself as the host")
        self._debit(client.address, token, deposit)
        nonce = self._session_nonces.get(client.address, 0)
        self._session_nonces[client.address] = nonce + 1
        session_id = (
            "0x"
            + keccak(
                self._contract_bytes + bytes.fromhex(client.address[2:]) + nonce.to_bytes(32, "big")
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
            "SessionOpened",
            session_id,
            client=client.address,
            host=host,
            token=token,
            deposit=deposit,
            price_per_token=price_per_token,
            expiry=expiry,
        )
        return session

    def _session(self, session_id: str) -> SessionInfo:
        session = self._sessions.get(str(session_id).lower())
        if session is None:
            raise PaymentError(f"unknown session {session_id!r}")
        return session

    async def get_session(self, session_id: str) -> SessionInfo:
        return self._session(session_id)

    def _settleable(self, host: LocalAccount, session_id: str) -> SessionInfo:
        """The session, if ``host`` may settle or close it now."""
        session = self._session(session_id)
        if session.closed:
            raise PaymentError(f"session {session.session_id} is closed")
        if host.address != session.host:
            raise PaymentError(f"only the session's host ({session.host}) can settle or close it")
        if self._clock() >= session.expiry:
            raise PaymentError(f"session {session.session_id} expired at {session.expiry}")
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
            raise InvalidReceiptError(
                "the receipt is not signed by the session's client for this session, chain and ledger"
            )
        if amount > session.deposit:
            raise InvalidReceiptError(f"the receipt claims {amount}, more than the deposit {session.deposit}")

    def _pay(self, session: SessionInfo, amount: int) -> tuple[SessionInfo, int, int]:
        """Pays the increment from what was settled up to ``amount`` (cumulative): the fee to the
        treasury, the rest to the host. Returns the updated session, the increment and the fee."""
        increment = amount - session.settled
        fee = self.fee_for(amount) - self.fee_for(session.settled)
        self._credit(session.host, session.token, increment - fee)
        self._credit(self._treasury, session.token, fee)
        updated = replace(session, settled=amount)
        self._sessions[session.session_id] = updated
        self._emit(
            "Settled",
            session.session_id,
            amount=increment,
            host_amount=increment - fee,
            fee=fee,
            settled=amount,
        )
        return updated, increment, fee

    async def settle(self, host: LocalAccount, session_id: str, amount: int, signature: bytes) -> Settlement:
        """Pays the increment the client's receipt for the cumulative ``amount`` acknowledges."""
        session = self._settleable(host, session_id)
        self._check_receipt(session, amount, signature)
        if amount <= session.settled:
            raise InvalidReceiptError(
                f"the receipt's amount {amount} does not exceed what was settled ({session.settled})"
            )
        session, increment, fee = self._pay(session, amount)
        return Settlement(session.session_id, increment, increment - fee, fee, 0, self._tx_hash(), 0)

    async def close(
        self, host: LocalAccount, session_id: str, amount: int | None = None, signature: bytes | None = None
    ) -> Settlement:
        """Settles a last receipt (if given; one for exactly what was settled changes nothing), refunds
        the rest of the deposit to the client and closes the session."""
        session = self._settleable(host, session_id)
        increment = fee = 0
        if amount is not None or signature is not None:
            if amount is None or signature is None:
                raise InvalidReceiptError("a final receipt needs both its amount and the client's signature")
            self._check_receipt(session, amount, signature)
            if amount < session.settled:
                raise InvalidReceiptError(
                    f"the receipt's amount {amount} is below what was settled ({session.settled})"
                )
            if amount > session.settled:
                session, increment, fee = self._pay(session, amount)
        refund = session.locked
        self._credit(session.client, session.token, refund)
        self._sessions[session.session_id] = replace(session, refunded=session.refunded + refund, closed=True)
        self._emit("SessionClosed", session.session_id, settled=session.settled, refunded=refund)
        return Settlement(session.session_id, increment, increment - fee, fee, refund, self._tx_hash(), 0)

    async def reclaim(self, client: LocalAccount, session_id: str) -> Settlement:
        """After expiry, the client takes back what was never settled and the session closes."""
        session = self._session(session_id)
        if session.closed:
            raise PaymentError(f"session {session.session_id} is closed")
        if client.address != session.client:
            raise PaymentError(f"only the session's client ({session.client}) can reclaim it")
        if self._clock() < session.expiry:
            raise PaymentError(f"session not expired yet: it expires at {session.expiry}")
        refund = session.locked
        self._credit(session.client, session.token, refund)
        self._sessions[session.session_id] = replace(session, refunded=session.refunded + refund, closed=True)
        self._emit("Reclaimed", session.session_id, refunded=refund)
        return Settlement(session.session_id, 0, 0, 0, refund, self._tx_hash(), 0)

    # ------------------------------------------------------------------------------------------ host registry
    @staticmethod
    def _metadata(peer_id: str, models: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        models = tuple(models)
        if not peer_id:
            raise PaymentError("a host registration needs a peer id")
        if not models or not all(models):
            raise PaymentError("a host registration needs at least one model, none of them empty")
        return peer_id, models

    async def register_host(
        self, host: LocalAccount, *, peer_id: str, models: tuple[str, ...], stake: int
    ) -> HostRegistration:
        """Registers ``host`` with its metadata, locking ``stake`` (native token, at least ``min_stake``)."""
        peer_id, models = self._metadata(peer_id, models)
        current = self._hosts.get(host.address)
        if current is not None:
            raise PaymentError(
                "host already registered"
                if current.active
                else "host is unbonding: withdraw the stake before registering again"
            )
        if stake < self._min_stake:
            raise PaymentError(f"the stake must be at least {self._min_stake}, got {stake}")
        self._debit(host.address, NATIVE_TOKEN, stake)
        registration = _Registration(peer_id, models, stake)
        self._hosts[host.address] = registration
        self._emit("HostRegistered", host.address, peer_id=peer_id, models=models, stake=stake)
        return registration.public(host.address)

    def _active(self, address: str) -> _Registration:
        registration = self._hosts.get(address)
        if registration is None or not registration.active:
            raise PaymentError(f"host {address} is not registered")
        return registration

    async def update_host(
        self, host: LocalAccount, *, peer_id: str | None = None, models: tuple[str, ...] | None = None
    ) -> HostRegistration:
        """Replaces the metadata given (``None`` keeps it) of an active registration."""
        registration = self._active(host.address)
        peer_id, models = self._metadata(
            registration.peer_id if peer_id is None else peer_id,
            registration.models if models is None else models,
        )
        registration.peer_id, registration.models = peer_id, models
        self._emit("HostUpdated", host.address, peer_id=peer_id, models=models)
        return registration.public(host.address)

    async def deregister_host(self, host: LocalAccount) -> float:
        """Deactivates the registration and starts unbonding; returns when the stake can be withdrawn."""
        registration = self._active(host.address)
        registration.active = False
        registration.unbonding_until = self._clock() + self._unbonding_delay
        self._emit("HostDeregistered", host.address, unbonding_until=registration.unbonding_until)
        return registration.unbonding_until

    async def withdraw_stake(self, host: LocalAccount) -> int:
        """After the unbonding delay, returns the stake to the host and forgets the registration."""
        registration = self._hosts.get(host.address)
        if registration is None:
            raise PaymentError(f"host {host.address} is not registered")
        if registration.active or registration.unbonding_until is None:
            raise PaymentError("deregister the host before withdrawing its stake")
        if self._clock() < registration.unbonding_until:
            raise PaymentError(f"the stake is unbonding until {registration.unbonding_until}")
        del self._hosts[host.address]
        self._credit(host.address, NATIVE_TOKEN, registration.stake)
        self._emit("StakeWithdrawn", host.address, stake=registration.stake)
        return registration.stake

    async def get_host(self, address: str) -> HostRegistration | None:
        """The registration (``active`` false while unbonding), or ``None`` if there is none."""
        address = self._address(address)
        registration = self._hosts.get(address)
        return None if registration is None else registration.public(address)

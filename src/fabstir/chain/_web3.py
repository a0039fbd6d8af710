"""The on-chain ledger: :class:`~fabstir.chain.PaymentLedger` over the PaymentSessions and HostRegistry
contracts, through web3.py (``AsyncWeb3`` + ``AsyncHTTPProvider``).

The contracts decide everything (who may settle, expiry by block timestamp, fees, conservation); this
class encodes calls, signs them locally (:mod:`fabstir.chain._tx`: per-account nonces, preflight,
receipts, confirmations) and maps reverts by selector to the errors the in-memory ledger raises, so both
pass one conformance suite. It checks up front only what cannot be encoded (negative amounts) and what
saves a doomed transaction (a balance short of the deposit or stake).

Gas: the session operations cost a bounded amount (fixed storage, at most two token transfers), so they
are sent with fixed limits — each about 1.5–2x what they measure, so an estimate is not needed (it
re-executes the call several times); the registry's calls carry strings of any length and are estimated.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any, cast

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from eth_utils.address import to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.logs import DISCARD
from web3.types import TxReceipt

from .._config import ChainConfig
from .._exceptions import ConfigurationError, InsufficientFundsError, InvalidReceiptError, PaymentError
from .._models import ChainTransaction
from ._artifacts import RevertDecoder, load_artifact
from ._base import HostRegistration, SessionInfo, Settlement
from ._tx import Transactor
from ._watcher import SessionWatcher

__all__ = ["GAS_LIMITS", "Web3Ledger"]

NATIVE_TOKEN = "ETH"
_ZERO = "0x" + "00" * 20
_SESSION_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_UINT256 = 2**256
_UINT64 = 2**64

#: Gas limits of the session operations (see the module docstring; measured use in the report of
#: ``tests/chain/test_web3_ledger.py``): ETH and ERC-20 variants where they differ.
GAS_LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "approve": 100_000,
        "open": 350_000,
        "open_erc20": 400_000,
        "settle": 200_000,
        "close": 250_000,
        "reclaim": 150_000,
    }
)


class Web3Ledger:
    """A :class:`~fabstir.chain.PaymentLedger` on an EVM chain (see the module docstring).

    Create it with :meth:`connect` (or :meth:`from_config`), which reads the chain id, the fee, the
    treasury and the registry's parameters once; close it with :meth:`aclose` (or ``async with``).

    ``tokens`` maps payment token symbols to ERC-20 addresses; ``"ETH"`` is always the native token
    (``address(0)`` on the contracts). Beyond the protocol: :meth:`update_host`, :meth:`deregister_host`,
    :meth:`withdraw_stake` (as the in-memory ledger), :meth:`timestamp` (the chain's clock, which decides
    expiry), :meth:`gas_spent` and :meth:`fee_for`.
    """

    escrowed = True

    def __init__(
        self,
        transactor: Transactor,
        *,
        payment_sessions: str,
        host_registry: str,
        tokens: Mapping[str, str],
        fee_basis_points: int,
        treasury: str,
        min_stake: int,
        unbonding_delay: int,
    ) -> None:
        self._tx = transactor
        w3 = transactor.w3
        self._sessions: Any = w3.eth.contract(
            address=to_checksum_address(payment_sessions), abi=load_artifact("PaymentSessions").abi
        )
        self._registry: Any = w3.eth.contract(
            address=to_checksum_address(host_registry), abi=load_artifact("HostRegistry").abi
        )
        token_abi = load_artifact("TestToken").abi
        self._tokens: dict[str, str] = {NATIVE_TOKEN: _ZERO}
        self._erc20: dict[str, Any] = {}
        for symbol, address in tokens.items():
            if symbol == NATIVE_TOKEN:
                continue
            checksummed = to_checksum_address(address)
            self._tokens[symbol] = checksummed
            self._erc20[symbol] = w3.eth.contract(address=checksummed, abi=token_abi)
        self._symbols = {address.lower(): symbol for symbol, address in self._tokens.items()}
        self._fee_bps = fee_basis_points
        self._treasury = to_checksum_address(treasury)
        self._min_stake = min_stake
        self._unbonding_delay = unbonding_delay
        self._approvals: dict[tuple[str, str], asyncio.Lock] = {}
        self._opened: dict[str, tuple[ChainTransaction, ...]] = {}  # session id → approve/open records

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    async def connect(
        cls,
        rpc_url: str,
        *,
        payment_sessions: str,
        host_registry: str,
        tokens: Mapping[str, str] | None = None,
        chain_id: int | None = None,
        confirmations: int = 1,
        timeout: float = 120.0,
        poll_interval: float = 0.01,
    ) -> Web3Ledger:
        """Connects to the node at ``rpc_url`` and reads the deployment's parameters.

        ``chain_id``, if given, must be the node's (a guard against signing for the wrong chain).
        Raises :class:`~fabstir.ConfigurationError` if no contract is deployed at an address, and a
        retryable :class:`~fabstir.PaymentError` if the node cannot be reached."""
        w3: AsyncWeb3[Any] = AsyncWeb3(AsyncHTTPProvider(rpc_url))
        decoder = RevertDecoder()
        try:
            try:
                actual = int(await w3.eth.chain_id)
            except Exception as exc:
                raise PaymentError(
                    f"cannot reach the chain node at {rpc_url}: {exc}", retryable=True
                ) from exc
            if chain_id is not None and chain_id != actual:
                raise ConfigurationError(f"the node at {rpc_url} serves chain {actual}, not {chain_id}")
            for name, address in (("PaymentSessions", payment_sessions), ("HostRegistry", host_registry)):
                if not await w3.eth.get_code(to_checksum_address(address)):
                    raise ConfigurationError(f"no {name} contract at {address} on chain {actual}")
            transactor = Transactor(
                w3,
                chain_id=actual,
                decoder=decoder,
                confirmations=confirmations,
                timeout=timeout,
                poll_interval=poll_interval,
            )
            sessions = w3.eth.contract(
                address=to_checksum_address(payment_sessions), abi=load_artifact("PaymentSessions").abi
            )
            registry = w3.eth.contract(
                address=to_checksum_address(host_registry), abi=load_artifact("HostRegistry").abi
            )
            try:
                fee = int(await sessions.functions.feeBasisPoints().call())
                treasury = str(await sessions.functions.treasury().call())
                min_stake = int(await registry.functions.minStake().call())
                delay = int(await registry.functions.unbondingDelay().call())
            except Exception as exc:
                raise transactor.error(exc, "reading the deployment's parameters") from exc
        except BaseException:
            await w3.provider.disconnect()
            raise
        return cls(
            transactor,
            payment_sessions=payment_sessions,
            host_registry=host_registry,
            tokens=tokens or {},
            fee_basis_points=fee,
            treasury=treasury,
            min_stake=min_stake,
            unbonding_delay=delay,
        )

    @classmethod
    async def from_config(cls, config: ChainConfig) -> Web3Ledger:
        """From ``ChainConfig``: ``rpc_url``, ``chain_id``, ``confirmations`` and ``contracts``, which
        names ``PaymentSessions`` and ``HostRegistry``; its other entries are payment tokens
        (symbol → ERC-20 address, e.g. ``"USDC"``)."""
        contracts = dict(config.contracts)
        missing = [name for name in ("PaymentSessions", "HostRegistry") if name not in contracts]
        if config.rpc_url is None or missing:
            raise ConfigurationError(
                "an on-chain ledger needs chain.rpc_url and chain.contracts naming "
                + ", ".join(missing or ["PaymentSessions", "HostRegistry"])
            )
        sessions, registry = contracts.pop("PaymentSessions"), contracts.pop("HostRegistry")
        return await cls.connect(
            config.rpc_url,
            payment_sessions=sessions,
            host_registry=registry,
            tokens=contracts,
            chain_id=config.chain_id,
            confirmations=config.confirmations,
        )

    async def aclose(self) -> None:
        """Closes the connection to the node (idempotent)."""
        await self._tx.w3.provider.disconnect()

    async def __aenter__(self) -> Web3Ledger:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------ properties
    @property
    def chain_id(self) -> int:
        return self._tx.chain_id

    @property
    def verifying_contract(self) -> str:
        return str(self._sessions.address)

    @property
    def host_registry(self) -> str:
        return str(self._registry.address)

    @property
    def fee_basis_points(self) -> int:
        return self._fee_bps

    @property
    def treasury(self) -> str:
        return self._treasury

    @property
    def tokens(self) -> Mapping[str, str]:
        """Payment tokens: symbol → address (``"ETH"`` → the zero address)."""
        return MappingProxyType(self._tokens)

    @property
    def min_stake(self) -> int:
        return self._min_stake

    @property
    def unbonding_delay(self) -> float:
        return float(self._unbonding_delay)

    def session_watcher(self, **options: Any) -> SessionWatcher:
        """A :class:`~fabstir.chain.SessionWatcher` of this deployment's PaymentSessions over this
        ledger's connection (``options``: its keyword arguments, e.g. ``confirmations``)."""
        return SessionWatcher(self._tx.w3, self.verifying_contract, **options)

    def fee_for(self, cumulative: int) -> int:
        """The treasury's share of a session that settled ``cumulative`` (the contract's ``feeFor``)."""
        return cumulative * self._fee_bps // 10_000

    def gas_spent(self, address: str) -> int:
        """Wei spent on gas by this ledger's transactions from ``address`` (reverted ones included)."""
        return self._tx.gas_spent(self._address(address))

    async def timestamp(self) -> float:
        """The latest block's timestamp: the clock expiries are judged by."""
        try:
            block = await self._tx.w3.eth.get_block("latest")
        except Exception as exc:
            raise self._tx.error(exc, "reading the latest block") from exc
        return float(block["timestamp"])

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _address(address: str, what: str = "address") -> ChecksumAddress:
        try:
            return to_checksum_address(address)
        except (ValueError, TypeError) as exc:
            raise PaymentError(f"{what} is not an address: {address!r}") from exc

    def _token(self, token: str) -> str:
        address = self._tokens.get(token)
        if address is None:
            raise PaymentError(f"unknown payment token {token!r} (known: {', '.join(self._tokens)})")
        return address

    @staticmethod
    def _session_id(session_id: str) -> bytes:
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            raise PaymentError(f"unknown session {session_id!r} (not a 32-byte hex id)")
        return bytes.fromhex(session_id[2:])

    async def _view(self, function: Any, what: str) -> Any:
        try:
            return await function.call()
        except Exception as exc:
            raise self._tx.error(exc, what) from exc

    def _encode(self, contract: Any, name: str, *args: Any) -> bytes:
        return bytes.fromhex(str(contract.encode_abi(name, args=list(args))).removeprefix("0x"))

    @staticmethod
    def _events(contract: Any, name: str, receipt: TxReceipt) -> list[Any]:
        return [
            event["args"]
            for event in getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD)
        ]

    # ------------------------------------------------------------------------------------ balances
    async def balance_of(self, address: str, token: str = NATIVE_TOKEN) -> int:
        holder = self._address(address)
        self._token(token)
        if token == NATIVE_TOKEN:
            try:
                return int(await self._tx.w3.eth.get_balance(holder))
            except Exception as exc:
                raise self._tx.error(exc, "reading a balance") from exc
        return int(await self._view(self._erc20[token].functions.balanceOf(holder), "reading a balance"))

    async def _require(self, address: str, token: str, amount: int) -> None:
        balance = await self.balance_of(address, token)
        if balance < amount:
            raise InsufficientFundsError(
                f"{address} has {balance} {token}, needs {amount}",
                context={"address": address, "token": token, "balance": balance, "needed": amount},
            )

    # ------------------------------------------------------------------------------------ sessions
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
        """Deposits into a new session (approving the ERC-20 first if the allowance is short)."""
        token_address = self._token(token)
        host_address = self._address(host, "host")
        if deposit < 0:
            raise PaymentError(f"the deposit must be positive, got {deposit}")
        if price_per_token < 0:
            raise PaymentError(f"the price per token must be positive, got {price_per_token}")
        if deposit >= _UINT256 or price_per_token >= _UINT256 or int(expiry) >= _UINT64:
            raise PaymentError("the deposit, price or expiry does not fit the contract's integers")
        data = self._encode(
            self._sessions,
            "openSession",
            host_address,
            token_address,
            deposit,
            price_per_token,
            max(0, int(expiry)),
        )
        approval: TxReceipt | None = None
        if token == NATIVE_TOKEN:
            await self._require(client.address, token, deposit)
            receipt = await self._tx.transact(
                client,
                to=self.verifying_contract,
                data=data,
                value=deposit,
                gas=GAS_LIMITS["open"],
                what="opening a session",
            )
        else:
            # One approve-then-open at a time per client and token: concurrent opens would otherwise
            # overwrite each other's allowance.
            lock = self._approvals.setdefault((client.address, token), asyncio.Lock())
            async with lock:
                await self._require(client.address, token, deposit)
                approval = await self._approve(client, token, deposit)
                receipt = await self._tx.transact(
                    client,
                    to=self.verifying_contract,
                    data=data,
                    gas=GAS_LIMITS["open_erc20"],
                    what="opening a session",
                )
        opened = self._events(self._sessions, "SessionOpened", receipt)
        if not opened:
            raise PaymentError("opening a session: the receipt has no SessionOpened event")
        session_id = "0x" + bytes(opened[0]["sessionId"]).hex()
        self._opened[session_id] = tuple(
            record for record in (self._record(approval), self._record(receipt)) if record is not None
        )
        return await self.get_session(session_id)

    def _record(self, receipt: TxReceipt | None) -> ChainTransaction | None:
        if receipt is None:
            return None
        tx_hash = receipt["transactionHash"].to_0x_hex()
        return next((r for r in reversed(self._tx.sent) if r.tx_hash == tx_hash), None)

    def transactions(self, address: str | None = None) -> list[ChainTransaction]:
        """The transactions this ledger sent (from ``address``, or all), oldest first (the last 1,000)."""
        key = None if address is None else self._address(address)
        return [record for record in self._tx.sent if key is None or record.sender == key]

    def opening_transactions(self, session_id: str) -> tuple[ChainTransaction, ...]:
        """The transactions this ledger sent to open ``session_id`` (an approval, if one was needed, and
        the open); empty for a session it did not open."""
        return self._opened.get(session_id.lower(), ())

    async def transaction(self, tx_hash: str, description: str) -> ChainTransaction:
        """Any transaction on the chain, read from its receipt (e.g. the host's settlement)."""
        try:
            receipt = await self._tx.w3.eth.get_transaction_receipt(cast(HexStr, tx_hash))
        except Exception as exc:
            raise self._tx.error(exc, f"reading transaction {tx_hash}") from exc
        gas_used = int(receipt["gasUsed"])
        return ChainTransaction(
            description=description,
            tx_hash=tx_hash,
            sender=to_checksum_address(receipt["from"]),
            gas_used=gas_used,
            gas_cost=gas_used * int(receipt.get("effectiveGasPrice", 0)),
            block_number=int(receipt["blockNumber"]),
        )

    async def _approve(self, client: LocalAccount, token: str, amount: int) -> TxReceipt | None:
        contract = self._erc20[token]
        allowance = int(
            await self._view(
                contract.functions.allowance(client.address, self.verifying_contract), "reading an allowance"
            )
        )
        if allowance >= amount:
            return None
        return await self._tx.transact(
            client,
            to=str(contract.address),
            data=self._encode(contract, "approve", self.verifying_contract, amount),
            gas=GAS_LIMITS["approve"],
            what=f"approving {token} for the deposit",
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        raw = self._session_id(session_id)
        values = await self._view(self._sessions.functions.getSession(raw), "reading a session")
        client, host, token, deposit, price, expiry, settled, refunded, closed = values
        if int(client, 16) == 0:
            raise PaymentError(f"unknown session {session_id}")
        return SessionInfo(
            session_id="0x" + raw.hex(),
            client=to_checksum_address(client),
            host=to_checksum_address(host),
            token=self._symbols.get(str(token).lower(), to_checksum_address(token)),
            deposit=int(deposit),
            price_per_token=int(price),
            expiry=float(expiry),
            settled=int(settled),
            refunded=int(refunded),
            closed=bool(closed),
        )

    @staticmethod
    def _amount(amount: int) -> int:
        if not 0 <= amount < _UINT256:
            raise InvalidReceiptError(f"the receipt's amount {amount} is not a valid cumulative amount")
        return amount

    def _settlement(self, session_id: bytes, receipt: TxReceipt) -> Settlement:
        paid = self._events(self._sessions, "Settled", receipt)
        host_amount = sum(int(e["hostAmount"]) for e in paid)
        fee = sum(int(e["fee"]) for e in paid)
        refunded = sum(
            int(e["refunded"])
            for name in ("SessionClosed", "Reclaimed")
            for e in self._events(self._sessions, name, receipt)
        )
        return Settlement(
            session_id="0x" + session_id.hex(),
            amount=host_amount + fee,
            host_amount=host_amount,
            fee=fee,
            refunded=refunded,
            tx_hash=receipt["transactionHash"].to_0x_hex(),
            gas_used=int(receipt["gasUsed"]),
        )

    async def settle(self, host: LocalAccount, session_id: str, amount: int, signature: bytes) -> Settlement:
        raw = self._session_id(session_id)
        data = self._encode(self._sessions, "settle", raw, self._amount(amount), bytes(signature))
        receipt = await self._tx.transact(
            host, to=self.verifying_contract, data=data, gas=GAS_LIMITS["settle"], what="settling a receipt"
        )
        return self._settlement(raw, receipt)

    async def close(
        self, host: LocalAccount, session_id: str, amount: int | None = None, signature: bytes | None = None
    ) -> Settlement:
        raw = self._session_id(session_id)
        if (amount is None) != (signature is None):
            raise InvalidReceiptError("a final receipt needs both its amount and the client's signature")
        data = self._encode(self._sessions, "close", raw, self._amount(amount or 0), bytes(signature or b""))
        receipt = await self._tx.transact(
            host, to=self.verifying_contract, data=data, gas=GAS_LIMITS["close"], what="closing a session"
        )
        return self._settlement(raw, receipt)

    async def reclaim(self, client: LocalAccount, session_id: str) -> Settlement:
        raw = self._session_id(session_id)
        receipt = await self._tx.transact(
            client,
            to=self.verifying_contract,
            data=self._encode(self._sessions, "reclaim", raw),
            gas=GAS_LIMITS["reclaim"],
            what="reclaiming a session",
        )
        return self._settlement(raw, receipt)

    # ------------------------------------------------------------------------------------ host registry
    async def register_host(
        self,
        host: LocalAccount,
        *,
        peer_id: str,
        models: tuple[str, ...],
        stake: int,
        prices: tuple[int, ...] | None = None,
    ) -> HostRegistration:
        """Registers ``host``, staking ``stake`` wei; ``prices`` (per model, default 0) are published
        with the models."""
        if stake < 0:
            raise PaymentError(f"the stake must be at least {self._min_stake}, got {stake}")
        models = tuple(models)
        prices = tuple(prices) if prices is not None else (0,) * len(models)
        await self._require(host.address, NATIVE_TOKEN, stake)
        await self._tx.transact(
            host,
            to=self.host_registry,
            data=self._encode(self._registry, "register", peer_id, list(models), list(prices)),
            value=stake,
            what="registering the host",
        )
        registration = await self.get_host(host.address)
        if registration is None:  # pragma: no cover - the contract guarantees it
            raise PaymentError("registering the host: no registration after the transaction")
        return registration

    async def _host(self, address: str) -> tuple[str, tuple[str, ...], tuple[int, ...], int, bool, int]:
        values = await self._view(self._registry.functions.getHost(self._address(address)), "reading a host")
        peer_id, models, prices, stake, active, until = values
        return (
            str(peer_id),
            tuple(models),
            tuple(int(p) for p in prices),
            int(stake),
            bool(active),
            int(until),
        )

    async def get_host(self, address: str) -> HostRegistration | None:
        """The registration (``active`` false while unbonding), or ``None`` if there is none."""
        checksummed = self._address(address)
        peer_id, models, _, stake, active, _ = await self._host(checksummed)
        if not peer_id:
            return None
        return HostRegistration(checksummed, peer_id, models, stake, active)

    async def update_host(
        self,
        host: LocalAccount,
        *,
        peer_id: str | None = None,
        models: tuple[str, ...] | None = None,
        prices: tuple[int, ...] | None = None,
    ) -> HostRegistration:
        """Replaces the metadata given (``None`` keeps it; new models without prices get price 0)."""
        current_peer, current_models, current_prices, _, active, _ = await self._host(host.address)
        if not current_peer or not active:
            raise PaymentError(f"host {host.address} is not registered")
        new_models = current_models if models is None else tuple(models)
        if prices is None:
            prices = current_prices if models is None else (0,) * len(new_models)
        await self._tx.transact(
            host,
            to=self.host_registry,
            data=self._encode(
                self._registry,
                "update",
                current_peer if peer_id is None else peer_id,
                list(new_models),
                list(prices),
            ),
            what="updating the host",
        )
        registration = await self.get_host(host.address)
        if registration is None:  # pragma: no cover - the contract guarantees it
            raise PaymentError("updating the host: no registration after the transaction")
        return registration

    async def deregister_host(self, host: LocalAccount) -> float:
        """Deactivates the registration; returns when (chain time) the stake can be withdrawn."""
        receipt = await self._tx.transact(
            host,
            to=self.host_registry,
            data=self._encode(self._registry, "deregister"),
            what="deregistering the host",
        )
        events = self._events(self._registry, "HostDeregistered", receipt)
        return float(events[0]["unbondingUntil"]) if events else 0.0

    async def withdraw_stake(self, host: LocalAccount) -> int:
        """After the unbonding delay, returns the stake to the host; returns the amount."""
        receipt = await self._tx.transact(
            host,
            to=self.host_registry,
            data=self._encode(self._registry, "withdrawStake"),
            what="withdrawing the stake",
        )
        return sum(int(e["stake"]) for e in self._events(self._registry, "StakeWithdrawn", receipt))

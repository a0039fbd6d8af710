"""Sending transactions for local accounts over web3.py, with the failures mapped to fabstir errors.

What every state change on the chain goes through (the ledger and the deployer alike):

* **Preflight.** The transaction is first run as an ``eth_call`` (or estimated, when no gas limit is
  given): a revert becomes its typed error before anything is signed, and no gas is spent on a
  transaction bound to fail.
* **Nonces.** Transactions are signed locally (eth-account) and sent raw. Each account has an asyncio
  lock held only while its nonce is taken, the transaction signed and sent, so concurrent calls from one
  account get consecutive nonces and still travel together. A send that fails drops the cached nonce,
  which is read again from the node next time.
* **Receipts.** ``receipt.status`` is always checked: nodes mine a reverted transaction with an explicit
  gas limit as status 0 and raise nothing. The reason is recovered by replaying the call at the receipt's
  block, so a transaction that lost a race (another one changed the state first) fails with the same
  typed error a preflight would have given.
* **Confirmations.** A receipt counts once ``confirmations`` blocks include it (1: its own block).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import logging
from typing import Any, cast

import aiohttp
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import AsyncWeb3
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.types import TxParams, TxReceipt

from .._exceptions import InsufficientFundsError, PaymentError, TimeoutError
from .._models import ChainTransaction
from ._artifacts import RevertDecoder

__all__ = ["Transactor"]

_log = logging.getLogger("fabstir.chain")

#: Headroom over an estimate (gas use can change between estimate and inclusion).
_ESTIMATE_MARGIN = 1.25
_FUNDS_PHRASES = ("insufficient funds", "not have enough balance", "cannot afford")


def revert_data(exc: BaseException) -> bytes | None:
    """The revert data a web3 exception carries (``ContractCustomError``/``ContractLogicError``
    ``.data``, or the JSON-RPC error's ``data``), if any."""
    candidates: list[Any] = [getattr(exc, "data", None)]
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        candidates.append(response["error"].get("data"))
    for data in candidates:
        if isinstance(data, bytes) and len(data) >= 4:
            return data
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                continue
    return None


#: How many sent transactions a Transactor remembers (:attr:`Transactor.sent`).
_SENT_HISTORY = 1_000


class Transactor:
    """Calls and transactions over one :class:`~web3.AsyncWeb3` (see the module docstring)."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        *,
        chain_id: int,
        decoder: RevertDecoder,
        confirmations: int = 1,
        timeout: float = 120.0,
        poll_interval: float = 0.01,
    ) -> None:
        self.w3 = w3
        self.chain_id = chain_id
        self._decoder = decoder
        self._confirmations = max(1, confirmations)
        self._timeout = timeout
        self._poll = poll_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._nonces: dict[str, int] = {}
        self._gas_spent: dict[str, int] = {}
        #: the transactions sent, newest last (bounded: a long-running client must not grow without end)
        self.sent: collections.deque[ChainTransaction] = collections.deque(maxlen=_SENT_HISTORY)

    def gas_spent(self, address: str) -> int:
        """Wei this transactor's transactions from ``address`` paid for gas (reverted ones included)."""
        return self._gas_spent.get(address, 0)

    # ------------------------------------------------------------------------------------ errors
    def error(self, exc: BaseException, what: str) -> PaymentError:
        """The fabstir error for a failure of ``what`` (a revert decoded by selector, else by message)."""
        if isinstance(exc, PaymentError):
            return exc
        data = revert_data(exc)
        if data is not None:
            return self._decoder.error(data)
        message = str(exc)
        if any(phrase in message.lower() for phrase in _FUNDS_PHRASES):
            return InsufficientFundsError(f"{what}: {message}")
        if isinstance(exc, OSError | aiohttp.ClientConnectionError | builtins.TimeoutError):
            # the node is down or the connection dropped (aiohttp's ServerDisconnectedError is not an
            # OSError): trying again later can help
            return PaymentError(f"{what}: the chain node is unreachable ({exc!r})", retryable=True)
        return PaymentError(f"{what} failed: {message}")

    # ------------------------------------------------------------------------------------ calls
    async def call(self, params: TxParams, block: int | str = "latest") -> bytes:
        """``eth_call``; a revert raises its typed error."""
        try:
            return bytes(await self.w3.eth.call(params, cast(Any, block)))
        except Exception as exc:
            raise self.error(exc, "the call") from exc

    # ------------------------------------------------------------------------------------ transactions
    async def transact(
        self,
        account: LocalAccount,
        *,
        to: str | None,
        data: bytes,
        value: int = 0,
        gas: int | None = None,
        what: str = "the transaction",
    ) -> TxReceipt:
        """Signs and sends a transaction from ``account``; returns its receipt once confirmed.

        ``gas`` None estimates it (the estimate doubles as the preflight); an explicit limit is checked
        by an ``eth_call`` with the same gas and price, which also catches a balance short of the gas."""
        address = account.address
        params: dict[str, Any] = {"from": address, "data": HexStr("0x" + data.hex()), "value": value}
        if to is not None:
            params["to"] = to
        gas_price = await self._gas_price()
        if gas is None:
            try:
                estimate = await self.w3.eth.estimate_gas(cast(TxParams, params))
            except Exception as exc:
                raise self.error(exc, what) from exc
            gas = int(estimate * _ESTIMATE_MARGIN)
        else:
            await self.call(cast(TxParams, {**params, "gas": gas, "gasPrice": gas_price}))
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            nonce = self._nonces.get(address)
            try:
                if nonce is None:
                    nonce = await self.w3.eth.get_transaction_count(address, "pending")
                signed = account.sign_transaction(
                    {**params, "gas": gas, "gasPrice": gas_price, "nonce": nonce, "chainId": self.chain_id}
                )
                tx_hash = await self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                self._nonces.pop(address, None)
                raise self.error(exc, what) from exc
            self._nonces[address] = nonce + 1
        receipt = await self._confirmed(tx_hash.to_0x_hex(), what)
        cost = int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", gas_price))
        self._gas_spent[address] = self._gas_spent.get(address, 0) + cost
        self.sent.append(
            ChainTransaction(
                description=what,
                tx_hash=tx_hash.to_0x_hex(),
                sender=address,
                gas_used=int(receipt["gasUsed"]),
                gas_cost=cost,
                block_number=int(receipt["blockNumber"]),
            )
        )
        if receipt["status"] != 1:
            await self._explain_failure(params, receipt, what)
        return receipt

    async def _gas_price(self) -> int:
        try:
            return int(await self.w3.eth.gas_price)
        except Exception as exc:
            raise self.error(exc, "reading the gas price") from exc

    async def _confirmed(self, tx_hash: str, what: str) -> TxReceipt:
        try:
            async with asyncio.timeout(self._timeout):
                receipt = await self._receipt(tx_hash)
                while self._confirmations > 1:
                    head = await self.w3.eth.block_number
                    if head >= int(receipt["blockNumber"]) + self._confirmations - 1:
                        # Re-read: a reorg may have moved (or dropped) the transaction meanwhile.
                        again = await self._receipt(tx_hash)
                        if again["blockHash"] == receipt["blockHash"]:
                            break
                        receipt = again
                        continue
                    await asyncio.sleep(max(self._poll, 0.25))
                return receipt
        except (builtins.TimeoutError, TimeExhausted) as exc:
            raise TimeoutError(
                f"{what}: no confirmed receipt for {tx_hash} within {self._timeout} s",
                phase="confirmation",
                context={"tx_hash": tx_hash},
            ) from exc
        except PaymentError:
            raise
        except Exception as exc:
            raise self.error(exc, what) from exc

    async def _receipt(self, tx_hash: str) -> TxReceipt:
        # Polled by hand: anvil's automine is asynchronous, so a receipt may lag the send slightly.
        while True:
            try:
                return await self.w3.eth.get_transaction_receipt(cast(HexStr, tx_hash))
            except TransactionNotFound:
                await asyncio.sleep(self._poll)

    async def _explain_failure(self, params: dict[str, Any], receipt: TxReceipt, what: str) -> None:
        tx_hash = receipt["transactionHash"].to_0x_hex()
        try:
            await self.w3.eth.call(cast(TxParams, params), int(receipt["blockNumber"]))
        except Exception as exc:
            raise self.error(exc, what) from exc
        raise PaymentError(f"{what} reverted (transaction {tx_hash})", context={"tx_hash": tx_hash})

"""Shared by the integration tests that run a devnet with payments: starting and stopping it for a
module, a ledger on its chain, the test-only ``evm_*`` calls, and gas read back from the chain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from fabstir.chain._web3 import Web3Ledger
from fabstir.devnet import Devnet, DevnetFile, DevnetOptions

__all__ = ["devnet_ledger", "gas_cost", "rpc", "running_devnet"]


@contextlib.contextmanager
def running_devnet(directory: Path, options: DevnetOptions) -> Iterator[DevnetFile]:
    """A devnet up in ``directory`` for the block (synchronous: module fixtures need no event loop)."""
    network = Devnet(directory, options)
    file = asyncio.run(network.up())
    try:
        yield file
    finally:
        asyncio.run(network.down())


@contextlib.asynccontextmanager
async def devnet_ledger(devnet: DevnetFile) -> AsyncIterator[Web3Ledger]:
    """A ledger on the devnet's chain, for the client's own transactions and for reading balances."""
    assert devnet.rpc_url is not None
    contracts = dict(devnet.contracts)
    ledger = await Web3Ledger.connect(
        devnet.rpc_url, payment_sessions=contracts["PaymentSessions"], host_registry=contracts["HostRegistry"]
    )
    try:
        yield ledger
    finally:
        await ledger.aclose()


def rpc(url: str, method: str, *params: object) -> object:
    """One JSON-RPC call to the devnet's chain (the test-only ``evm_*`` methods web3 has no call for)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        reply = json.loads(answer.read())
    assert "error" not in reply, reply
    return reply["result"]


async def gas_cost(ledger: Web3Ledger, address: str, first_block: int) -> int:
    """What ``address`` spent on gas from ``first_block`` on, read from the chain's receipts."""
    w3 = ledger._tx.w3
    total = 0
    for number in range(first_block, await w3.eth.block_number + 1):
        block = await w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if isinstance(tx, bytes) or str(tx["from"]).lower() != address.lower():
                continue
            receipt = await w3.eth.get_transaction_receipt(tx["hash"])
            total += int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
    return total

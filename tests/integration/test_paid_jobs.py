"""Paid jobs end to end: a devnet with the contracts on the embedded chain, a host process serving the
real built-in model, and the SDK paying through escrow — balances move exactly as the receipts say."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from fabstir import ChainTransaction, Event, EventName, FabstirSDK, JobStatus, PaymentStatus
from fabstir.backend import BUILTIN_MODEL_ID
from fabstir.chain._web3 import Web3Ledger
from fabstir.devnet import Devnet, DevnetOptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIMIT = 120.0
PRICE = 1_000_000_000  # the devnet's first host: 1 gwei per token


async def test_a_paid_job_on_the_real_model_moves_balances_exactly_as_receipted(tmp_path: Path) -> None:
    """The client escrows max_tokens × price, receives tokens from the real model and signs receipts;
    the host settles: it gains tokens × price minus the 1 % fee (minus its gas), the treasury gains the
    fee, and the client gets back the rest of its deposit (it pays only for tokens received, plus its
    gas). The host is registered in the HostRegistry under its peer id."""
    options = DevnetOptions(hosts=1, backend="builtin", start_timeout=90.0)
    async with asyncio.timeout(LIMIT), Devnet(tmp_path, options) as devnet:
        (host,) = devnet.hosts
        sdk = FabstirSDK.from_devnet(tmp_path, timeouts={"first_token": 60.0, "inter_token": 30.0})
        assert devnet.rpc_url is not None
        contracts = dict(devnet.contracts)
        ledger = await Web3Ledger.connect(
            devnet.rpc_url,
            payment_sessions=contracts["PaymentSessions"],
            host_registry=contracts["HostRegistry"],
        )
        try:
            async with sdk:
                client = sdk.get_address()
                assert client is not None
                host_address = (await sdk.discover_nodes(model=BUILTIN_MODEL_ID))[
                    0
                ].capabilities.payment_address
                registration = await ledger.get_host(host_address)
                assert registration is not None  # the devnet's hosts register with a stake
                assert registration.peer_id == host.peer_id
                first_block = await ledger._tx.w3.eth.block_number + 1
                before = {
                    "client": await ledger.balance_of(client),
                    "host": await ledger.balance_of(host_address),
                    "treasury": await ledger.balance_of(ledger.treasury),
                }
                handle = await sdk.submit_job(
                    prompt="Name three colours.", model=BUILTIN_MODEL_ID, max_tokens=32, seed=1, stream=True
                )
                assert handle.stream is not None
                async with handle.stream as stream:
                    tokens = [t async for t in stream]
                assert await sdk.get_job_status(handle) is JobStatus.COMPLETED
                details = await sdk.approve_job_payment(handle)
                cost = await sdk.calculate_actual_cost(handle)
                sdk_gas = sdk.get_gas_spent()
            client_gas_cost = await _gas_cost(ledger, client, first_block)
            host_gas_cost = await _gas_cost(ledger, host_address, first_block)
            after = {
                "client": await ledger.balance_of(client),
                "host": await ledger.balance_of(host_address),
                "treasury": await ledger.balance_of(ledger.treasury),
            }
        finally:
            await ledger.aclose()
    paid = len(tokens) * PRICE
    fee = paid * ledger.fee_basis_points // 10_000
    assert details.status is PaymentStatus.RELEASED
    assert details.acknowledged_tokens == len(tokens)
    assert details.settled_amount == paid
    assert (cost.total, cost.host, cost.treasury) == (paid, paid - fee, fee)
    assert after["treasury"] - before["treasury"] == fee
    assert after["client"] - before["client"] == -paid - client_gas_cost
    assert sdk_gas == client_gas_cost  # what the SDK reports spending on gas is what the chain charged
    # the host's share, minus the gas it paid to settle (at devnet prices a 32-token job does not cover
    # the gas of its own settlement: why sessions carry several jobs)
    assert after["host"] - before["host"] == paid - fee - host_gas_cost


async def _gas_cost(ledger: Web3Ledger, address: str, first_block: int) -> int:
    """What ``address`` spent on gas from ``first_block`` on, read from the chain: the sum over its
    transactions of gas used × effective gas price."""
    return sum(
        int(r["gasUsed"]) * int(r["effectiveGasPrice"]) for r in await _receipts(ledger, address, first_block)
    )


async def _receipts(ledger: Web3Ledger, address: str, first_block: int) -> list[Any]:
    """The receipts of the transactions ``address`` sent from ``first_block`` on."""
    w3 = ledger._tx.w3
    receipts = []
    latest = await w3.eth.block_number
    for number in range(first_block, latest + 1):
        block = await w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            if isinstance(tx, bytes) or str(tx["from"]).lower() != address.lower():
                continue
            receipts.append(await w3.eth.get_transaction_receipt(tx["hash"]))
    return receipts


async def test_several_jobs_on_one_session_settle_per_job_on_chain(tmp_path: Path) -> None:
    """With chain.jobs_per_session=3, three jobs to one host process share one on-chain session: one
    deposit, the host settles after the first two jobs and closes the session after the last; the
    session's settled total is exactly the tokens received × price, the client gets the rest back, and it
    paid gas for one open only."""
    options = DevnetOptions(hosts=1, backend="simulated", start_timeout=60.0)
    async with asyncio.timeout(LIMIT), Devnet(tmp_path, options) as devnet:
        assert devnet.rpc_url is not None
        contracts = dict(devnet.contracts)
        ledger = await Web3Ledger.connect(
            devnet.rpc_url,
            payment_sessions=contracts["PaymentSessions"],
            host_registry=contracts["HostRegistry"],
        )
        sdk = FabstirSDK.from_devnet(tmp_path, chain={"jobs_per_session": 3})
        try:
            async with sdk:
                client = sdk.get_address()
                assert client is not None
                first_block = await ledger._tx.w3.eth.block_number + 1
                before = await ledger.balance_of(client)
                model = (await sdk.discover_nodes())[0].capabilities.models[0]
                received = []
                sessions = set()
                for prompt, max_tokens in (("one", 24), ("two", 24), ("three", 16)):
                    handle = await sdk.submit_job(prompt=prompt, model=model, max_tokens=max_tokens)
                    await sdk.wait_for_job_completion(handle)
                    details = await sdk.approve_job_payment(handle)
                    received.append(details.acknowledged_tokens)
                    sessions.add(details.session_id)
                    assert details.status is PaymentStatus.RELEASED
                    assert details.settled_amount == details.acknowledged_tokens * PRICE
                (session_id,) = sessions
                session = await ledger.get_session(session_id or "")
                transactions = await _session_transactions(sdk, handle.job_id)
                client_gas_cost = await _gas_cost(ledger, client, first_block)
                client_transactions = len(await _receipts(ledger, client, first_block))
                after = await ledger.balance_of(client)
        finally:
            await ledger.aclose()
    total = sum(received) * PRICE
    assert session.closed
    assert session.deposit == 3 * 24 * PRICE
    assert session.settled == total
    assert session.refunded == session.deposit - total
    assert after - before == -total - client_gas_cost
    assert client_transactions == 1  # one openSession for three jobs
    # the SDK lists the session's transactions: the client's open, the host's two settlements and close
    assert [tx.description for tx in transactions] == [
        "opening a session",
        "settling a receipt",
        "settling a receipt",
        "settling a receipt and closing a session",
    ]
    assert transactions[0].sender == client
    assert transactions[0].gas_cost == client_gas_cost
    assert len({tx.sender for tx in transactions[1:]}) == 1
    assert transactions[1].sender != client


async def _session_transactions(sdk: FabstirSDK, job_id: int) -> list[ChainTransaction]:
    """The job's session transactions once the SDK has seen the session's close confirmed (it follows
    the chain about once a second)."""
    while True:
        transactions = await sdk.get_job_transactions(job_id)
        if any("closing" in tx.description for tx in transactions):
            return transactions
        await asyncio.sleep(0.2)


async def _rpc(url: str, method: str, params: list[Any]) -> Any:
    """One JSON-RPC call to the devnet's chain (the test-only ``evm_*`` methods)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        reply = (
            await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        ).json()
    assert "error" not in reply, reply
    return reply["result"]


async def test_a_reorg_that_removes_a_settlement_is_reported_and_the_chain_wins(tmp_path: Path) -> None:
    """The SDK follows its sessions through the contract's events: after a paid job, the chain is rolled
    back to before the job (evm_revert, then new blocks: a reorg that replaces the job's blocks) — the SDK
    emits chain:reorg naming the session and state:conflict for the job (believed released, the chain has
    no such session), and the job's payment status becomes what the chain says."""
    options = DevnetOptions(hosts=1, backend="simulated", start_timeout=60.0)
    async with asyncio.timeout(LIMIT), Devnet(tmp_path, options) as devnet:
        url = devnet.rpc_url
        assert url is not None
        sdk = FabstirSDK.from_devnet(tmp_path)
        async with sdk:
            reorgs: list[Event] = []
            conflicts: list[Event] = []
            released: list[Event] = []
            sdk.on(EventName.CHAIN_REORG, reorgs.append)
            conflicted = asyncio.Event()

            def on_conflict(event: Event) -> None:
                conflicts.append(event)
                conflicted.set()

            sdk.on(EventName.STATE_CONFLICT, on_conflict)
            sdk.on(EventName.PAYMENT_RELEASED, released.append)
            model = (await sdk.discover_nodes())[0].capabilities.models[0]
            snapshot = await _rpc(url, "evm_snapshot", [])
            handle = await sdk.submit_job(prompt="soon forgotten", model=model, max_tokens=16)
            await sdk.wait_for_job_completion(handle)
            details = await sdk.approve_job_payment(handle)
            assert details.status is PaymentStatus.RELEASED
            await asyncio.sleep(2.5)  # the follower's polls (1 s) see the settlement's blocks
            assert await _rpc(url, "evm_revert", [snapshot]) is True
            await _rpc(url, "evm_increaseTime", [10])  # new blocks get new hashes
            for _ in range(6):
                await _rpc(url, "evm_mine", [])
            await conflicted.wait()  # (bounded by LIMIT)
            status = await sdk.get_payment_status(handle)
    assert len(released) == 1
    assert reorgs
    assert details.session_id is not None
    assert details.session_id.lower() in reorgs[0].data["sessions"]
    (conflict,) = conflicts
    assert conflict.job_id == handle.job_id
    assert conflict.data["believed"]["status"] == "released"
    assert conflict.data["chain"] == {"status": "none", "settled": 0, "refunded": 0}
    assert status is PaymentStatus.NONE

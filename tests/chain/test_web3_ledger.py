"""The on-chain ledger (Web3Ledger over the contracts) passes the ledger conformance suite on the
embedded chain (eth-tester behind JSON-RPC) and on anvil; then what only a chain shows: gas, receipts,
one nonce sequence for concurrent transactions, the same typed errors on both nodes, the rest of the
host registry and the configuration paths.

Each test gets fresh PaymentSessions and HostRegistry contracts on a module-wide node (the TestToken
and the funded accounts are shared; tests measure balances as differences). Time moves with the
node's own clock (``evm_increaseTime``), which is what decides expiry on a chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from eth_account import Account

from fabstir import ConfigurationError, InsufficientFundsError, InvalidReceiptError, PaymentError
from fabstir.chain._artifacts import RevertDecoder
from fabstir.chain._deploy import Deployer, Deployment, deploy_contracts
from fabstir.chain._web3 import GAS_LIMITS, Web3Ledger
from fabstir.protocol import sign_receipt

from ._nodes import Node, anvil_node, embedded_node
from .conformance import DEPOSIT, PRICE, LedgerConformance, LedgerHarness

pytestmark = pytest.mark.integration

TREASURY = "0x" + "fe" * 20
UNBONDING = 3600
LIMIT = 60.0
#: Enough for any of the contracts' creation (each uses under 1.3M); unused gas is not charged.
DEPLOY_GAS = 4_000_000


@pytest.fixture(scope="module", params=["embedded", "anvil"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    started = embedded_node() if request.param == "embedded" else anvil_node()
    with started as running:
        yield running


async def deploy(node: Node, *, fee_basis_points: int = 100, min_stake: int = 0) -> Deployment:
    async with Deployer(node.url, node.accounts[0]) as deployer:
        # An explicit gas limit: eth-tester's estimate re-executes the constructor many times.
        registry = await deployer.deploy("HostRegistry", min_stake, UNBONDING, gas=DEPLOY_GAS)
        sessions = await deployer.deploy("PaymentSessions", TREASURY, fee_basis_points, gas=DEPLOY_GAS)
        return Deployment(0, sessions, registry, node.token)


async def connect(node: Node, **options: int) -> Web3Ledger:
    deployment = await deploy(node, **options)
    return await Web3Ledger.connect(
        node.url,
        payment_sessions=deployment.payment_sessions,
        host_registry=deployment.host_registry,
        tokens=deployment.tokens,
    )


def harness_for(node: Node, ledger: Web3Ledger) -> LedgerHarness:
    _, client, host, stranger = node.accounts

    async def balance(address: str, token: str) -> int:
        # Gas is paid in the native token: add back what this ledger's transactions spent on it.
        spent = ledger.gas_spent(address) if token == "ETH" else 0
        return await ledger.balance_of(address, token) + spent

    return LedgerHarness(
        ledger=ledger,
        client=client,
        host=host,
        stranger=stranger,
        erc20="USDC",
        now=ledger.timestamp,
        advance=node.advance,
        balance=balance,
        min_stake=ledger.min_stake,
    )


class TestWeb3LedgerConformance(LedgerConformance):
    @pytest.fixture
    async def harness(self, node: Node) -> AsyncIterator[LedgerHarness]:
        async with asyncio.timeout(LIMIT):
            ledger = await connect(node)
        try:
            yield harness_for(node, ledger)
        finally:
            await ledger.aclose()


class TestWeb3LedgerConformanceWithMinimumStakeAndFee(LedgerConformance):
    """Another fee (rounding shows differently) and a minimum stake, on the same nodes."""

    @pytest.fixture
    async def harness(self, node: Node) -> AsyncIterator[LedgerHarness]:
        async with asyncio.timeout(LIMIT):
            ledger = await connect(node, fee_basis_points=333, min_stake=10**15)
        try:
            yield harness_for(node, ledger)
        finally:
            await ledger.aclose()


# ---------------------------------------------------------------------------------------------- chain only


@pytest.fixture
async def ledger(node: Node) -> AsyncIterator[Web3Ledger]:
    async with asyncio.timeout(LIMIT):
        ledger = await connect(node)
    try:
        yield ledger
    finally:
        await ledger.aclose()


async def test_gas_used_and_transaction_hashes_are_real(node: Node, ledger: Web3Ledger) -> None:
    """Settle, close and reclaim report the gas their transaction used (within the fixed limits sent)
    and its hash; the sessions' gas stays below the limits on both nodes."""
    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    session = await ledger.open_session(
        client, host=host.address, token="ETH", deposit=DEPOSIT, price_per_token=PRICE, expiry=now + 60
    )
    receipt = sign_receipt(
        client,
        chain_id=ledger.chain_id,
        verifying_contract=ledger.verifying_contract,
        session_id=session.session_id,
        amount=1_000,
    )
    settled = await ledger.settle(host, session.session_id, 1_000, receipt)
    closed = await ledger.close(host, session.session_id)
    expiring = await ledger.open_session(
        client, host=host.address, token="ETH", deposit=DEPOSIT, price_per_token=PRICE, expiry=now + 60
    )
    await node.advance(61)
    reclaimed = await ledger.reclaim(client, expiring.session_id)
    for settlement, limit in ((settled, "settle"), (closed, "close"), (reclaimed, "reclaim")):
        assert 21_000 < settlement.gas_used < GAS_LIMITS[limit]
        tx = await ledger._tx.w3.eth.get_transaction(settlement.tx_hash)  # type: ignore[arg-type]
        assert tx["from"] == (client.address if limit == "reclaim" else host.address)
    assert len({settled.tx_hash, closed.tx_hash, reclaimed.tx_hash}) == 3


async def test_concurrent_transactions_from_one_account_take_consecutive_nonces(
    node: Node, ledger: Web3Ledger
) -> None:
    """Eight sessions opened at once by one client all succeed, with eight distinct ids: the per-account
    nonce sequence does not collide."""
    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    sessions = await asyncio.gather(
        *(
            ledger.open_session(
                client,
                host=host.address,
                token="ETH",
                deposit=DEPOSIT + i,
                price_per_token=PRICE,
                expiry=now + 600,
            )
            for i in range(8)
        )
    )
    assert len({s.session_id for s in sessions}) == 8
    assert sorted(s.deposit for s in sessions) == [DEPOSIT + i for i in range(8)]


async def test_concurrent_erc20_opens_approve_safely(node: Node, ledger: Web3Ledger) -> None:
    """Several ERC-20 sessions opened at once by one client each approve and pull their own deposit."""
    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    before = await ledger.balance_of(client.address, "USDC")
    sessions = await asyncio.gather(
        *(
            ledger.open_session(
                client,
                host=host.address,
                token="USDC",
                deposit=1_000 + i,
                price_per_token=1,
                expiry=now + 600,
            )
            for i in range(3)
        )
    )
    assert {s.token for s in sessions} == {"USDC"}
    assert before - await ledger.balance_of(client.address, "USDC") == 3_003


async def test_confirmations_wait_for_later_blocks(node: Node, ledger: Web3Ledger) -> None:
    """With confirmations=2 a settlement returns only once another block is built on the one that
    mined it: it is still waiting while that block alone exists, and returns after one more."""
    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    session = await ledger.open_session(
        client, host=host.address, token="ETH", deposit=DEPOSIT, price_per_token=PRICE, expiry=now + 600
    )
    patient = await Web3Ledger.connect(
        node.url,
        payment_sessions=ledger.verifying_contract,
        host_registry=ledger.host_registry,
        confirmations=2,
    )
    try:
        async with asyncio.timeout(LIMIT):
            head = await patient._tx.w3.eth.block_number
            signature = sign_receipt(
                client,
                chain_id=ledger.chain_id,
                verifying_contract=ledger.verifying_contract,
                session_id=session.session_id,
                amount=10,
            )
            task = asyncio.create_task(patient.settle(host, session.session_id, 10, signature))
            for _ in range(5_000):  # until the transaction is mined (bounded by the timeout above)
                if (await ledger.get_session(session.session_id)).settled:
                    break
                await asyncio.sleep(0.01)
            assert await patient._tx.w3.eth.block_number == head + 1
            await asyncio.sleep(0.3)  # longer than the confirmation poll: it must still be waiting
            assert not task.done()
            await node.mine()
            settlement = await task
        assert settlement.amount == 10
    finally:
        await patient.aclose()


async def test_a_session_is_read_by_any_ledger_on_the_deployment(node: Node, ledger: Web3Ledger) -> None:
    """Another Web3Ledger on the same contracts (built from a ChainConfig) sees the same session,
    spelt in any case; an id that is not 32 bytes of hex is an unknown session."""
    from fabstir._config import ChainConfig

    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    session = await ledger.open_session(
        client, host=host.address, token="USDC", deposit=10, price_per_token=1, expiry=now + 600
    )
    config = ChainConfig(
        rpc_url=node.url,
        chain_id=ledger.chain_id,
        contracts={
            "PaymentSessions": ledger.verifying_contract,
            "HostRegistry": ledger.host_registry,
            "USDC": node.token,
        },
    )
    async with await Web3Ledger.from_config(config) as other:
        assert await other.get_session("0x" + session.session_id[2:].upper()) == session
        with pytest.raises(PaymentError, match="unknown session"):
            await other.get_session("0x1234")


async def test_registry_update_deregister_unbond_withdraw(node: Node, ledger: Web3Ledger) -> None:
    """update_host replaces what is given; deregistering starts the unbonding delay (chain time);
    withdrawing before it ends is refused, after it the stake comes back and the entry is gone."""
    _, _, host, _ = node.accounts
    await ledger.register_host(host, peer_id="12D3KooWold", models=("a",), stake=10**9)
    updated = await ledger.update_host(host, models=("a", "b"))
    assert (updated.peer_id, updated.models, updated.stake) == ("12D3KooWold", ("a", "b"), 10**9)
    until = await ledger.deregister_host(host)
    assert until >= await ledger.timestamp() + UNBONDING - 1
    with pytest.raises(PaymentError, match="not registered"):
        await ledger.update_host(host, peer_id="12D3KooWnew")
    with pytest.raises(PaymentError, match="unbonding"):
        await ledger.withdraw_stake(host)
    await node.advance(UNBONDING + 1)
    assert await ledger.withdraw_stake(host) == 10**9
    assert await ledger.get_host(host.address) is None


async def test_registration_metadata_is_checked_by_the_contract(node: Node, ledger: Web3Ledger) -> None:
    """An empty peer id, no model or an empty model name: the contract refuses, the typed error says
    why, and nothing is registered."""
    _, _, host, _ = node.accounts
    for peer_id, models, message in (("", ("m",), "peer id"), ("p", (), "model"), ("p", ("m", ""), "model")):
        with pytest.raises(PaymentError, match=message):
            await ledger.register_host(host, peer_id=peer_id, models=models, stake=1)
    assert await ledger.get_host(host.address) is None


async def test_wrong_deployment_or_chain_is_a_configuration_error(node: Node, ledger: Web3Ledger) -> None:
    """Connecting to an address without the contract, or naming another chain id, is refused before
    anything is sent; a ChainConfig without the contracts too."""
    from fabstir._config import ChainConfig

    with pytest.raises(ConfigurationError, match="no PaymentSessions"):
        await Web3Ledger.connect(
            node.url, payment_sessions=Account.create().address, host_registry=ledger.host_registry
        )
    with pytest.raises(ConfigurationError, match="chain"):
        await Web3Ledger.connect(
            node.url,
            payment_sessions=ledger.verifying_contract,
            host_registry=ledger.host_registry,
            chain_id=ledger.chain_id + 1,
        )
    with pytest.raises(ConfigurationError, match="HostRegistry"):
        await Web3Ledger.from_config(
            ChainConfig(rpc_url=node.url, contracts={"PaymentSessions": ledger.verifying_contract})
        )


async def test_an_unreachable_node_is_a_retryable_payment_error() -> None:
    """A node that does not answer raises a retryable PaymentError, not a web3 or aiohttp exception."""
    from ._nodes import _free_port

    with pytest.raises(PaymentError) as caught:
        await Web3Ledger.connect(
            f"http://127.0.0.1:{_free_port()}",
            payment_sessions=TREASURY,
            host_registry=TREASURY,
        )
    assert caught.value.retryable


async def test_deploy_contracts_in_one_call(node: Node) -> None:
    """deploy_contracts deploys the three contracts with the parameters given, and a ledger on them
    reads those parameters back (and knows the fresh token, nobody holding any yet)."""
    deployment = await deploy_contracts(
        node.url, node.accounts[0], treasury=TREASURY, fee_basis_points=250, min_stake=7, unbonding_delay=60
    )
    assert deployment.token is not None
    assert set(deployment.contracts) == {"PaymentSessions", "HostRegistry", "USDC"}
    async with await Web3Ledger.connect(
        node.url,
        payment_sessions=deployment.payment_sessions,
        host_registry=deployment.host_registry,
        tokens=deployment.tokens,
    ) as ledger:
        assert (ledger.fee_basis_points, ledger.min_stake, ledger.unbonding_delay) == (250, 7, 60.0)
        assert ledger.treasury.lower() == TREASURY
        assert ledger.chain_id == deployment.chain_id
        assert await ledger.balance_of(node.accounts[1].address, "USDC") == 0  # a fresh token


def test_revert_decoding_covers_every_declared_error() -> None:
    """Every error the artifacts declare decodes by selector to a typed error: receipt problems are
    InvalidReceiptError, token shortfalls InsufficientFundsError, the rest PaymentError; unknown data
    is a PaymentError naming it."""
    from eth_utils.crypto import keccak

    decoder = RevertDecoder()
    receipt_errors = {
        "InvalidSignature",
        "AmountAboveDeposit",
        "AmountNotIncreasing",
        "AmountBelowSettled",
        "MissingReceipt",
    }
    selector = keccak(b"AmountNotIncreasing(uint256)")[:4]
    error = decoder.error(selector + (42).to_bytes(32, "big"))
    assert isinstance(error, InvalidReceiptError)
    assert "42" in str(error)
    balance = keccak(b"ERC20InsufficientBalance(address,uint256,uint256)")[:4] + bytes(96)
    assert isinstance(decoder.error(balance), InsufficientFundsError)
    unknown = decoder.error(b"\xde\xad\xbe\xef")
    assert type(unknown) is PaymentError
    assert "deadbeef" in str(unknown)
    for name in receipt_errors:
        assert name in {n for n, _ in decoder._errors.values()}

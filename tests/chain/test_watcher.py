"""The session watcher: PaymentSessions events by log polling, with confirmations and reorgs.

On both nodes (the embedded chain and anvil): delivery in chain order, once, only for watched sessions;
the catch-up of a session watched after it opened; confirmations; a reorg made with ``evm_snapshot`` /
``evm_revert`` (both nodes drop the reverted blocks and number the new ones from the snapshot again,
with new hashes) and one deeper than the watcher remembers. Without a node: a URL that refuses, a
scripted fake node for malformed answers, untrusted logs, range splitting and ``run``'s retries.

Each node test deploys fresh contracts on the module-wide node; the reorg tests revert only to
snapshots taken after their own deployment, so other tests' state is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import pytest
from eth_abi import abi
from eth_utils.crypto import keccak
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from fabstir import PaymentError, ValidationError
from fabstir.chain import ChainReorg, SessionEvent, SessionWatcher
from fabstir.chain._deploy import Deployer
from fabstir.chain._web3 import Web3Ledger
from fabstir.protocol import sign_receipt

from ._nodes import Node, _rpc, anvil_node, embedded_node
from .conformance import DEPOSIT, PRICE

LIMIT = 60.0
DEPLOY_GAS = 4_000_000
TREASURY = "0x" + "fe" * 20


# ---------------------------------------------------------------------------------------------- on the nodes
@pytest.fixture(scope="module", params=["embedded", "anvil"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    started = embedded_node() if request.param == "embedded" else anvil_node()
    with started as running:
        yield running


async def _connect(node: Node, sessions: str, registry: str) -> Web3Ledger:
    return await Web3Ledger.connect(node.url, payment_sessions=sessions, host_registry=registry)


@pytest.fixture
async def ledger(node: Node) -> AsyncIterator[Web3Ledger]:
    async with asyncio.timeout(LIMIT):
        async with Deployer(node.url, node.accounts[0]) as deployer:
            registry = await deployer.deploy("HostRegistry", 0, 3600, gas=DEPLOY_GAS)
            sessions = await deployer.deploy("PaymentSessions", TREASURY, 100, gas=DEPLOY_GAS)
        ledger = await _connect(node, sessions, registry)
    try:
        yield ledger
    finally:
        await ledger.aclose()


async def _open(node: Node, ledger: Web3Ledger, deposit: int = DEPOSIT) -> str:
    _, client, host, _ = node.accounts
    now = await ledger.timestamp()
    session = await ledger.open_session(
        client, host=host.address, token="ETH", deposit=deposit, price_per_token=PRICE, expiry=now + 600
    )
    return session.session_id


async def _settle(node: Node, ledger: Web3Ledger, session_id: str, amount: int) -> None:
    _, client, host, _ = node.accounts
    signature = sign_receipt(
        client,
        chain_id=ledger.chain_id,
        verifying_contract=ledger.verifying_contract,
        session_id=session_id,
        amount=amount,
    )
    await ledger.settle(host, session_id, amount, signature)


async def _head(node: Node) -> int:
    return int(await _rpc(node.url, "eth_blockNumber", []), 16)


def _names(items: list[SessionEvent | ChainReorg]) -> list[str]:
    return [item.name if isinstance(item, SessionEvent) else "ChainReorg" for item in items]


@pytest.mark.integration
async def test_events_in_chain_order_once_and_only_for_watched_sessions(
    node: Node, ledger: Web3Ledger
) -> None:
    """Events of the watched session arrive decoded, in chain order and once; another session's do not."""
    _, client, host, _ = node.accounts
    async with asyncio.timeout(LIMIT):
        watcher = ledger.session_watcher(poll_interval=0.01)
        assert await watcher.poll() == []  # anchors after the current head
        watched = await _open(node, ledger)
        watcher.watch(watched)
        other = await _open(node, ledger)
        await _settle(node, ledger, watched, 1_000)
        await _settle(node, ledger, other, 2_000)
        await ledger.close(host, watched)
        events = await watcher.poll()
        assert await watcher.poll() == []

    assert _names(events) == ["SessionOpened", "Settled", "SessionClosed"]
    assert all(isinstance(e, SessionEvent) and e.session_id == watched for e in events)
    positions = [(e.block_number, e.log_index) for e in events if isinstance(e, SessionEvent)]
    assert positions == sorted(positions)
    assert len(set(positions)) == 3
    opened, settled, closed = (e for e in events if isinstance(e, SessionEvent))
    assert dict(opened.args) == {
        "client": client.address,
        "host": host.address,
        "token": "0x" + "00" * 20,
        "deposit": DEPOSIT,
        "pricePerToken": PRICE,
        "expiry": opened.args["expiry"],
    }
    assert settled.args["amount"] == 1_000 == settled.args["settled"]
    assert settled.args["hostAmount"] == 1_000 - ledger.fee_for(1_000)
    assert closed.args == {"settled": 1_000, "refunded": DEPOSIT - 1_000}
    assert opened.block_hash.startswith("0x")
    assert len(opened.transaction_hash) == 66


@pytest.mark.integration
async def test_a_session_watched_after_it_opened_is_caught_up(node: Node, ledger: Web3Ledger) -> None:
    """watch(from_block=...) of a session the watcher already scanned past delivers its earlier
    events once in the next poll, then follows it like any other."""
    _, _, host, _ = node.accounts
    async with asyncio.timeout(LIMIT):
        watcher = ledger.session_watcher()
        await watcher.poll()
        start = await _head(node) + 1
        session = await _open(node, ledger)
        await _settle(node, ledger, session, 500)
        assert await watcher.poll() == []  # scanned, but nothing watched yet
        watcher.watch(session, from_block=start)
        caught_up = await watcher.poll()
        assert await watcher.poll() == []
        await ledger.close(host, session)
        later = await watcher.poll()
        watcher.unwatch(session)

    assert _names(caught_up) == ["SessionOpened", "Settled"]
    assert _names(later) == ["SessionClosed"]


@pytest.mark.integration
async def test_confirmations_hold_events_back(node: Node, ledger: Web3Ledger) -> None:
    """With confirmations=3 an event is delivered once two more blocks are mined on top of its own."""
    async with asyncio.timeout(LIMIT):
        start = await _head(node) + 1
        session = await _open(node, ledger)
        watcher = ledger.session_watcher(confirmations=3, start_block=start)
        watcher.watch(session)
        assert await watcher.poll() == []
        await node.mine()
        assert await watcher.poll() == []
        await node.mine()
        events = await watcher.poll()
        assert await watcher.poll() == []

    assert _names(events) == ["SessionOpened"]
    assert isinstance(events[0], SessionEvent)
    assert events[0].block_number == start


@pytest.mark.integration
async def test_a_reorg_retracts_delivered_events_and_delivers_the_new_branch(
    node: Node, ledger: Web3Ledger
) -> None:
    """After evm_revert and a longer new branch, the next poll delivers a ChainReorg naming the fork
    and the retracted events, then the new branch's events (the same session re-opened differently)."""
    async with asyncio.timeout(LIMIT):
        watcher = ledger.session_watcher()
        await watcher.poll()
        snapshot = await _rpc(node.url, "evm_snapshot", [])
        fork = await _head(node) + 1
        session = await _open(node, ledger)
        watcher.watch(session, from_block=fork)
        await _settle(node, ledger, session, 700)
        before = await watcher.poll()
        assert _names(before) == ["SessionOpened", "Settled"]

        assert await _rpc(node.url, "evm_revert", [snapshot]) is True
        assert await _head(node) == fork - 1
        # The ledger caches nonces, which the revert took back: a fresh one reads them again.
        again = await _connect(node, ledger.verifying_contract, ledger.host_registry)
        try:
            # The contract's nonce went back too: the same session id, opened with another deposit.
            assert await _open(node, again, deposit=DEPOSIT - 1) == session
        finally:
            await again.aclose()
        await node.mine()
        await node.mine()
        after = await watcher.poll()
        assert await watcher.poll() == []

    assert _names(after) == ["ChainReorg", "SessionOpened"]
    reorg, reopened = after
    assert isinstance(reorg, ChainReorg)
    assert isinstance(reopened, SessionEvent)
    assert reorg.fork_block == fork
    assert reorg.depth == 2
    assert reorg.retracted == tuple(before)
    assert reopened.block_number == fork
    assert reopened.args["deposit"] == DEPOSIT - 1
    assert isinstance(before[0], SessionEvent)
    assert reopened.block_hash != before[0].block_hash


@pytest.mark.integration
async def test_a_reorg_deeper_than_the_window_raises(node: Node, ledger: Web3Ledger) -> None:
    """A fork below every remembered block raises a non-retryable PaymentError; the watcher then
    starts again after the head."""
    async with asyncio.timeout(LIMIT):
        watcher = ledger.session_watcher(reorg_window=2)
        await watcher.poll()
        snapshot = await _rpc(node.url, "evm_snapshot", [])
        for _ in range(3):
            await node.mine()
        await watcher.poll()
        assert await _rpc(node.url, "evm_revert", [snapshot]) is True
        await node.advance(30)  # a new first block (another timestamp), so every later hash differs
        for _ in range(4):
            await node.mine()
        with pytest.raises(PaymentError, match="deeper than the 2 blocks") as raised:
            await watcher.poll()
        assert raised.value.retryable is False
        assert await watcher.poll() == []
        assert watcher.cursor == await _head(node)


# ---------------------------------------------------------------------------------------------- no node
def _refusing_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


CONTRACT = "0x" + "ab" * 20
SESSION = "0x" + "11" * 32
OTHER_SESSION = "0x" + "22" * 32
CLIENT = "0x" + "c1" * 20
HOST = "0x" + "d2" * 20


def _topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


OPENED = _topic("SessionOpened(bytes32,address,address,address,uint256,uint256,uint64)")
SETTLED = _topic("Settled(bytes32,uint256,uint256,uint256,uint256)")


def _word(address: str) -> str:
    return "0x" + abi.encode(["address"], [address]).hex()


class FakeNode(AsyncBaseProvider):
    """A scripted JSON-RPC node: blocks are (hash, parentHash) pairs, logs are served as given (and
    filtered by block range only), and ``override`` replaces any answer."""

    def __init__(self, length: int = 10) -> None:
        super().__init__()
        self.blocks: list[tuple[str, str]] = []
        self.logs: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any]] = []
        self.override: dict[str, Callable[[Any], Any]] = {}
        self.grow(length)

    def grow(self, count: int, branch: str = "a") -> None:
        for _ in range(count):
            number = len(self.blocks)
            parent = self.blocks[-1][0] if self.blocks else "0x" + "00" * 32
            self.blocks.append(("0x" + keccak(text=f"{branch}{number}").hex(), parent))

    def fork(self, at: int, count: int, branch: str) -> None:
        """Replaces the blocks from ``at`` with ``count`` blocks of another branch."""
        del self.blocks[at:]
        self.logs = [log for log in self.logs if int(log["blockNumber"], 16) < at]
        self.grow(count, branch)

    def log(
        self, number: int, topics: list[str], data: bytes, index: int = 0, **fields: Any
    ) -> dict[str, Any]:
        entry = {
            "address": CONTRACT,
            "topics": topics,
            "data": "0x" + data.hex(),
            "blockNumber": hex(number),
            "blockHash": self.blocks[number][0],
            "transactionHash": "0x" + keccak(text=f"tx{number}.{index}").hex(),
            "logIndex": hex(index),
            "removed": False,
        }
        entry.update(fields)
        self.logs.append(entry)
        return entry

    def settled(self, number: int, amount: int, session: str = SESSION, index: int = 0) -> dict[str, Any]:
        data = abi.encode(["uint256"] * 4, [amount, amount - 1, 1, amount])
        return self.log(number, [SETTLED, session], data, index)

    def answer(self, method: str, params: Any) -> Any:
        if method in self.override:
            return self.override[method](params)
        if method == "eth_blockNumber":
            return {"result": hex(len(self.blocks) - 1)}
        if method == "eth_getBlockByNumber":
            number = int(params[0], 16)
            if number >= len(self.blocks):
                return {"result": None}
            block_hash, parent = self.blocks[number]
            return {"result": {"number": hex(number), "hash": block_hash, "parentHash": parent}}
        if method == "eth_getLogs":
            first, last = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            return {"result": [log for log in self.logs if first <= int(log["blockNumber"], 16) <= last]}
        return {"error": {"code": -32601, "message": f"{method} not scripted"}}

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        self.calls.append((str(method), params))
        # Deliberately untyped: the point is answers that break RPCResponse's shape.
        response: Any = {"jsonrpc": "2.0", "id": len(self.calls), **self.answer(method, params)}
        return cast(RPCResponse, response)


def _watcher(fake: FakeNode, **options: Any) -> SessionWatcher:
    return SessionWatcher(AsyncWeb3(fake), CONTRACT, **options)


async def test_an_unreachable_node_is_a_retryable_payment_error() -> None:
    """A URL that refuses connections makes poll() raise a retryable PaymentError with the cause."""
    w3: AsyncWeb3[Any] = AsyncWeb3(AsyncHTTPProvider(_refusing_url(), exception_retry_configuration=None))
    watcher = SessionWatcher(w3, CONTRACT, poll_interval=0.01)
    try:
        async with asyncio.timeout(LIMIT):
            with pytest.raises(PaymentError, match="unreachable") as raised:
                await watcher.poll()
    finally:
        await w3.provider.disconnect()
    assert raised.value.retryable is True
    assert raised.value.__cause__ is not None


def _no_hash(fake: FakeNode) -> None:
    fake.override["eth_getBlockByNumber"] = lambda params: {
        "result": {"number": params[0], "parentHash": "0x"}
    }


def _missing_topic(fake: FakeNode) -> None:
    fake.log(8, [SETTLED], abi.encode(["uint256"] * 4, [1, 1, 0, 1]))


def _no_topics(fake: FakeNode) -> None:
    del fake.settled(8, 5)["topics"]


def _logs_not_a_list(fake: FakeNode) -> None:
    fake.override["eth_getLogs"] = lambda params: {"result": {"logs": []}}


def _bad_hex(fake: FakeNode) -> None:
    fake.settled(8, 5)["logIndex"] = "0xzz"


def _no_result(fake: FakeNode) -> None:
    fake.override["eth_blockNumber"] = lambda params: {}


def _rpc_error(fake: FakeNode) -> None:
    fake.override["eth_getLogs"] = lambda params: {"error": {"code": -32005, "message": "too many logs"}}


@pytest.mark.parametrize(
    "breakage",
    [_no_hash, _missing_topic, _no_topics, _logs_not_a_list, _bad_hex, _no_result, _rpc_error],
)
async def test_malformed_answers_are_payment_errors(breakage: Callable[[FakeNode], None]) -> None:
    """A block without a hash, a log without its sessionId topic or topics, logs that are not a list,
    a field that is not hex, an answer without a result or a JSON-RPC error raise a retryable
    PaymentError (not a KeyError), and nothing is delivered from that round."""
    fake = FakeNode(5)
    watcher = _watcher(fake, start_block=3)
    watcher.watch(SESSION)
    assert await watcher.poll() == []
    fake.grow(5)
    breakage(fake)
    with pytest.raises(PaymentError) as raised:
        await watcher.poll()
    assert raised.value.retryable is True


async def test_logs_that_are_not_ours_are_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """From an untrusted answer only well-formed events of the contract and the watched sessions
    survive: another address, another session, an unknown event, undecodable data and a missing
    indexed topic are skipped with a log line; a duplicate and a removed log are dropped; the rest is
    delivered in chain order."""
    fake = FakeNode(3)
    watcher = _watcher(fake)
    watcher.watch(SESSION)
    await watcher.poll()
    fake.grow(4)
    fake.settled(5, 20, index=1)
    fake.settled(4, 10, index=3)
    fake.log(4, [SETTLED, SESSION], b"", index=4)  # no data: does not decode
    fake.log(4, [_topic("Other(bytes32)"), SESSION], b"", index=5)
    fake.log(4, [SETTLED, SESSION], b"\x00" * 128, index=6, address="0x" + "cd" * 20)
    fake.settled(4, 30, session=OTHER_SESSION, index=7)
    fake.log(5, [SETTLED, SESSION], b"\x00" * 128, index=1)  # the same (block, index) again
    fake.log(5, [SETTLED, SESSION], b"\x00" * 128, index=8, removed=True)
    opened = abi.encode(["address", "uint256", "uint256", "uint64"], [CLIENT, 1, 2, 3])
    fake.log(6, [OPENED, SESSION, _word(CLIENT), _word(HOST)], opened)
    fake.log(6, [OPENED, SESSION, _word(CLIENT)], opened, index=2)  # a topic short
    with caplog.at_level(logging.WARNING, logger="fabstir.chain"):
        events = await watcher.poll()

    assert [(e.name, e.block_number, e.log_index) for e in events if isinstance(e, SessionEvent)] == [
        ("Settled", 4, 3),
        ("Settled", 5, 1),
        ("SessionOpened", 6, 0),
    ]
    assert [e.args.get("amount") for e in events if isinstance(e, SessionEvent)][:2] == [10, 20]
    opened_event = events[2]
    assert isinstance(opened_event, SessionEvent)
    assert opened_event.args["client"] == AsyncWeb3.to_checksum_address(CLIENT)
    assert len([r for r in caplog.records if r.message.startswith("skipping")]) == 5


async def test_ranges_are_split_and_a_catch_up_comes_first() -> None:
    """eth_getLogs never spans more than max_block_range blocks; a catch-up of a newly watched session
    is delivered before the newer events of the same round, each event once."""
    fake = FakeNode(3)
    watcher = _watcher(fake, max_block_range=4, start_block=0)
    watcher.watch(SESSION)
    fake.settled(1, 1)
    fake.settled(2, 5, session=OTHER_SESSION)
    fake.grow(9)
    fake.settled(11, 2)
    fake.settled(9, 6, session=OTHER_SESSION)
    first = await watcher.poll()
    watcher.watch(OTHER_SESSION, from_block=0)
    fake.grow(1)
    fake.settled(12, 7, session=OTHER_SESSION)
    second = await watcher.poll()

    spans = [
        int(p[0]["toBlock"], 16) - int(p[0]["fromBlock"], 16) + 1 for m, p in fake.calls if m == "eth_getLogs"
    ]
    assert spans
    assert max(spans) <= 4
    assert [e.args["amount"] for e in first if isinstance(e, SessionEvent)] == [1, 2]
    assert [e.args["amount"] for e in second if isinstance(e, SessionEvent)] == [5, 6, 7]


async def test_a_reorg_on_a_scripted_node_rescans_from_the_fork() -> None:
    """A fork two blocks deep: the ChainReorg retracts only the events at or above the fork, and
    the new branch's events follow; a fork deeper than the window raises, as on the real nodes."""
    fake = FakeNode(5)
    watcher = _watcher(fake, reorg_window=4, start_block=0)
    watcher.watch(SESSION)
    fake.settled(2, 1)
    fake.settled(3, 2)
    fake.settled(4, 3)
    assert len(await watcher.poll()) == 3
    fake.fork(3, 3, "b")
    fake.settled(5, 9)
    items = await watcher.poll()

    reorg, event = items
    assert isinstance(reorg, ChainReorg)
    assert isinstance(event, SessionEvent)
    assert (reorg.fork_block, reorg.depth) == (3, 2)
    assert [e.args["amount"] for e in reorg.retracted] == [2, 3]
    assert event.args["amount"] == 9

    fake.fork(0, 8, "c")
    with pytest.raises(PaymentError, match="deeper"):
        await watcher.poll()


async def test_a_chain_moving_during_a_round_delivers_nothing_from_it() -> None:
    """A log whose block hash is not the one the round saw (the chain moved between two requests)
    stops the round without delivering it or moving on; the next round scans again and delivers the
    log of the canonical block once."""
    fake = FakeNode(3)
    watcher = _watcher(fake)
    watcher.watch(SESSION)
    await watcher.poll()
    fake.grow(2)
    fake.settled(4, 1)["blockHash"] = "0x" + "ee" * 32
    assert await watcher.poll() == []
    assert watcher.cursor == 2
    fake.fork(4, 1, "b")
    fake.settled(4, 1)
    assert _names(await watcher.poll()) == ["Settled"]
    assert await watcher.poll() == []


async def test_run_keeps_polling_through_failures() -> None:
    """run() logs retryable failures and polls again (with backoff) until the node answers, then
    delivers to an async consumer; a bad argument to watch() is a ValidationError."""
    fake = FakeNode(3)
    watcher = _watcher(fake, poll_interval=0.001)
    watcher.watch(SESSION)
    failures = 3

    def flaky(params: Any) -> Any:
        nonlocal failures
        failures -= 1
        if failures >= 0:
            return {"error": {"code": -32000, "message": "the node is restarting"}}
        return {"result": hex(len(fake.blocks) - 1)}

    await watcher.poll()
    fake.override["eth_blockNumber"] = flaky
    fake.grow(1)
    fake.settled(3, 42)
    received: asyncio.Queue[SessionEvent | ChainReorg] = asyncio.Queue()

    async def deliver(item: SessionEvent | ChainReorg) -> None:
        await received.put(item)

    async with asyncio.timeout(LIMIT):
        task = asyncio.create_task(watcher.run(deliver))
        try:
            item = await received.get()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert isinstance(item, SessionEvent)
    assert item.args["amount"] == 42
    assert failures < 0
    with pytest.raises(ValidationError):
        watcher.watch("0x1234")


async def test_sessions_watched_or_unwatched_during_a_poll_miss_nothing_and_get_nothing_more() -> None:
    """A session watched while a poll runs gets the blocks that poll scanned without it in the next
    poll (once); after unwatch() a session's later events are not delivered."""
    fake = FakeNode(3)
    watcher = _watcher(fake, max_block_range=2)
    watcher.watch(SESSION)
    await watcher.poll()
    fake.grow(4)
    fake.settled(4, 1)
    fake.settled(5, 2, session=OTHER_SESSION)

    def watch_meanwhile(params: Any) -> Any:
        del fake.override["eth_getLogs"]
        watcher.watch(OTHER_SESSION)
        return fake.answer("eth_getLogs", params)

    fake.override["eth_getLogs"] = watch_meanwhile
    first = await watcher.poll()
    second = await watcher.poll()
    watcher.unwatch(SESSION)
    fake.grow(1)
    fake.settled(7, 3)
    third = await watcher.poll()

    assert [(e.session_id, e.args["amount"]) for e in first if isinstance(e, SessionEvent)] == [(SESSION, 1)]
    assert [(e.session_id, e.args["amount"]) for e in second if isinstance(e, SessionEvent)] == [
        (OTHER_SESSION, 2)
    ]
    assert third == []
    assert watcher.watched == {OTHER_SESSION}

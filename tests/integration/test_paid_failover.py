"""Failover and chain faults with real money: a devnet (the contracts on the embedded chain, a bootstrap
peer, two host processes serving the real built-in model at 1 and 2 gwei per token) and an SDK that
selects by price, so host 1 always gets the job first.

* Host 1 is SIGKILLed mid-stream: host 2 continues the completion, and every wei is accounted for —
  host 2 is paid exactly for the tokens it delivered, host 1 (dead, it never settles) nothing, and the
  client reclaims host 1's whole deposit after expiry: its balance moves by host 2's pay plus its gas.
* The chain's RPC goes down for a while (a proxy in front of it stops answering): a job already paid for
  streams to its end (receipts are signed locally), and its settlement is seen once the RPC is back; a
  job submitted while the RPC is down fails with a typed error within its deadline instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from fabstir import EventName, FabstirError, FabstirSDK, JobStatus, PaymentStatus
from fabstir.backend import BUILTIN_MODEL_ID
from fabstir.chain._web3 import Web3Ledger
from fabstir.devnet import DevnetFile, DevnetOptions

from ._chain import devnet_ledger, gas_cost, rpc, running_devnet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LIMIT = 120.0  # bound on one test's asyncio work
MODEL = BUILTIN_MODEL_ID
BASE_PRICE = 1_000_000_000  # the devnet's host i charges BASE_PRICE × i per token
PROMPT = "Tell me a long story about a lighthouse keeper."
MAX_TOKENS = 120
SEED = 1
KILL_AT = 5


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetFile]:
    options = DevnetOptions(hosts=2, backend="builtin", start_timeout=120.0)
    with running_devnet(tmp_path_factory.mktemp("devnet"), options) as file:
        yield file


@pytest.fixture
async def ledger(devnet: DevnetFile) -> AsyncIterator[Web3Ledger]:
    async with devnet_ledger(devnet) as ledger:
        yield ledger


async def test_a_killed_host_is_replaced_and_every_wei_is_accounted_for(
    devnet: DevnetFile, ledger: Web3Ledger
) -> None:
    """Host 1 dies after KILL_AT tokens; host 2 continues: the stream is contiguous and equals the
    result; host 2's session settles exactly its tokens × 2 gwei (fee to the treasury, rest refunded);
    host 1's session is untouched until its expiry, then reclaimed in full; the client's balance moves
    by exactly host 2's pay plus the client's own gas."""
    first, second = devnet.hosts[0], devnet.hosts[1]
    assert devnet.rpc_url is not None
    sdk = FabstirSDK.from_devnet(
        devnet.directory,
        selection_strategy="price",
        timeouts={"first_token": 20.0, "inter_token": 3.0},
        recovery={"failover": True},
    )
    failovers: list[dict[str, Any]] = []
    sdk.on(EventName.JOB_FAILOVER, lambda e: failovers.append(dict(e.data)))
    async with asyncio.timeout(LIMIT), sdk:
        client = sdk.get_address()
        assert client is not None
        first_block = await ledger._tx.w3.eth.block_number + 1
        before = await ledger.balance_of(client)
        handle = await sdk.submit_job(
            prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS, seed=SEED, stream=True
        )
        assert handle.stream is not None
        indices: list[int] = []
        texts: list[str] = []
        async for token in handle.stream:
            indices.append(token.index)
            texts.append(token.text)
            if len(indices) == KILL_AT:
                os.kill(first.pid, signal.SIGKILL)
        details = await sdk.wait_for_job_completion(handle.job_id)
        payment = await sdk.approve_job_payment(handle.job_id)
        failed, finished = payment.legs
        dead = await ledger.get_session(str(failed.session_id))
        # host 1 never settles: the client reclaims its deposit once the chain passes the expiry
        assert not dead.closed
        rpc(devnet.rpc_url, "evm_increaseTime", int(dead.expiry - await ledger.timestamp()) + 1)
        rpc(devnet.rpc_url, "evm_mine")
        reclaimed = await sdk.reclaim_expired_sessions()
        after = await ledger.balance_of(client)
        gas = await gas_cost(ledger, client, first_block)
    assert details.status is JobStatus.COMPLETED
    assert indices == list(range(len(indices)))
    assert "".join(texts) == details.result
    assert [(f["from_node"], f["to_node"]) for f in failovers] == [(first.peer_id, second.peer_id)]
    delivered_by_first = int(failovers[0]["delivered"])
    assert delivered_by_first >= KILL_AT
    rest = len(indices) - delivered_by_first
    assert finished.price_per_token == 2 * BASE_PRICE
    assert finished.acknowledged_tokens == rest
    assert finished.settled_amount == rest * 2 * BASE_PRICE
    assert finished.status is PaymentStatus.RELEASED
    assert finished.settled_amount + finished.refunded_amount == finished.deposit
    assert finished.deposit == (MAX_TOKENS - delivered_by_first) * 2 * BASE_PRICE
    assert [p.job_id for p in reclaimed] == [handle.job_id]
    closed = await ledger.get_session(str(failed.session_id))
    assert closed.closed
    assert (closed.settled, closed.refunded) == (0, dead.deposit)
    assert after - before == -(finished.settled_amount + gas)


class RpcProxy:
    """A TCP proxy in front of the chain's RPC that can go down (refusing and cutting connections)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.up = True

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def down(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while self.up and (data := await src.read(65536)):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update((writer, upstream_writer))

    async def aclose(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxy(devnet: DevnetFile) -> AsyncIterator[tuple[RpcProxy, str]]:
    assert devnet.rpc_url is not None
    host, port = devnet.rpc_url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    rpc = RpcProxy(host, int(port))
    url = await rpc.start()
    try:
        yield rpc, url
    finally:
        await rpc.aclose()


async def test_the_chain_rpc_down_for_a_while(devnet: DevnetFile, proxy: tuple[RpcProxy, str]) -> None:
    """With the session open, the RPC goes down: the job streams to its end (receipts need no chain),
    and its settlement by the host is seen once the RPC is back (RELEASED, exact amount). A job
    submitted while the RPC is down fails with a typed, retryable error within its deadline."""
    rpc, url = proxy
    second = devnet.hosts[1]
    sdk = FabstirSDK.from_devnet(
        devnet.directory,
        chain={"rpc_url": url},
        timeouts={"first_token": 20.0, "inter_token": 3.0, "overall": 30.0},
    )
    async with asyncio.timeout(LIMIT), sdk:
        handle = await sdk.submit_job(
            prompt=PROMPT, model=MODEL, max_tokens=40, seed=SEED, stream=True, node=second.peer_id
        )
        assert handle.stream is not None
        count = 0
        async for _ in handle.stream:
            count += 1
            if count == 3:
                rpc.down()
        details = await sdk.wait_for_job_completion(handle.job_id)
        assert details.status is JobStatus.COMPLETED
        down = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=8, node=second.peer_id)
        with pytest.raises(FabstirError) as failure:
            await sdk.wait_for_job_completion(down.job_id)
        assert failure.value.retryable
        rpc.up = True
        payment = await sdk.approve_job_payment(handle.job_id)
    assert payment.status is PaymentStatus.RELEASED
    assert payment.settled_amount == count * payment.price_per_token

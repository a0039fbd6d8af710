"""Payment faults end to end: a devnet with the contracts on the embedded chain, host processes serving
the real built-in model (SmolLM2 on the embedded llama.cpp), and clients that misbehave (stop
receipting, send bogus receipts) or hosts that die before settling. Whatever goes wrong, the money moves
exactly as the valid receipts say, and a deposit no host settled comes back to the client after expiry.

One devnet serves the module, with two hosts: the raw-client tests use host 2 (2 gwei per token), the
SDK test uses host 1 (1 gwei, the only one under its price limit) and kills it, so the tests do not
depend on their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir import (
    EventName,
    FabstirError,
    FabstirSDK,
    HostConfig,
    JobStatus,
    PaymentError,
    PaymentStatus,
    TransportError,
)
from fabstir.backend import BUILTIN_MODEL_ID
from fabstir.chain import SessionInfo
from fabstir.chain._web3 import Web3Ledger
from fabstir.core._channel import FrameChannel
from fabstir.devnet import DevnetFile, DevnetOptions
from fabstir.devnet._file import DevnetProcess
from fabstir.protocol import (
    PROTOCOL_ID,
    SUPPORTED_VERSIONS,
    Confirm,
    End,
    Error,
    Frame,
    Hello,
    Offer,
    Receipt,
    Request,
    Role,
    TokenBatch,
    sign_receipt,
)
from fabstir.transport import PeerInfo, parse_peer_addr
from fabstir.transport._libp2p import Libp2pTransport

from ._chain import devnet_ledger, gas_cost, rpc, running_devnet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

LIMIT = 90.0  # bound on one test's asyncio work
MODEL = BUILTIN_MODEL_ID
BASE_PRICE = 1_000_000_000  # the devnet's host i charges BASE_PRICE × i per token
MAX_TOKENS = 400
K = 8  # tokens the misbehaving clients pay for with valid receipts
PROMPT = "Tell me a long story."
SESSION_TTL = 3600  # seconds a raw client's session stays open
#: The devnet's hosts run HostConfig's default credit window (`fabstir host run` does not change it).
CREDIT = HostConfig(models=(MODEL,), prices={MODEL: {"ETH": 1}}).credit_tokens


#: The request seed (the model samples deterministically for a seed): with it the story runs well past
#: K + CREDIT tokens, so a host that stops there stops because of payment — the test checks the reason.
SEED = 1


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetFile]:
    """A devnet (embedded chain with the contracts, bootstrap peer, two hosts serving the built-in model
    at 1 and 2 gwei per token) for the whole module; stopped at its end."""
    options = DevnetOptions(hosts=2, backend="builtin", start_timeout=120.0)
    with running_devnet(tmp_path_factory.mktemp("devnet"), options) as file:
        yield file


@pytest.fixture
async def ledger(devnet: DevnetFile) -> AsyncIterator[Web3Ledger]:
    """A ledger on the devnet's chain, for the client's own transactions and for reading balances."""
    async with devnet_ledger(devnet) as ledger:
        yield ledger


@dataclass
class RawJob:
    """A job driven by hand on a bare libp2p stream: the client side of the protocol, frame by frame."""

    channel: FrameChannel
    job_id: str
    offer: Offer
    session: SessionInfo
    client: LocalAccount
    ledger: Web3Ledger
    received: int = 0

    def receipt(self, tokens: int, *, signer: LocalAccount | None = None) -> Receipt:
        """A receipt for ``tokens`` tokens at the offer's price, signed by the client (or ``signer``)."""
        amount = tokens * self.offer.price_per_token
        signature = sign_receipt(
            signer or self.client,
            chain_id=self.ledger.chain_id,
            verifying_contract=self.ledger.verifying_contract,
            session_id=self.session.session_id,
            amount=amount,
        )
        return Receipt(self.session.session_id, self.job_id, tokens, amount, signature)

    async def read_until(self, tokens: int) -> None:
        """Reads token batches until at least ``tokens`` tokens have arrived."""
        while self.received < tokens:
            frame = await self.channel.receive()
            assert isinstance(frame, TokenBatch), f"expected tokens, got {frame!r}"
            self.received += len(frame.tokens)

    async def read_to_the_end(self) -> Frame:
        """Reads (counting token batches) until the host's last frame, ``End`` or ``Error``; returns it."""
        while True:
            frame = await self.channel.receive()
            if isinstance(frame, TokenBatch):
                self.received += len(frame.tokens)
                continue
            assert isinstance(frame, End | Error), f"unexpected {frame!r}"
            return frame


def _peer(host: DevnetProcess) -> PeerInfo:
    """The host as a transport dials it (its multiaddrs without the ``/p2p/`` suffix)."""
    parsed = [parse_peer_addr(addr) for addr in host.addrs]
    return PeerInfo(host.peer_id, tuple(a for p in parsed for a in p.addrs))


@contextlib.asynccontextmanager
async def raw_job(
    transport: Libp2pTransport, host: DevnetProcess, ledger: Web3Ledger, client: LocalAccount
) -> AsyncIterator[RawJob]:
    """Negotiates a job with ``host`` as the SDK would (Hello + Request, the Offer), opens its session on
    chain (deposit: MAX_TOKENS × price, SESSION_TTL past the chain's clock) and confirms it. The stream is
    reset when the block ends."""
    stream = await transport.open_stream(_peer(host), PROTOCOL_ID)
    channel = FrameChannel(stream, Role.CLIENT)
    try:
        job_id = uuid.uuid4().hex
        request = Request(
            job_id=job_id,
            model=MODEL,
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            client_address=client.address,
            payment_token="ETH",
            seed=SEED,
        )
        await channel.send(Hello(SUPPORTED_VERSIONS, "paid-faults-test"), request)
        assert isinstance(await channel.receive(), Hello)
        offer = await channel.receive()
        assert isinstance(offer, Offer), f"expected an offer, got {offer!r}"
        session = await ledger.open_session(
            client,
            host=offer.payment_address,
            token="ETH",
            deposit=MAX_TOKENS * offer.price_per_token,
            price_per_token=offer.price_per_token,
            expiry=await ledger.timestamp() + SESSION_TTL,
        )
        await channel.send(Confirm(job_id, session.session_id))
        yield RawJob(channel, job_id, offer, session, client, ledger)
    finally:
        await channel.reset()


async def _closed_session(ledger: Web3Ledger, session_id: str, *, patience: float = 20.0) -> SessionInfo:
    """The session once the host has closed it (polled; bounded by ``patience``)."""
    async with asyncio.timeout(patience):
        # the chain is another process: polling is the only way to watch it
        while not (session := await ledger.get_session(session_id)).closed:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return session


async def _balances(ledger: Web3Ledger, *addresses: str) -> list[int]:
    return [await ledger.balance_of(a) for a in addresses]


async def test_a_client_that_stops_receipting_is_cut_off_and_pays_only_what_it_receipted(
    devnet: DevnetFile, ledger: Web3Ledger, raw_client: Libp2pTransport
) -> None:
    """A client receipts the first K tokens, then keeps reading but never receipts again. The host
    generates at most ``credit_tokens`` past the last receipt — exactly K + credit_tokens here (the
    backend would go on, the deposit covers MAX_TOKENS) — waits ``receipt_timeout`` for a receipt, then
    ends the job itself with ``End(finish_reason="credit")`` over exactly the tokens sent, and closes the
    session with the K-token receipt: settled == K × price, the host gets that minus the fee (minus its
    gas), the treasury the fee, and the client is refunded the rest of its deposit (it pays K × price
    plus the gas of opening)."""
    host = devnet.hosts[1]
    assert devnet.client_key is not None
    client = Account.from_key(devnet.client_key)
    async with asyncio.timeout(LIMIT):
        first_block = await ledger._tx.w3.eth.block_number + 1
        client_before, treasury_before = await _balances(ledger, client.address, ledger.treasury)
        async with raw_job(raw_client, host, ledger, client) as job:
            price = job.offer.price_per_token
            assert job.offer.credit_tokens == CREDIT
            (host_before,) = await _balances(ledger, job.offer.payment_address)
            await job.read_until(K)
            await job.channel.send(job.receipt(K))
            last = await job.read_to_the_end()
            # After End the client closes its side without a final receipt: the host stops waiting for one.
            await job.channel.close()
            tail = await job.channel.stream.read()
        session = await _closed_session(ledger, job.session.session_id)
        client_gas = ledger.gas_spent(client.address)
        host_gas = await gas_cost(ledger, job.offer.payment_address, first_block)
        client_after, host_after, treasury_after = await _balances(
            ledger, client.address, job.offer.payment_address, ledger.treasury
        )
    assert isinstance(last, End), f"the host ended with {last!r}"
    assert last.finish_reason == "credit"
    assert job.received == K + CREDIT
    assert last.tokens_sent == job.received
    assert tail == b""  # nothing after End: the host closed the stream
    paid = K * price
    fee = ledger.fee_for(paid)
    assert fee > 0
    assert (session.settled, session.refunded) == (paid, job.session.deposit - paid)
    assert client_after - client_before == -paid - client_gas
    assert client_gas == await gas_cost(ledger, client.address, first_block)  # the opening, nothing else
    assert host_after - host_before == paid - fee - host_gas
    assert treasury_after - treasury_before == fee


@pytest.mark.parametrize("fault", ["wrong_signer", "more_tokens_than_sent"])
async def test_a_bogus_receipt_gets_an_error_and_only_valid_receipts_are_paid(
    devnet: DevnetFile, ledger: Web3Ledger, raw_client: Libp2pTransport, fault: str
) -> None:
    """After a valid receipt for K tokens the client sends a bogus one — signed by another key, or for
    more tokens than the host sent. The host answers ``Error(code="invalid_receipt")``, ends the stream
    and closes the session paying exactly the K receipted tokens; the client gets the rest back."""
    host = devnet.hosts[1]
    assert devnet.client_key is not None
    client = Account.from_key(devnet.client_key)
    async with asyncio.timeout(LIMIT):
        (before,) = await _balances(ledger, client.address)
        async with raw_job(raw_client, host, ledger, client) as job:
            price = job.offer.price_per_token
            await job.read_until(K)
            await job.channel.send(job.receipt(K))
            await job.read_until(K + 1)
            if fault == "wrong_signer":
                bogus = job.receipt(job.received, signer=Account.create())
            else:
                bogus = job.receipt(job.received + MAX_TOKENS)
            await job.channel.send(bogus)
            last = await job.read_to_the_end()
        session = await _closed_session(ledger, job.session.session_id)
        (after,) = await _balances(ledger, client.address)
    assert isinstance(last, Error), f"the host ended with {last!r}"
    assert last.code == "invalid_receipt"
    assert not last.retryable
    paid = K * price
    assert (session.settled, session.refunded) == (paid, job.session.deposit - paid)
    assert after - before == -paid - ledger.gas_spent(client.address)  # its gas: the opening


async def test_a_host_that_never_settles_lets_the_client_reclaim_its_deposit_after_expiry(
    devnet: DevnetFile, ledger: Web3Ledger
) -> None:
    """The host is SIGKILLed mid-stream, so it never settles: the job fails with a typed error, and a
    refund before the session's expiry is refused with a retryable PaymentError (the host may still
    settle). Once the chain's clock passes the expiry, the refund reclaims the whole deposit: the client
    is back to its balance minus its gas exactly, the payment is REFUNDED and ``payment:refunded`` is
    emitted with the deposit."""
    host = devnet.hosts[0]
    price = BASE_PRICE
    assert devnet.rpc_url is not None
    sdk = FabstirSDK.from_devnet(
        devnet.directory,
        timeouts={"first_token": 20.0, "inter_token": 2.0},
        recovery={"failover": False},
    )
    refunds: list[int] = []
    sdk.on(EventName.PAYMENT_REFUNDED, lambda event: refunds.append(int(event.data["amount"])))
    async with asyncio.timeout(LIMIT), sdk:
        client = sdk.get_address()
        assert client is not None
        first_block = await ledger._tx.w3.eth.block_number + 1
        (before,) = await _balances(ledger, client)
        handle = await sdk.submit_job(
            prompt=PROMPT,
            model=MODEL,
            max_tokens=MAX_TOKENS,
            seed=SEED,
            max_price_per_token=price,  # host 1 only
            stream=True,
        )
        assert handle.stream is not None
        received = 0
        failure: FabstirError | None = None
        try:
            async with handle.stream as stream:
                async for _ in stream:
                    received += 1
                    if received == 1:  # the first token is here: the host dies mid-stream
                        os.kill(host.pid, signal.SIGKILL)
        except FabstirError as exc:
            failure = exc
        assert failure is not None, "the job survived its host"
        assert await sdk.get_job_status(handle) is JobStatus.FAILED
        with pytest.raises(PaymentError) as early:
            await sdk.request_refund(handle)
        details = await sdk.get_payment_details(handle)
        assert details.session_id is not None
        session = await ledger.get_session(details.session_id)
        assert not session.closed
        assert session.settled == 0
        seconds = int(session.expiry - await ledger.timestamp()) + 1
        rpc(devnet.rpc_url, "evm_increaseTime", seconds)
        rpc(devnet.rpc_url, "evm_mine")
        assert await ledger.timestamp() > session.expiry
        details = await sdk.request_refund(handle)
        (after,) = await _balances(ledger, client)
        gas = sdk.get_gas_spent()
        chain_gas = await gas_cost(ledger, client, first_block)  # opening and reclaiming
    assert received >= 1
    # the stream ended without End or Error, and the job could not be resumed on the dead host
    assert isinstance(failure, TransportError), repr(failure)
    assert early.value.retryable
    assert details.status is PaymentStatus.REFUNDED
    assert await sdk.get_payment_status(handle) is PaymentStatus.REFUNDED
    assert (details.settled_amount, details.refunded_amount) == (0, session.deposit)
    assert session.deposit == MAX_TOKENS * price
    assert refunds == [session.deposit]
    assert gas == chain_gas
    assert after - before == -chain_gas
    closed = await ledger.get_session(session.session_id)
    assert closed.closed
    assert closed.refunded == session.deposit

"""A host without escrow (an :class:`~fabstir.chain.UnescrowedLedger`) over the in-memory seams, driven by
the client core (negotiation and :class:`~fabstir.core._client_job.JobRunner`) with a ledger of its own,
as in production: the host cannot look the session up, so it checks everything it can — the session id's
form, one job per session at a time, and every receipt against the client address inside the id — and
settles nothing."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir import ErrorCode, HostError
from fabstir._models import NodeCapabilities, NodeInfo
from fabstir.backend import GenerationRequest, SimulatedBackend
from fabstir.chain import SessionInfo, UnescrowedLedger
from fabstir.core._channel import FrameChannel
from fabstir.core._client_job import JobRunner
from fabstir.core._negotiation import OfferInHand, request_offer
from fabstir.core._stream import TokenBuffer
from fabstir.host import HostConfig, HostNode
from fabstir.protocol import (
    SUPPORTED_VERSIONS,
    Confirm,
    End,
    Error,
    PeerIdentity,
    Receipt,
    Request,
    TokenBatch,
)
from fabstir.protocol import sign_receipt as sign
from fabstir.transport import InMemoryNetwork, Transport

MODEL = "sim-model"
PRICE = 1_000
CREDIT = 8
PROMPT = "Tell me about lanterns"
#: Bounds every test (they take milliseconds; this only stops a hang).
LIMIT = 10.0


def _seed(*parts: str) -> bytes:
    return hashlib.sha256(":".join(("unescrowed-host-tests", *parts)).encode()).digest()


@dataclass
class Market:
    network: InMemoryNetwork
    node: HostNode
    backend: SimulatedBackend
    host_ledger: UnescrowedLedger


@dataclass
class Client:
    """A client with its own libp2p-like transport, wallet and unescrowed ledger (its promises)."""

    transport: Transport
    account: LocalAccount
    ledger: UnescrowedLedger
    jobs: int = 0


@pytest.fixture
async def market() -> AsyncIterator[Market]:
    network = InMemoryNetwork()
    transport = network.create_transport(PeerIdentity(_seed("host-peer")))
    await transport.start()
    backend = SimulatedBackend([MODEL])
    ledger = UnescrowedLedger()
    node = HostNode(
        HostConfig(models=(MODEL,), prices={MODEL: {"ETH": PRICE}}, batch_interval=0.0, credit_tokens=CREDIT),
        transport=transport,
        ledger=ledger,
        backend=backend,
        account=Account.from_key(_seed("host-account")),
    )
    async with asyncio.timeout(LIMIT):
        await node.start()
        yield Market(network, node, backend, ledger)
        await node.aclose()
        await transport.aclose()


async def new_client(market: Market, name: str) -> Client:
    transport = market.network.create_transport(PeerIdentity(_seed("client-peer", name)))
    await transport.start()
    return Client(transport, Account.from_key(_seed("client-account", name)), UnescrowedLedger())


async def offer(market: Market, client: Client, max_tokens: int = 40) -> tuple[Request, OfferInHand]:
    """Asks the host for an offer with the core's negotiation (a job stream is open on success)."""
    client.jobs += 1
    request = Request(
        job_id=f"{client.transport.peer_id[-6:]}-{client.jobs}",
        model=MODEL,
        prompt=PROMPT,
        max_tokens=max_tokens,
        client_address=client.account.address,
        payment_token="ETH",
    )
    node = NodeInfo(
        peer_id=market.node.peer_id,
        addresses=(),
        capabilities=NodeCapabilities(
            models=(MODEL,),
            prices={MODEL: {"ETH": PRICE}},
            max_tokens=2048,
            max_concurrent_jobs=4,
            current_load=0,
            payment_address=market.node.payment_address,
            chain_id=client.ledger.chain_id,
            protocol_versions=SUPPORTED_VERSIONS,
        ),
    )
    reply = await request_offer(
        client.transport, node, request, agent="test-client", chain_id=client.ledger.chain_id, timeout=5.0
    )
    assert isinstance(reply, OfferInHand), reply
    return request, reply


async def promise(client: Client, in_hand: OfferInHand, opener: LocalAccount | None = None) -> SessionInfo:
    """The client's session for an offer: a local promise, nothing deposited."""
    return await client.ledger.open_session(
        opener or client.account,
        host=in_hand.offer.payment_address,
        token=in_hand.offer.payment_token,
        deposit=0,
        price_per_token=in_hand.offer.price_per_token,
        expiry=time.time() + 3600,
    )


def runner(
    client: Client, request: Request, in_hand: OfferInHand, session: SessionInfo, **kw: Any
) -> JobRunner:
    values: dict[str, Any] = {
        "job_key": request.job_id,
        "offer": in_hand,
        "session": session,
        "ledger": client.ledger,
        "account": client.account,
        "buffer": TokenBuffer(),
        "first_token_timeout": 5.0,
        "inter_token_timeout": 5.0,
    }
    values.update(kw)
    return JobRunner(**values)


def expected_tokens(market: Market, max_tokens: int) -> tuple[str, ...]:
    return market.backend.completion(GenerationRequest(model=MODEL, prompt=PROMPT, max_tokens=max_tokens))[0]


def assert_nothing_settled(market: Market) -> None:
    metrics = market.node.metrics()
    assert metrics.settlements == 0
    assert metrics.settlement_failures == 0
    assert dict(metrics.earnings) == {}


async def test_a_job_runs_and_nothing_is_settled(market: Market) -> None:
    """Offer on the unescrowed chain id → confirm with a promised session → the whole completion streams
    (beyond the credit window, so receipts were accepted) → the host records the final receipt's amount,
    closes no session, and counts no settlement nor settlement failure. No balance moved anywhere."""
    alice = await new_client(market, "alice")
    request, in_hand = await offer(market, alice)
    assert in_hand.offer.chain_id == market.host_ledger.chain_id == alice.ledger.chain_id
    assert in_hand.offer.credit_tokens == CREDIT
    session = await promise(alice, in_hand)
    job = runner(alice, request, in_hand, session)
    outcome = await job.run()

    tokens = expected_tokens(market, 40)
    assert len(tokens) > CREDIT
    assert outcome.tokens_received == len(tokens)
    assert job.acknowledged == len(tokens)
    settled = await market.node.wait_job_settled(request.job_id)
    assert settled.outcome == "completed"
    assert settled.session_id == session.session_id
    assert settled.settlement is None
    assert settled.receipt_amount == len(tokens) * PRICE
    metrics = market.node.metrics()
    assert (metrics.jobs_accepted, metrics.jobs_completed, metrics.jobs_failed) == (1, 1, 0)
    assert metrics.tokens_served == len(tokens)
    assert metrics.bad_clients == 0
    assert_nothing_settled(market)
    for address in (alice.account.address, market.node.payment_address):
        assert await alice.ledger.balance_of(address) == 0
        assert await market.host_ledger.balance_of(address) == 0


async def test_a_receipt_signed_by_another_key_is_refused(market: Market) -> None:
    """Mallory confirms with a session id naming Alice and signs the receipts herself: the first receipt
    is refused with Error(invalid_receipt), the job fails with no receipted amount, the host counts a bad
    client — and still settles nothing (no settlement failure either)."""
    alice = await new_client(market, "alice")
    mallory: LocalAccount = Account.from_key(_seed("mallory"))
    request, in_hand = await offer(market, alice)
    session = await promise(alice, in_hand)
    job = runner(alice, request, in_hand, session, account=mallory)
    with pytest.raises(HostError) as caught:
        await job.run()
    assert caught.value.context["remote_code"] == ErrorCode.INVALID_RECEIPT.value
    settled = await market.node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.receipt_amount == 0
    assert settled.settlement is None
    assert market.node.metrics().bad_clients == 1
    assert_nothing_settled(market)


async def test_a_confirm_with_a_malformed_session_id_is_refused(market: Market) -> None:
    """A session id that carries no client address is refused with Error(payment, not retryable) before
    any token is generated, and the slot is free again."""
    alice = await new_client(market, "alice")
    request, in_hand = await offer(market, alice)
    await in_hand.channel.send(Confirm(request.job_id, "0x" + "99" * 31))
    error = await in_hand.channel.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.PAYMENT.value
    assert "not a session id" in error.message
    assert not error.retryable
    await in_hand.channel.reset()
    metrics = market.node.metrics()
    assert (metrics.jobs_accepted, metrics.tokens_served, metrics.active, metrics.queued) == (0, 0, 0, 0)


def receipt(client: Client, request: Request, session: SessionInfo, tokens: int) -> Receipt:
    """A genuine receipt of ``client`` for ``tokens`` tokens of ``request``."""
    amount = tokens * session.price_per_token
    signature = sign(
        client.account,
        chain_id=client.ledger.chain_id,
        verifying_contract=client.ledger.verifying_contract,
        session_id=session.session_id,
        amount=amount,
    )
    return Receipt(session.session_id, request.job_id, tokens, amount, signature)


async def drain(
    client: Client, channel: FrameChannel, request: Request, session: SessionInfo, received: int
) -> int:
    """Acknowledges the ``received`` tokens, then reads the job to its End, acknowledging every batch and
    the end; returns how many tokens arrived in all."""
    await channel.send(receipt(client, request, session, received))
    while True:
        frame = await channel.receive()
        if isinstance(frame, TokenBatch):
            received += len(frame.tokens)
            await channel.send(receipt(client, request, session, received))
            continue
        assert isinstance(frame, End), frame
        await channel.send(receipt(client, request, session, received))
        await channel.close()
        return received


async def test_one_session_cannot_pay_for_two_concurrent_jobs(market: Market) -> None:
    """While job A streams on session S, confirming job B with the same S is refused with Error(payment)
    ("already pays for another job"); job A is unaffected and completes, unsettled."""
    alice = await new_client(market, "alice")
    a_request, a_offer = await offer(market, alice)
    session = await promise(alice, a_offer)
    await a_offer.channel.send(Confirm(a_request.job_id, session.session_id))
    first = await a_offer.channel.receive()
    assert isinstance(first, TokenBatch), first  # job A is confirmed and generating: S is in use

    b_request, b_offer = await offer(market, alice)
    await b_offer.channel.send(Confirm(b_request.job_id, session.session_id))
    refusal = await b_offer.channel.receive()
    assert isinstance(refusal, Error)
    assert refusal.code == ErrorCode.PAYMENT.value
    assert "another job" in refusal.message
    await b_offer.channel.reset()

    received = await drain(alice, a_offer.channel, a_request, session, len(first.tokens))
    assert received == len(expected_tokens(market, 40))
    settled = await market.node.wait_job_settled(a_request.job_id)
    assert settled.outcome == "completed"
    assert settled.tokens_sent == len(expected_tokens(market, 40))
    assert settled.settlement is None
    metrics = market.node.metrics()
    assert (metrics.jobs_accepted, metrics.jobs_completed, metrics.jobs_failed) == (1, 1, 1)
    assert_nothing_settled(market)

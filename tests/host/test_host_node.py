"""The host node over the in-memory seams, driven by a hand-written client speaking the job protocol."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir import ErrorCode, PaymentError, RejectReason, TransportError
from fabstir.backend import GenerationRequest, SimulatedBackend
from fabstir.chain import InMemoryLedger, PaymentLedger, SessionInfo
from fabstir.core._channel import FrameChannel
from fabstir.host import HostConfig, HostFaults, HostNode, SettledJob
from fabstir.protocol import (
    MAX_FRAME_SIZE,
    PROTOCOL_ID,
    RECORD_PROTOCOL_ID,
    SUPPORTED_VERSIONS,
    Cancel,
    Confirm,
    End,
    Error,
    Frame,
    FrameDecoder,
    Hello,
    Offer,
    PeerIdentity,
    Receipt,
    Reject,
    Request,
    Resume,
    Role,
    TokenBatch,
    capability_key,
    decode_capability_record,
    encode,
    end_signing_payload,
    model_key,
    service_key,
    sign_receipt,
    verify_peer_signature,
)
from fabstir.transport import InMemoryNetwork, PeerInfo, Stream, Transport

MODEL = "sim-model"
PRICE = 1_000
FEE_BPS = 100
FUNDS = 10**12
PROMPT = "Tell me a story about a lantern"
#: Every test is bounded by this (they finish in milliseconds; this only stops a hang).
LIMIT = 10.0


def _seed(*parts: str) -> bytes:
    return hashlib.sha256(":".join(("host-tests", *parts)).encode()).digest()


@dataclass
class Env:
    network: InMemoryNetwork
    ledger: InMemoryLedger
    backend: SimulatedBackend
    host_transport: Transport
    host_account: LocalAccount
    nodes: list[HostNode] = field(default_factory=list)

    async def start_node(
        self,
        *,
        ledger: PaymentLedger | None = None,
        process_fault: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> HostNode:
        values: dict[str, Any] = {
            "models": (MODEL,),
            "prices": {MODEL: {"ETH": PRICE, "USDC": 3}},
            "batch_interval": 0.0,
            "agent": "test-host",
        }
        values.update(overrides)
        node = HostNode(
            HostConfig(**values),
            transport=self.host_transport,
            ledger=ledger or self.ledger,
            backend=self.backend,
            account=self.host_account,
            process_fault=process_fault,
        )
        self.nodes.append(node)
        await node.start()
        return node

    def completion(self, max_tokens: int, prompt: str = PROMPT) -> tuple[str, ...]:
        return self.backend.completion(GenerationRequest(model=MODEL, prompt=prompt, max_tokens=max_tokens))[
            0
        ]


@pytest.fixture
def window() -> int:
    """The in-memory network's per-stream window in bytes (a test may override this fixture)."""
    return 256 * 1024


@pytest.fixture
async def env(window: int) -> AsyncIterator[Env]:
    async with host_env(window) as environment:
        yield environment


@contextlib.asynccontextmanager
async def host_env(window: int = 256 * 1024) -> AsyncIterator[Env]:
    """A host transport and ledger on an in-memory network (the nodes started in it close at the end)."""
    network = InMemoryNetwork(window=window)
    ledger = InMemoryLedger(chain_id=31337, fee_basis_points=FEE_BPS)
    transport = network.create_transport(PeerIdentity(_seed("host-peer")))
    await transport.start()
    environment = Env(
        network=network,
        ledger=ledger,
        backend=SimulatedBackend([MODEL]),
        host_transport=transport,
        host_account=Account.from_key(_seed("host-account")),
    )
    async with asyncio.timeout(LIMIT):
        yield environment
        for node in environment.nodes:
            await node.aclose()
        await transport.aclose()


@dataclass
class Run:
    """What a client saw of one job."""

    tokens: list[tuple[int, str]] = field(default_factory=list)
    end: End | None = None
    error: Error | None = None
    broken: bool = False
    acknowledged: int = 0

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.tokens)


class Client:
    """A client written by hand from the protocol description, with an eth account funded on the ledger."""

    def __init__(self, env: Env, name: str = "client") -> None:
        self.env = env
        self.account: LocalAccount = Account.from_key(_seed("client-account", name))
        env.ledger.mint(self.account.address, FUNDS, "ETH")
        self.transport = env.network.create_transport(PeerIdentity(_seed("client-peer", name)))
        self.job_counter = 0

    async def start(self) -> Client:
        await self.transport.start()
        return self

    async def open(self) -> FrameChannel:
        stream = await self.transport.open_stream(PeerInfo(self.env.host_transport.peer_id), PROTOCOL_ID)
        return FrameChannel(stream, Role.CLIENT)

    def request(self, **overrides: Any) -> Request:
        self.job_counter += 1
        values: dict[str, Any] = {
            "job_id": f"{self.transport.peer_id[-6:]}-{self.job_counter}",
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": 64,
            "client_address": self.account.address,
            "payment_token": "ETH",
        }
        values.update(overrides)
        return Request(**values)

    async def negotiate(
        self, request: Request, versions: tuple[str, ...] = SUPPORTED_VERSIONS
    ) -> tuple[FrameChannel, Hello, Frame]:
        channel = await self.open()
        await channel.send(Hello(versions, "test-client"), request)
        hello = await channel.receive()
        assert isinstance(hello, Hello)
        return channel, hello, await channel.receive()

    async def open_session(self, offer: Offer, **overrides: Any) -> SessionInfo:
        values: dict[str, Any] = {
            "host": offer.payment_address,
            "token": offer.payment_token,
            "deposit": 1000 * offer.price_per_token,
            "price_per_token": offer.price_per_token,
            "expiry": time.time() + 3600,
        }
        values.update(overrides)
        return await self.env.ledger.open_session(self.account, **values)

    async def confirmed(self, **request_overrides: Any) -> tuple[FrameChannel, Request, SessionInfo]:
        """Negotiates, opens a session for the offer and confirms it."""
        request = self.request(**request_overrides)
        channel, _, reply = await self.negotiate(request)
        assert isinstance(reply, Offer), reply
        session = await self.open_session(reply)
        await channel.send(Confirm(request.job_id, session.session_id))
        return channel, request, session

    def receipt(
        self, session: SessionInfo, job_id: str, tokens: int, *, signer: LocalAccount | None = None
    ) -> Receipt:
        amount = tokens * session.price_per_token
        signature = sign_receipt(
            signer or self.account,
            chain_id=self.env.ledger.chain_id,
            verifying_contract=self.env.ledger.verifying_contract,
            session_id=session.session_id,
            amount=amount,
        )
        return Receipt(session.session_id, job_id, tokens, amount, signature)

    async def acknowledge(
        self, channel: FrameChannel, request: Request, session: SessionInfo, run: Run
    ) -> None:
        await channel.send(self.receipt(session, request.job_id, len(run.tokens)))
        run.acknowledged = len(run.tokens)

    async def credit_acknowledged(
        self, channel: FrameChannel, request: Request, session: SessionInfo, credit: int
    ) -> Run:
        """Receives a full credit window, acknowledges it with one receipt, and receives the next batch:
        that batch proves the host processed the receipt (it was blocked on credit). Nothing after the
        window is acknowledged."""
        run = await self.follow(channel, request, session, receipts=False, stop_after=credit)
        assert len(run.tokens) == credit
        await self.acknowledge(channel, request, session, run)
        return await self.follow(channel, request, session, receipts=False, run=run, stop_after=credit + 1)

    async def follow(
        self,
        channel: FrameChannel,
        request: Request,
        session: SessionInfo,
        *,
        receipts: bool = True,
        run: Run | None = None,
        stop_after: int | None = None,
    ) -> Run:
        """Reads the job to its end (or until ``stop_after`` tokens), acknowledging every batch."""
        run = run or Run()
        if receipts and len(run.tokens) > run.acknowledged:
            await self.acknowledge(channel, request, session, run)
        while True:
            try:
                frame = await channel.receive()
            except TransportError:
                run.broken = True
                await channel.reset()
                return run
            match frame:
                case TokenBatch(seq=seq, tokens=texts):
                    run.tokens += [(seq + i, t) for i, t in enumerate(texts)]
                    if receipts:
                        await self.acknowledge(channel, request, session, run)
                    if stop_after is not None and len(run.tokens) >= stop_after:
                        return run
                case End() as end:
                    run.end = end
                    await channel.send(self.receipt(session, request.job_id, len(run.tokens)))
                    await channel.close()
                    return run
                case Error() as error:
                    run.error = error
                    await channel.close()
                    return run
                case _:
                    raise AssertionError(f"unexpected {frame}")


async def client(env: Env, name: str = "client") -> Client:
    return await Client(env, name).start()


def assert_end_is_honest(env: Env, run: Run, end: End, job_id: str) -> None:
    texts = [t for _, t in run.tokens]
    assert end.tokens_sent == len(texts)
    assert end.transcript_hash == hashlib.sha256("".join(texts).encode()).digest()
    payload = end_signing_payload(job_id, end.completion_tokens, end.tokens_sent, end.transcript_hash)
    assert verify_peer_signature(env.host_transport.peer_id, payload, end.signature)


# -- the happy path ------------------------------------------------------------------------------------


async def test_happy_path_streams_and_settles(env: Env) -> None:
    """A job streams the backend's text in gap-free batches, ends with a signed, honest End, and the session
    is closed with the final receipt: host paid tokens × price minus the fee, treasury the fee, client
    refunded the rest."""
    node = await env.start_node()
    alice = await client(env, "alice")
    request = alice.request(max_tokens=40)
    channel, hello, offer = await alice.negotiate(request)
    assert hello.versions == ("1.0",)
    assert hello.agent == "test-host"
    assert isinstance(offer, Offer)
    assert (offer.price_per_token, offer.payment_token, offer.payment_address) == (
        PRICE,
        "ETH",
        node.payment_address,
    )
    assert offer.chain_id == env.ledger.chain_id
    assert offer.credit_tokens == 64
    assert offer.hold_ms == 10_000
    session = await alice.open_session(offer, deposit=100 * PRICE)
    await channel.send(Confirm(request.job_id, session.session_id))
    run = await alice.follow(channel, request, session)

    expected = env.completion(40)
    assert run.text == "".join(expected)
    assert [i for i, _ in run.tokens] == list(range(len(expected)))
    assert run.end is not None
    assert run.end.finish_reason in {"stop", "length"}
    assert run.end.completion_tokens == len(expected)
    assert run.end.prompt_tokens == len(PROMPT) // 4 + 1
    assert_end_is_honest(env, run, run.end, request.job_id)

    settled = await node.wait_job_settled(request.job_id)
    amount = len(expected) * PRICE
    fee = amount * FEE_BPS // 10_000
    assert settled.outcome == "completed"
    assert settled.settlement is not None
    assert settled.settlement.amount == amount
    assert settled.settlement.fee == fee
    assert await env.ledger.balance_of(node.payment_address) == amount - fee
    assert await env.ledger.balance_of(env.ledger.treasury) == fee
    assert await env.ledger.balance_of(alice.account.address) == FUNDS - amount
    closed = await env.ledger.get_session(session.session_id)
    assert closed.closed
    assert closed.refunded == 100 * PRICE - amount

    metrics = node.metrics()
    assert metrics.jobs_accepted == 1
    assert metrics.jobs_completed == 1
    assert metrics.jobs_failed == 0
    assert metrics.tokens_served == len(expected)
    assert metrics.earnings == {"ETH": amount - fee}
    assert metrics.active == 0
    assert metrics.queued == 0


async def test_batches_coalesce_tokens(env: Env) -> None:
    """With a batch interval, tokens generated meanwhile travel together: fewer batches than tokens."""
    await env.start_node(batch_interval=0.01)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=60)
    batches = 0
    run = Run()
    while run.end is None:
        frame = await channel.receive()
        if isinstance(frame, TokenBatch):
            batches += 1
            run.tokens += [(frame.seq + i, t) for i, t in enumerate(frame.tokens)]
            await channel.send(alice.receipt(session, request.job_id, len(run.tokens)))
        else:
            assert isinstance(frame, End)
            run.end = frame
    assert batches < len(run.tokens)


# -- negotiation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model": "no-such-model"}, RejectReason.UNSUPPORTED_MODEL),
        ({"max_tokens": 100_000}, RejectReason.ERROR),
        ({"max_price_per_token": PRICE - 1}, RejectReason.INSUFFICIENT_PAYMENT),
        ({"payment_token": "DOGE"}, RejectReason.INSUFFICIENT_PAYMENT),
    ],
)
async def test_reject_reasons(env: Env, overrides: dict[str, Any], reason: RejectReason) -> None:
    """Requests the host cannot serve get Hello then Reject with the right reason, and are counted."""
    node = await env.start_node()
    alice = await client(env)
    channel, hello, reply = await alice.negotiate(alice.request(**overrides))
    assert hello.versions == ("1.0",)
    assert isinstance(reply, Reject)
    assert reply.reason == reason
    assert reply.message
    assert node.metrics().jobs_rejected == {reason.value: 1}
    await channel.close()


async def test_version_mismatch(env: Env) -> None:
    """A client speaking no shared major version gets the host's versions, then Reject(version_mismatch)."""
    await env.start_node()
    alice = await client(env)
    _, hello, reply = await alice.negotiate(alice.request(), versions=("2.0",))
    assert hello.versions == SUPPORTED_VERSIONS
    assert isinstance(reply, Reject)
    assert reply.reason == RejectReason.VERSION_MISMATCH


async def test_fault_reject(env: Env) -> None:
    """The reject fault answers every request with the scripted reason."""
    await env.start_node(faults=HostFaults(reject="busy"))
    alice = await client(env)
    _, _, reply = await alice.negotiate(alice.request())
    assert isinstance(reply, Reject)
    assert reply.reason == "busy"


async def test_busy_when_slots_and_queue_are_full_and_the_queue_serves_later(env: Env) -> None:
    """With one slot and one queue place: the second job queues behind the first, a third is rejected
    busy, and the queued job is served once the first one ends."""
    node = await env.start_node(max_concurrent_jobs=1, max_queue=1, credit_tokens=4, receipt_timeout=30)
    alice, bob, carol = await client(env, "alice"), await client(env, "bob"), await client(env, "carol")
    a_channel, a_request, a_session = await alice.confirmed(max_tokens=20)
    a_run = await alice.follow(a_channel, a_request, a_session, receipts=False, stop_after=1)
    assert node.metrics().active == 1

    b_channel, b_request, b_session = await bob.confirmed(max_tokens=10)
    assert node.metrics().queued == 1
    _, _, reply = await carol.negotiate(carol.request())
    assert isinstance(reply, Reject)
    assert reply.reason == RejectReason.BUSY

    a_run = await alice.follow(a_channel, a_request, a_session, run=a_run)
    assert a_run.end is not None
    b_run = await bob.follow(b_channel, b_request, b_session)
    assert b_run.end is not None
    assert b_run.text == "".join(env.completion(10))
    await node.wait_job_settled(b_request.job_id)
    assert node.metrics().queued == 0
    assert node.metrics().active == 0


async def test_queued_offer_estimates_longer(env: Env) -> None:
    """An offer made while every slot is taken estimates a longer time than one with a free slot."""
    await env.start_node(max_concurrent_jobs=1, max_queue=1)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    _, _, first = await alice.negotiate(alice.request())
    _, _, second = await bob.negotiate(bob.request())
    assert isinstance(first, Offer)
    assert isinstance(second, Offer)
    assert second.estimated_time_ms > first.estimated_time_ms > 0


async def test_hold_timeout_releases_the_place(env: Env) -> None:
    """An offer not confirmed within hold_ms gets Error(timeout) and frees its place for the next client."""
    node = await env.start_node(max_concurrent_jobs=1, max_queue=0, hold_ms=20)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    channel, _, offer = await alice.negotiate(alice.request())
    assert isinstance(offer, Offer)
    error = await channel.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.TIMEOUT
    _, _, reply = await bob.negotiate(bob.request())
    assert isinstance(reply, Offer)
    assert node.metrics().jobs_offered == 2


async def test_declined_offer_releases_the_place(env: Env) -> None:
    """Cancel(declined) instead of Confirm releases the reservation at once."""
    await env.start_node(max_concurrent_jobs=1, max_queue=0)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    request = alice.request()
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    await channel.send(Cancel(request.job_id, "declined"))
    with pytest.raises(TransportError):
        await channel.receive()  # the host closed the stream
    _, _, reply = await bob.negotiate(bob.request())
    assert isinstance(reply, Offer)


@pytest.mark.parametrize(
    ("session_overrides", "fragment"),
    [
        ({"price_per_token": PRICE - 1}, "price"),
        ({"deposit": PRICE - 1}, "one token"),
        ({"expiry_in": 10}, "expires"),
        ({"host": "0x" + "12" * 20}, "another host"),
    ],
)
async def test_confirm_with_a_bad_session_is_refused(
    env: Env, session_overrides: dict[str, Any], fragment: str
) -> None:
    """Confirming with a session that does not pay for the offer gets Error(payment, not retryable)."""
    node = await env.start_node(max_concurrent_jobs=1, max_queue=0)
    alice = await client(env)
    request = alice.request()
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    overrides = dict(session_overrides)
    if "expiry_in" in overrides:
        overrides["expiry"] = time.time() + overrides.pop("expiry_in")
    session = await alice.open_session(offer, **overrides)
    await channel.send(Confirm(request.job_id, session.session_id))
    error = await channel.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.PAYMENT
    assert not error.retryable
    assert fragment in error.message
    _, _, reply = await alice.negotiate(alice.request())
    assert isinstance(reply, Offer), "the place was released"
    assert node.metrics().jobs_failed == 1


async def test_confirm_with_an_unknown_session_is_refused(env: Env) -> None:
    """A session id the ledger does not know gets Error(payment)."""
    await env.start_node()
    alice = await client(env)
    request = alice.request()
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    await channel.send(Confirm(request.job_id, "0x" + "99" * 32))
    error = await channel.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.PAYMENT


# -- streaming, credit, cancellation -------------------------------------------------------------------


async def test_no_receipts_ends_with_credit(env: Env) -> None:
    """A client that never acknowledges gets credit_tokens tokens, then End(credit) after receipt_timeout."""
    node = await env.start_node(credit_tokens=4, receipt_timeout=0.05)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=50)
    run = await alice.follow(channel, request, session, receipts=False)
    assert run.end is not None
    assert run.end.finish_reason == "credit"
    assert len(run.tokens) == 4
    assert run.end.tokens_sent == 4
    settled = await node.wait_job_settled(request.job_id)
    assert settled.receipt_amount == 4 * PRICE  # the final receipt after End still counted


async def test_credit_window_follows_receipts(env: Env) -> None:
    """The host never runs more than credit_tokens ahead of the latest receipt."""
    await env.start_node(credit_tokens=3)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    acknowledged = 0
    received = 0
    while True:
        frame = await channel.receive()
        if isinstance(frame, End):
            break
        assert isinstance(frame, TokenBatch)
        received += len(frame.tokens)
        assert received <= acknowledged + 3
        if received - acknowledged >= 2:  # acknowledge in steps, like the SDK (every credit/2 tokens)
            await channel.send(alice.receipt(session, request.job_id, received))
            acknowledged = received
    assert received == len(env.completion(30))


async def test_deposit_limits_the_tokens(env: Env) -> None:
    """The host sends no more tokens than the session's deposit pays for, then ends with credit."""
    node = await env.start_node()
    alice = await client(env)
    request = alice.request(max_tokens=50)
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    session = await alice.open_session(offer, deposit=5 * PRICE + PRICE // 2)
    await channel.send(Confirm(request.job_id, session.session_id))
    run = await alice.follow(channel, request, session)
    assert run.end is not None
    assert run.end.finish_reason == "credit"
    assert len(run.tokens) == 5
    settled = await node.wait_job_settled(request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.amount == 5 * PRICE


async def test_cancel_mid_stream(env: Env) -> None:
    """Cancel after tokens arrived stops generation: End(cancelled) for what was sent, paid for that."""
    node = await env.start_node(credit_tokens=4, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=60)
    run = await alice.follow(channel, request, session, receipts=False, stop_after=1)
    await channel.send(Cancel(request.job_id, "user"))
    run = await alice.follow(channel, request, session, receipts=False, run=run)
    assert run.end is not None
    assert run.end.finish_reason == "cancelled"
    assert 1 <= len(run.tokens) <= 4
    assert_end_is_honest(env, run, run.end, request.job_id)
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "completed"
    assert settled.finish_reason == "cancelled"
    assert settled.settlement is not None
    assert settled.settlement.amount == len(run.tokens) * PRICE
    assert node.metrics().jobs_cancelled == 1
    assert node.metrics().active == 0


async def test_client_vanishes_mid_stream(env: Env) -> None:
    """A client that resets its stream mid-job: generation stops, the slot is released, and the session is
    closed, paying what was receipted."""
    node = await env.start_node(max_concurrent_jobs=1, max_queue=0, credit_tokens=4, resume_ttl=0)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    channel, request, session = await alice.confirmed(max_tokens=60)
    run = await alice.credit_acknowledged(channel, request, session, 4)
    await channel.reset()
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.error
    assert settled.settlement is not None
    assert settled.settlement.amount == run.acknowledged * PRICE
    assert (await env.ledger.get_session(session.session_id)).closed
    assert node.metrics().active == 0
    _, _, reply = await bob.negotiate(bob.request())
    assert isinstance(reply, Offer), "the slot was released"


async def test_client_eof_mid_stream_is_a_break(env: Env) -> None:
    """A client that closes its side before End is treated as gone: the job is settled as failed."""
    node = await env.start_node(credit_tokens=4, resume_ttl=0, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=60)
    await alice.follow(channel, request, session, receipts=False, stop_after=1)
    await channel.close()
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.receipt_amount == 0
    closed = await env.ledger.get_session(session.session_id)
    assert closed.closed
    assert closed.settled == 0
    assert closed.refunded == session.deposit


async def test_invalid_receipt_is_an_error(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A receipt not signed by the session's client gets Error(invalid_receipt); the job stops and the
    host logs the bad client."""
    node = await env.start_node(credit_tokens=4)
    alice = await client(env)
    mallory: LocalAccount = Account.from_key(_seed("mallory"))
    channel, request, session = await alice.confirmed(max_tokens=60)
    run = await alice.follow(channel, request, session, receipts=False, stop_after=1)
    with caplog.at_level(logging.WARNING, logger="fabstir.host"):
        await channel.send(alice.receipt(session, request.job_id, len(run.tokens), signer=mallory))
        run = await alice.follow(channel, request, session, receipts=False, run=run)
        settled = await node.wait_job_settled(request.job_id)
    assert run.error is not None
    assert run.error.code == ErrorCode.INVALID_RECEIPT
    assert settled.outcome == "failed"
    assert settled.settlement is not None
    assert settled.settlement.amount == 0
    assert any("bad client" in r.message for r in caplog.records)
    assert node.metrics().bad_clients == 1


async def test_receipt_for_unsent_tokens_is_an_error(env: Env) -> None:
    """A receipt claiming more tokens than were sent is refused with Error(invalid_receipt)."""
    await env.start_node(credit_tokens=4)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=60)
    run = await alice.follow(channel, request, session, receipts=False, stop_after=1)
    await channel.send(alice.receipt(session, request.job_id, 50))
    run = await alice.follow(channel, request, session, receipts=False, run=run)
    assert run.error is not None
    assert run.error.code == ErrorCode.INVALID_RECEIPT


# -- bad clients ---------------------------------------------------------------------------------------


async def read_reply(stream: Stream) -> list[Frame]:
    """Everything the host writes until it closes or resets the stream, decoded."""
    decoder = FrameDecoder()
    frames: list[Frame] = []
    while True:
        try:
            data = await stream.read()
        except TransportError:
            return frames
        if not data:
            return frames
        frames += decoder.receive_data(data)


async def test_malformed_and_oversized_frames_get_errors_while_others_are_served(env: Env) -> None:
    """Garbage bytes and an oversized length prefix each get an Error frame with the matching code and a
    reset, while a concurrent well-behaved job streams to its end."""
    node = await env.start_node(credit_tokens=4, receipt_timeout=30)
    alice, mallory, trudy = (
        await client(env, "alice"),
        await client(env, "mallory"),
        await client(env, "trudy"),
    )
    channel, request, session = await alice.confirmed(max_tokens=40)
    run = await alice.follow(channel, request, session, stop_after=1)

    garbage = await mallory.transport.open_stream(PeerInfo(env.host_transport.peer_id), PROTOCOL_ID)
    await garbage.write(b"\x05\xc1\xc1\xc1\xc1\xc1")  # a 5-byte frame of bytes msgpack never uses
    oversized = await trudy.transport.open_stream(PeerInfo(env.host_transport.peer_id), PROTOCOL_ID)
    header = bytearray()
    size = MAX_FRAME_SIZE + 1
    while size > 0x7F:
        header.append((size & 0x7F) | 0x80)
        size >>= 7
    header.append(size)
    await oversized.write(bytes(header))

    garbage_reply = await read_reply(garbage)
    oversized_reply = await read_reply(oversized)
    assert [type(f) for f in garbage_reply] == [Error]
    assert isinstance(garbage_reply[0], Error)
    assert garbage_reply[0].code == ErrorCode.MALFORMED_FRAME
    assert isinstance(oversized_reply[0], Error)
    assert oversized_reply[0].code == ErrorCode.FRAME_TOO_LARGE

    run = await alice.follow(channel, request, session, run=run)
    assert run.end is not None
    assert run.text == "".join(env.completion(40))
    assert node.metrics().bad_clients == 2


async def test_out_of_order_frame_gets_an_error(env: Env) -> None:
    """A client that confirms before requesting breaks the state machine: Error(unexpected_frame)."""
    await env.start_node()
    alice = await client(env)
    stream = await alice.transport.open_stream(PeerInfo(env.host_transport.peer_id), PROTOCOL_ID)
    await stream.write(encode(Hello(SUPPORTED_VERSIONS)) + encode(Confirm("j", "0x" + "00" * 32)))
    reply = await read_reply(stream)
    assert isinstance(reply[-1], Error)
    assert reply[-1].code == ErrorCode.UNEXPECTED_FRAME


async def test_silent_client_times_out(env: Env) -> None:
    """A client that opens a stream and sends nothing gets Error(timeout) after receipt_timeout."""
    await env.start_node(receipt_timeout=0.05)
    alice = await client(env)
    stream = await alice.transport.open_stream(PeerInfo(env.host_transport.peer_id), PROTOCOL_ID)
    reply = await read_reply(stream)
    assert isinstance(reply[-1], Error)
    assert reply[-1].code == ErrorCode.TIMEOUT


# -- resumption ----------------------------------------------------------------------------------------


async def test_resume_after_a_broken_stream(env: Env) -> None:
    """After a stream breaks, Resume(job_id, from_seq) on a new stream continues the same job: the batches
    from from_seq to End, with an End covering the whole transcript; the job is then settled."""
    node = await env.start_node(credit_tokens=4, resume_ttl=30, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session, stop_after=2)
    await channel.reset()

    resumed = await alice.open()
    await resumed.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, len(run.tokens)))
    hello = await resumed.receive()
    assert isinstance(hello, Hello)
    assert hello.versions == ("1.0",)
    # the reset may have swallowed the last receipt: a resuming client repeats it
    await alice.acknowledge(resumed, request, session, run)
    run = await alice.follow(resumed, request, session, run=run)
    assert run.end is not None
    assert [i for i, _ in run.tokens] == list(range(len(run.tokens)))
    assert run.text == "".join(env.completion(30))
    assert_end_is_honest(env, run, run.end, request.job_id)
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "completed"
    assert settled.settlement is not None
    assert settled.settlement.amount == len(run.tokens) * PRICE


async def test_resume_takes_over_a_stream_the_host_still_holds(env: Env) -> None:
    """A Resume for a job whose old stream the host still serves moves the job to the new stream."""
    await env.start_node(credit_tokens=4, resume_ttl=30, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session, receipts=False, stop_after=1)
    resumed = await alice.open()
    await resumed.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, len(run.tokens)))
    assert isinstance(await resumed.receive(), Hello)
    run = await alice.follow(resumed, request, session, run=run)
    assert run.end is not None
    assert run.text == "".join(env.completion(30))
    with pytest.raises(TransportError):
        await channel.receive()  # the old stream was reset


async def test_resume_of_an_unknown_job(env: Env) -> None:
    """Resuming a job the host does not keep gets Hello then Error(job_not_found)."""
    await env.start_node()
    alice = await client(env)
    channel = await alice.open()
    await channel.send(Hello(SUPPORTED_VERSIONS), Resume("nope", 0))
    assert isinstance(await channel.receive(), Hello)
    error = await channel.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.JOB_NOT_FOUND


async def test_resume_by_another_peer_is_refused(env: Env) -> None:
    """Only the peer that started a job can resume it."""
    await env.start_node(credit_tokens=4, resume_ttl=30, receipt_timeout=30)
    alice, mallory = await client(env, "alice"), await client(env, "mallory")
    channel, request, session = await alice.confirmed(max_tokens=30)
    await alice.follow(channel, request, session, stop_after=1)
    stolen = await mallory.open()
    await stolen.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, 0))
    assert isinstance(await stolen.receive(), Hello)
    error = await stolen.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.JOB_NOT_FOUND


async def test_unresumed_job_is_settled_after_resume_ttl(env: Env) -> None:
    """A broken job nobody resumes is settled after resume_ttl with what was receipted."""
    node = await env.start_node(credit_tokens=4, resume_ttl=0.05, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.credit_acknowledged(channel, request, session, 4)
    await channel.reset()
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.settlement is not None
    assert settled.settlement.amount == run.acknowledged * PRICE


# -- failover: continuation ----------------------------------------------------------------------------


async def test_continuation_is_numbered_from_first_index(env: Env) -> None:
    """A request continuing another host's text gets the rest of the same completion, numbered from
    first_index; tokens_sent and receipts count this host's tokens only."""
    node = await env.start_node()
    alice = await client(env)
    full = env.completion(40)
    k = 7
    channel, request, session = await alice.confirmed(
        max_tokens=40 - k, continuation="".join(full[:k]), first_index=k
    )
    run = await alice.follow(channel, request, session)
    assert run.tokens[0][0] == k
    assert [t for _, t in run.tokens] == list(full[k:])
    assert [i for i, _ in run.tokens] == list(range(k, len(full)))
    assert run.end is not None
    assert run.end.tokens_sent == len(full) - k
    settled = await node.wait_job_settled(request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.amount == (len(full) - k) * PRICE


# -- faults --------------------------------------------------------------------------------------------


async def test_fault_drop_at_token(env: Env) -> None:
    """drop_at_token=N: N tokens, then the stream is reset without End or Error; resumption is impossible."""
    node = await env.start_node(faults=HostFaults(drop_at_token=3))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session)
    assert run.broken
    assert run.end is None
    assert run.error is None
    assert len(run.tokens) == 3
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    resumed = await alice.open()
    await resumed.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, 3))
    assert isinstance(await resumed.receive(), Hello)
    error = await resumed.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.JOB_NOT_FOUND


async def test_fault_error_at_token(env: Env) -> None:
    """error_at_token=N: N tokens, then Error(backend, retryable) and a reset."""
    node = await env.start_node(faults=HostFaults(error_at_token=2))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session)
    assert len(run.tokens) == 2
    assert run.error is not None
    assert run.error.code == ErrorCode.BACKEND
    assert run.error.retryable
    settled = await node.wait_job_settled(request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.amount == 2 * PRICE


async def test_fault_overclaim(env: Env) -> None:
    """overclaim_tokens=N: End claims N more completion tokens than were sent (the transcript stays true)."""
    await env.start_node(faults=HostFaults(overclaim_tokens=5))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=20)
    run = await alice.follow(channel, request, session)
    assert run.end is not None
    assert run.end.completion_tokens == len(run.tokens) + 5
    assert_end_is_honest(env, run, run.end, request.job_id)


async def test_fault_first_token_delay(env: Env) -> None:
    """first_token_delay holds the first token back; a cancel during the wait ends the job with no tokens."""
    node = await env.start_node(faults=HostFaults(first_token_delay=3600))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=20)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await channel.receive()
    await channel.send(Cancel(request.job_id))
    run = await alice.follow(channel, request, session)
    assert run.end is not None
    assert run.end.finish_reason == "cancelled"
    assert run.tokens == []
    settled = await node.wait_job_settled(request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.amount == 0


# -- announcing ----------------------------------------------------------------------------------------


async def handed_out(alice: Client, node: HostNode) -> Any:
    """The record the host hands out directly (RECORD_PROTOCOL_ID), decoded."""
    stream = await alice.transport.open_stream(PeerInfo(node.peer_id), RECORD_PROTOCOL_ID)
    value = b""
    while chunk := await stream.read(65_536):
        value += chunk
    return decode_capability_record(value)


async def test_capability_record_is_published_and_follows_the_load(env: Env) -> None:
    """On start the node provides the service and model keys and publishes a signed capability record;
    a job starting raises current_load in the record the host hands out (with a higher seq) without a DHT
    write — the DHT copy keeps the load of the last put until the next refresh — and its end lowers it."""
    node = await env.start_node(credit_tokens=4, receipt_timeout=30, record_refresh=60, record_ttl=300)
    alice = await client(env)
    assert [p.peer_id for p in await alice.transport.find_providers(service_key(), 5)] == [node.peer_id]
    assert [p.peer_id for p in await alice.transport.find_providers(model_key(MODEL), 5)] == [node.peer_id]
    value = await alice.transport.get_value(capability_key(node.peer_id))
    assert value is not None
    record = decode_capability_record(value)
    assert record.peer_id == node.peer_id
    assert record.models == (MODEL,)
    assert dict(record.prices[MODEL]) == {"ETH": PRICE, "USDC": 3}
    assert record.payment_address == node.payment_address
    assert record.chain_id == env.ledger.chain_id
    assert record.current_load == 0
    assert record.max_concurrent_jobs == 4
    assert record.protocol_versions == ("1.0",)
    assert await handed_out(alice, node) == record

    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session, receipts=False, stop_after=1)
    loaded = await node.wait_for_record(lambda r: r.current_load == 1)
    assert loaded.seq > record.seq
    assert await handed_out(alice, node) == loaded
    value = await alice.transport.get_value(capability_key(node.peer_id))
    assert value is not None
    assert decode_capability_record(value) == record

    await alice.follow(channel, request, session, run=run)
    idle = await node.wait_for_record(lambda r: r.current_load == 0 and r.seq > loaded.seq)
    assert idle.expires > loaded.expires - 1
    assert await handed_out(alice, node) == idle


async def test_capability_record_is_refreshed_in_the_dht(env: Env) -> None:
    """Without any change the record is put in the DHT again every record_refresh, with a higher seq."""
    node = await env.start_node(record_refresh=0.02, record_ttl=5)
    first = node.capability_record
    assert first is not None
    alice = await client(env)
    while True:
        value = await alice.transport.get_value(capability_key(node.peer_id))
        assert value is not None
        stored = decode_capability_record(value)
        if stored.seq > first.seq:
            break
        await asyncio.sleep(0.01)
    assert stored.expires >= first.expires


# -- lifecycle and status ------------------------------------------------------------------------------


async def test_health_and_lifecycle(env: Env) -> None:
    """health() reports running/stopped with identity and capacity; start and aclose are idempotent."""
    node = await env.start_node()
    await node.start()
    health = node.health()
    assert health["status"] == "running"
    assert health["peer_id"] == env.host_transport.peer_id
    assert health["models"] == (MODEL,)
    assert health["max_concurrent_jobs"] == 4
    with pytest.raises(TypeError):
        health["status"] = "x"  # type: ignore[index]
    await node.aclose()
    await node.aclose()
    assert node.health()["status"] == "stopped"


async def test_aclose_settles_jobs_in_flight(env: Env) -> None:
    """Closing the node mid-job resets the stream and closes the session with what was receipted."""
    node = await env.start_node(credit_tokens=4, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.credit_acknowledged(channel, request, session, 4)
    await node.aclose()
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.settlement is not None
    assert settled.settlement.amount == run.acknowledged * PRICE
    run = await alice.follow(channel, request, session, receipts=False, run=run)
    assert run.broken


async def test_job_id_in_use_is_rejected(env: Env) -> None:
    """A request reusing the id of a job in progress is rejected."""
    await env.start_node(credit_tokens=4, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    await alice.follow(channel, request, session, receipts=False, stop_after=1)
    _, _, reply = await alice.negotiate(alice.request(job_id=request.job_id))
    assert isinstance(reply, Reject)
    assert reply.reason == RejectReason.ERROR


async def test_settled_job_result_is_typed(env: Env) -> None:
    """wait_job_settled returns a SettledJob describing the outcome."""
    node = await env.start_node()
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=5)
    await alice.follow(channel, request, session)
    settled = await node.wait_job_settled(request.job_id)
    assert isinstance(settled, SettledJob)
    assert settled.tokens_sent == 5
    assert settled.finish_reason == "length"


class _LedgerThatCannotClose:
    """The in-memory ledger, except that closing a session always fails (a chain outage)."""

    def __init__(self, inner: InMemoryLedger) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def close(self, *args: Any, **kwargs: Any) -> Any:
        raise PaymentError("the chain is unreachable")


async def test_settlement_failure_is_logged_and_the_node_keeps_serving(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing settlement is logged and counted; the slot is released and the next job is served."""
    ledger = cast(PaymentLedger, _LedgerThatCannotClose(env.ledger))
    node = await env.start_node(ledger=ledger, max_concurrent_jobs=1, max_queue=0)
    alice = await client(env)
    with caplog.at_level(logging.WARNING, logger="fabstir.host"):
        channel, request, session = await alice.confirmed(max_tokens=5)
        run = await alice.follow(channel, request, session)
        settled = await node.wait_job_settled(request.job_id)
    assert run.end is not None
    assert settled.settlement is None
    assert settled.receipt_amount == 5 * PRICE
    assert node.metrics().settlement_failures == 1
    assert any("settling session" in r.message for r in caplog.records)
    channel, request, session = await alice.confirmed(max_tokens=5)
    assert (await alice.follow(channel, request, session)).end is not None


async def test_cancel_while_queued(env: Env) -> None:
    """A confirmed job still waiting for a slot can be cancelled: End(cancelled) with no tokens, and the
    session is closed with everything refunded."""
    node = await env.start_node(max_concurrent_jobs=1, max_queue=1, credit_tokens=4, receipt_timeout=30)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    a_channel, a_request, a_session = await alice.confirmed(max_tokens=30)
    await alice.follow(a_channel, a_request, a_session, receipts=False, stop_after=1)
    b_channel, b_request, b_session = await bob.confirmed(max_tokens=30)
    await b_channel.send(Cancel(b_request.job_id))
    run = await bob.follow(b_channel, b_request, b_session)
    assert run.end is not None
    assert run.end.finish_reason == "cancelled"
    assert run.tokens == []
    settled = await node.wait_job_settled(b_request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.refunded == b_session.deposit


@pytest.mark.parametrize("window", [256])
async def test_slow_reader_ends_the_job(env: Env) -> None:
    """A client that stops reading blocks the host's writes; after receipt_timeout the host gives up on it,
    settles, and keeps serving others."""
    node = await env.start_node(receipt_timeout=0.05, max_concurrent_jobs=1, max_queue=0)
    alice, bob = await client(env, "alice"), await client(env, "bob")
    _, request, _ = await alice.confirmed(max_tokens=200)  # and never reads again
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.error is not None
    assert "did not read" in settled.error
    assert node.metrics().bad_clients == 1
    channel, request, session = await bob.confirmed(max_tokens=5)
    assert (await bob.follow(channel, request, session)).end is not None

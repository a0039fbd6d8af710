"""Several jobs on one payment session, host side: the base amount of each Confirm, settlement per job or
batched, the session closed by the last job, when idle, or when the host shuts down — over the in-memory
seams, driven by the hand-written protocol client of test_host_node."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from fabstir.chain import SessionInfo
from fabstir.core._channel import FrameChannel
from fabstir.host import HostNode
from fabstir.host._sessions import SessionBook
from fabstir.protocol import Confirm, End, Error, Offer, Receipt, Request, TokenBatch, sign_receipt

from .test_host_node import FEE_BPS, PRICE, Client, Env, client, host_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with host_env() as environment:
        yield environment


def receipt(alice: Client, session: SessionInfo, job_id: str, tokens: int, base: int) -> Receipt:
    amount = base + tokens * session.price_per_token
    signature = sign_receipt(
        alice.account,
        chain_id=alice.env.ledger.chain_id,
        verifying_contract=alice.env.ledger.verifying_contract,
        session_id=session.session_id,
        amount=amount,
    )
    return Receipt(session.session_id, job_id, tokens, amount, signature)


async def job_on(
    alice: Client,
    session: SessionInfo | None,
    *,
    base: int = 0,
    keep_open: bool = False,
    max_tokens: int = 20,
    deposit: int = 100 * PRICE,
) -> tuple[Request, SessionInfo, int, Error | None]:
    """Runs one job on ``session`` (opening one with ``deposit`` if ``None``) from ``base``, sending a
    receipt for every batch and the final one; returns the request, the session, the tokens received and
    the host's Error if it refused."""
    request = alice.request(max_tokens=max_tokens)
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    if session is None:
        session = await alice.open_session(offer, deposit=deposit)
    await channel.send(Confirm(request.job_id, session.session_id, base, keep_open))
    tokens = await stream(alice, channel, request, session, base)
    if isinstance(tokens, Error):
        return request, session, 0, tokens
    return request, session, tokens, None


async def stream(
    alice: Client, channel: FrameChannel, request: Request, session: SessionInfo, base: int
) -> int | Error:
    received = 0
    while True:
        frame = await channel.receive()
        match frame:
            case TokenBatch(tokens=texts):
                received += len(texts)
                await channel.send(receipt(alice, session, request.job_id, received, base))
            case End():
                await channel.send(receipt(alice, session, request.job_id, received, base))
                await channel.close()
                return received
            case Error() as error:
                await channel.close()
                return error
            case _:
                raise AssertionError(f"unexpected {frame}")


async def test_three_jobs_share_one_session_and_pay_exactly_their_tokens(env: Env) -> None:
    """Three jobs on one session, each confirmed from the amount signed before it: the host settles after
    each job (per_job), keeps the session open while the client asks, and closes it after the last job —
    the host gets every token × price minus the fee on the total, the client the rest of its deposit."""
    node = await env.start_node()
    alice = await client(env, "alice")
    before = await env.ledger.balance_of(alice.account.address)
    request, session, first, error = await job_on(alice, None, keep_open=True, deposit=100 * PRICE)
    assert error is None
    assert first > 0
    settled = await node.wait_job_settled(request.job_id)
    assert settled.settlement is not None
    assert settled.settlement.refunded == 0
    after_first = await env.ledger.get_session(session.session_id)
    assert (after_first.settled, after_first.closed) == (first * PRICE, False)

    base = first * PRICE
    request, _, second, error = await job_on(alice, session, base=base, keep_open=True)
    assert error is None
    assert (await node.wait_job_settled(request.job_id)).base_amount == base
    base += second * PRICE
    request, _, third, error = await job_on(alice, session, base=base, keep_open=False)
    assert error is None
    final = await node.wait_job_settled(request.job_id)
    assert final.receipt_amount == base + third * PRICE

    closed = await env.ledger.get_session(session.session_id)
    total = (first + second + third) * PRICE
    assert closed.closed
    assert closed.settled == total
    assert closed.refunded == 100 * PRICE - total
    assert await env.ledger.balance_of(node.payment_address) == total - total * FEE_BPS // 10_000
    assert await env.ledger.balance_of(alice.account.address) == before - total
    assert node.metrics().settlements == 3


async def test_a_confirm_below_what_the_host_holds_is_refused(env: Env) -> None:
    """A second job confirmed from base 0 on a session whose first job was receipted would pay twice with
    one signature: the host refuses it with a payment error and the session is untouched."""
    node = await env.start_node()
    alice = await client(env, "alice")
    request, session, first, _ = await job_on(alice, None, keep_open=True)
    await node.wait_job_settled(request.job_id)
    _, _, _, error = await job_on(alice, session, base=0, keep_open=True)
    assert error is not None
    assert error.code == "payment"
    assert "below the" in error.message
    state = await env.ledger.get_session(session.session_id)
    assert (state.settled, state.closed) == (first * PRICE, False)


async def test_receipts_that_ignore_the_base_are_invalid(env: Env) -> None:
    """On a reused session, a receipt for tokens × price alone (not base + tokens × price) is refused as an
    invalid receipt."""
    node = await env.start_node()
    alice = await client(env, "alice")
    request, session, first, _ = await job_on(alice, None, keep_open=True)
    await node.wait_job_settled(request.job_id)
    base = first * PRICE
    request = alice.request(max_tokens=20)
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    await channel.send(Confirm(request.job_id, session.session_id, base, True))
    frame = await channel.receive()
    assert isinstance(frame, TokenBatch)
    await channel.send(receipt(alice, session, request.job_id, len(frame.tokens), 0))
    while not isinstance(frame, Error):
        frame = await channel.receive()
    assert frame.code == "invalid_receipt"


async def test_a_session_never_carries_more_than_its_deposit(env: Env) -> None:
    """A job confirmed from a base that leaves less than the job could use is cut off at the deposit
    (finish reason ``credit``), and a base beyond the deposit is refused."""
    node = await env.start_node()
    alice = await client(env, "alice")
    request, session, first, _ = await job_on(alice, None, keep_open=True, deposit=25 * PRICE)
    await node.wait_job_settled(request.job_id)
    assert first == 20
    request, _, second, error = await job_on(alice, session, base=first * PRICE, keep_open=True)
    assert error is None
    assert second == 5
    settled = await node.wait_job_settled(request.job_id)
    assert settled.finish_reason == "credit"
    _, _, _, refused = await job_on(alice, session, base=26 * PRICE)
    assert refused is not None
    assert refused.code == "payment"


async def test_batched_settlement_pays_once_when_the_idle_session_closes(env: Env) -> None:
    """With ``settlement="batched"`` the host settles nothing between jobs; once the session has been idle
    ``session_idle_timeout`` it closes it with the latest receipt in one transaction."""
    node = await env.start_node(settlement="batched", session_idle_timeout=0.2)
    alice = await client(env, "alice")
    request, session, first, _ = await job_on(alice, None, keep_open=True)
    assert (await node.wait_job_settled(request.job_id)).settlement is None
    request, _, second, _ = await job_on(alice, session, base=first * PRICE, keep_open=True)
    await node.wait_job_settled(request.job_id)
    assert (await env.ledger.get_session(session.session_id)).settled == 0
    for _ in range(200):
        state = await env.ledger.get_session(session.session_id)
        if state.closed:
            break
        await asyncio.sleep(0.02)
    assert state.closed
    assert state.settled == (first + second) * PRICE
    assert node.metrics().settlements == 1


async def test_shutdown_closes_sessions_kept_open(env: Env) -> None:
    """A host that shuts down closes the sessions it kept open for more jobs: receipts settle, the rest is
    refunded — no deposit waits for its expiry."""
    node = await env.start_node(settlement="batched")
    alice = await client(env, "alice")
    request, session, first, _ = await job_on(alice, None, keep_open=True)
    await node.wait_job_settled(request.job_id)
    assert not (await env.ledger.get_session(session.session_id)).closed
    await node.aclose()
    state = await env.ledger.get_session(session.session_id)
    assert state.closed
    assert state.settled == first * PRICE
    assert state.refunded == session.deposit - first * PRICE


async def test_a_failed_job_closes_its_session_even_if_asked_to_keep_it(env: Env) -> None:
    """A job that fails (here: the client sends a bogus receipt) ends the session whatever the client
    asked: the host closes it with the last valid receipt."""
    node: HostNode = await env.start_node()
    alice = await client(env, "alice")
    request = alice.request(max_tokens=20)
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    session = await alice.open_session(offer)
    await channel.send(Confirm(request.job_id, session.session_id, 0, True))
    frame = await channel.receive()
    assert isinstance(frame, TokenBatch)
    await channel.send(receipt(alice, session, request.job_id, len(frame.tokens) + 50, 0))
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert (await env.ledger.get_session(session.session_id)).closed


def test_the_book_refuses_a_busy_session_and_keeps_the_best_receipt() -> None:
    """SessionBook: a session carries one job at a time; the floor is the best receipt held or what the
    ledger settled, whichever is higher; a lower receipt never replaces a higher one."""
    book = SessionBook()
    info = SessionInfo(
        session_id="0x" + "ab" * 32,
        client="0x" + "11" * 20,
        host="0x" + "22" * 20,
        token="ETH",
        deposit=100,
        price_per_token=1,
        expiry=1e12,
        settled=0,
        refunded=0,
        closed=False,
    )
    assert book.problem(info, 0) is None
    book.begin(info, 0)
    assert "another job in progress" in (book.problem(info, 0) or "")
    book.end(info.session_id.upper().replace("0X", "0x"), 30, b"sig-30", now=1.0)
    assert book.floor(info) == 30
    assert "below the 30" in (book.problem(info, 10) or "")
    assert book.problem(info, 30) is None
    assert "does not cover one token" in (book.problem(info, 100) or "")
    book.begin(info, 30)
    entry = book.end(info.session_id, 20, b"sig-20", now=2.0)
    assert entry is not None
    assert (entry.amount, entry.signature) == (30, b"sig-30")
    assert book.floor(dataclasses.replace(info, settled=50)) == 50  # a restarted host knows only the chain

"""Several jobs per payment session, client side (mock mode: the real host node and SDK over the in-memory
network and ledger): ``chain.jobs_per_session`` sizes the deposit, later jobs to the same host reuse the
session from the amount already signed, each job is paid exactly for its tokens, and the session closes
after the job that leaves no room for another."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fabstir import Event, EventName, FabstirSDK, JobStatus, MockConfig, MockHostSpec, PaymentStatus
from fabstir.mock import MockMarketplace

MODEL = "llama-3.2-1b-instruct"
PRICE = 2_000_000_000  # the mock host's default price


@pytest.fixture
async def market() -> AsyncIterator[MockMarketplace]:
    async with MockMarketplace(MockConfig(seed=3, hosts=(MockHostSpec(name="solo"),))) as marketplace:
        yield marketplace


def sdk_on(market: MockMarketplace, jobs_per_session: int) -> FabstirSDK:
    return FabstirSDK(
        mode="mock",
        mock=MockConfig(seed=3, hosts=(MockHostSpec(name="solo"),)),
        chain={"jobs_per_session": jobs_per_session},
        marketplace=market,
    )


async def test_three_jobs_reuse_one_session_and_each_pays_its_tokens(market: MockMarketplace) -> None:
    """With jobs_per_session=3 the first job deposits 3 × its maximum cost; the second and third reuse that
    session (payment:escrowed says reused, from the amount signed before); the host settles after each
    job; each job's settled amount is its tokens × price; the session closes after the third job (what is
    left would not cover another like it) and refunds the rest to that job; the client paid exactly the
    tokens it received."""
    async with sdk_on(market, 3) as sdk:
        escrowed: list[Event] = []
        refunds: list[Event] = []
        sdk.on(EventName.PAYMENT_ESCROWED, escrowed.append)
        sdk.on(EventName.PAYMENT_REFUNDED, refunds.append)
        client = sdk.get_address()
        assert client is not None
        before = await market.ledger.balance_of(client)
        jobs = []
        for prompt, max_tokens in (("first", 30), ("second", 30), ("third", 20)):
            handle = await sdk.submit_job(prompt=prompt, model=MODEL, max_tokens=max_tokens)
            await sdk.wait_for_job_completion(handle.job_id)
            jobs.append(await sdk.approve_job_payment(handle.job_id))
        assert len({details.session_id for details in jobs}) == 1
        assert [e.data["reused"] for e in escrowed] == [False, True, True]
        tokens = [(await sdk.get_job_details(d.job_id)).tokens_generated for d in jobs]
        assert [e.data["base_amount"] for e in escrowed] == [
            0,
            tokens[0] * PRICE,
            (tokens[0] + tokens[1]) * PRICE,
        ]
        assert [d.settled_amount for d in jobs] == [n * PRICE for n in tokens]
        assert all(d.status is PaymentStatus.RELEASED for d in jobs)
        session = await market.ledger.get_session(jobs[0].session_id or "")
        assert session.deposit == 3 * 30 * PRICE
        assert session.closed
        assert session.settled == sum(tokens) * PRICE
        assert session.refunded == session.deposit - session.settled > 0
        assert [d.refunded_amount for d in jobs] == [0, 0, session.refunded]
        assert [e.job_id for e in refunds] == [jobs[2].job_id]
        assert await market.ledger.balance_of(client) == before - sum(tokens) * PRICE
        costs = [await sdk.calculate_actual_cost(d.job_id) for d in jobs]
        assert sum(c.treasury for c in costs) == session.settled * 100 // 10_000  # fee on the running total
        assert [c.refunded for c in costs] == [0, 0, session.refunded]


async def test_a_job_too_big_for_what_is_left_opens_a_new_session(market: MockMarketplace) -> None:
    """A job whose maximum cost exceeds what is left of the session's deposit does not reuse it: it opens a
    session of its own, and the old one is closed after its last job."""
    async with sdk_on(market, 2) as sdk:
        small = await sdk.submit_job(prompt="small", model=MODEL, max_tokens=10)
        await sdk.wait_for_job_completion(small.job_id)
        big = await sdk.submit_job(prompt="big", model=MODEL, max_tokens=100)
        await sdk.wait_for_job_completion(big.job_id)
        first = await sdk.approve_job_payment(small.job_id)
        second = await sdk.approve_job_payment(big.job_id)
        assert first.session_id != second.session_id
        assert first.deposit == 2 * 10 * PRICE
        assert second.deposit == 2 * 100 * PRICE


async def test_one_job_per_session_by_default(market: MockMarketplace) -> None:
    """jobs_per_session defaults to 1: every job opens (and the host closes) a session of its own whose
    deposit is the job's maximum cost."""
    async with sdk_on(market, 1) as sdk:
        handles = [await sdk.submit_job(prompt=p, model=MODEL, max_tokens=12) for p in ("a", "b")]
        details = []
        for handle in handles:
            await sdk.wait_for_job_completion(handle.job_id)
            details.append(await sdk.approve_job_payment(handle.job_id))
        assert details[0].session_id != details[1].session_id
        for item in details:
            session = await market.ledger.get_session(item.session_id or "")
            assert session.closed
            assert session.deposit == 12 * PRICE


async def test_concurrent_jobs_never_share_a_session(market: MockMarketplace) -> None:
    """A session carries one job at a time: two jobs running at once to the same host open two sessions,
    and both complete and pay."""
    async with sdk_on(market, 4) as sdk:
        handles = [await sdk.submit_job(prompt=p, model=MODEL, max_tokens=20) for p in ("x", "y")]
        results = []
        for handle in handles:
            await sdk.wait_for_job_completion(handle.job_id)
            results.append(await sdk.approve_job_payment(handle.job_id))
        assert results[0].session_id != results[1].session_id  # both ran at once
        assert [await sdk.get_job_status(h.job_id) for h in handles] == [JobStatus.COMPLETED] * 2
        assert all(r.status is PaymentStatus.RELEASED for r in results)

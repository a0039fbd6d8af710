"""Failover in mock mode: a host that fails mid-stream hands the job to another host, which continues the
same completion from the tokens already delivered; the user's stream neither loses nor repeats text, and
each host is paid exactly for the tokens it delivered.

The mock hosts share the simulated backend's seed, so a healthy run of the same request gives the text an
uninterrupted completion has: the reference a failed-over job must equal.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fabstir import (
    EventName,
    FabstirSDK,
    HostError,
    JobStatus,
    MockConfig,
    MockHostSpec,
    PaymentStatus,
    TimeoutConfig,
    TimeoutError,
    TransportError,
)

MODEL = "llama-3.2-1b-instruct"
PROMPT = "tell me about failover"
MAX_TOKENS = 40


async def _reference_text(max_tokens: int = MAX_TOKENS) -> str:
    """The completion a healthy host gives for PROMPT (same seed as every test market here)."""
    async with FabstirSDK(mock=MockConfig(seed=5, hosts=(MockHostSpec(name="solo"),))) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=max_tokens)
        await sdk.wait_for_job_completion(handle.job_id)
        return await sdk.get_job_result(handle.job_id)


def _market(*hosts: MockHostSpec, **config: Any) -> FabstirSDK:
    # "price" selection: the faulty host is the cheapest, so it is always tried first
    return FabstirSDK(mock=MockConfig(seed=5, hosts=hosts), selection_strategy="price", **config)


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_at_token": 7},  # the stream is reset, the host forgets the job
        {"error_at_token": 7},  # the host reports an error
    ],
)
async def test_failover_continues_the_completion_without_loss_or_repeat(fault: dict[str, Any]) -> None:
    """A host failing after 7 tokens is replaced; the streamed tokens are contiguous (indices 0..n-1),
    the text equals the uninterrupted completion, and job:failover names both hosts and the count."""
    reference = await _reference_text()
    async with _market(
        MockHostSpec(name="faulty", price_per_token=1, **fault),
        MockHostSpec(name="steady", price_per_token=3),
    ) as sdk:
        failovers: list[dict[str, Any]] = []
        sdk.on(EventName.JOB_FAILOVER, lambda e: failovers.append(dict(e.data)))
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS, stream=True)
        assert handle.stream is not None
        indices, texts = [], []
        async for token in handle.stream:
            indices.append(token.index)
            texts.append(token.text)
        details = await sdk.wait_for_job_completion(handle.job_id)
        assert details.status is JobStatus.COMPLETED
        assert indices == list(range(len(indices)))
        assert "".join(texts) == reference == details.result
        assert len(failovers) == 1
        event = failovers[0]
        assert event["delivered"] == 7
        assert event["from_node"] != event["to_node"] == await sdk.get_job_host(handle.job_id)
        assert sdk.get_performance_metrics()["failovers"] == 1
        report = sdk.get_error_recovery_report()
        assert report["failover_details"][0]["delivered_by_failed_host"] == 7
        assert report["failures"] == []  # the job itself did not fail


async def test_each_host_is_paid_for_what_it_delivered() -> None:
    """After a failover at token 7, the failed host's session settles 7 tokens at its price, the
    replacement's the rest at its price; each session refunds the remainder, nothing more moves."""
    async with _market(
        MockHostSpec(name="faulty", price_per_token=1, error_at_token=7),
        MockHostSpec(name="steady", price_per_token=3),
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        details = await sdk.wait_for_job_completion(handle.job_id)
        payment = await sdk.approve_job_payment(handle.job_id)  # waits for every host's settlement
        assert len(payment.legs) == 2
        failed, replacement = payment.legs
        assert failed.session_id != replacement.session_id
        assert (failed.acknowledged_tokens, failed.price_per_token) == (7, 1)
        assert failed.settled_amount == 7 * 1
        assert failed.settled_amount + failed.refunded_amount == failed.deposit
        rest = details.tokens_generated - 7
        assert replacement.acknowledged_tokens == rest
        assert replacement.settled_amount == rest * 3
        assert replacement.status is PaymentStatus.RELEASED
        assert payment.settled_amount == failed.settled_amount + replacement.settled_amount
        cost = await sdk.calculate_actual_cost(handle.job_id)
        assert cost.total == 7 * 1 + rest * 3
        assert cost.tokens == details.tokens_generated


async def test_the_replacement_is_asked_only_for_the_tokens_left() -> None:
    """The replacement's deposit covers the tokens still owed (max_tokens minus those delivered), not the
    whole job again."""
    async with _market(
        MockHostSpec(name="faulty", price_per_token=1, drop_at_token=10),
        MockHostSpec(name="steady", price_per_token=2),
    ) as sdk:
        escrows: list[dict[str, Any]] = []
        sdk.on(EventName.PAYMENT_ESCROWED, lambda e: escrows.append(dict(e.data)))
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        await sdk.wait_for_job_completion(handle.job_id)
        assert [e["deposit"] for e in escrows] == [MAX_TOKENS * 1, (MAX_TOKENS - 10) * 2]


async def test_a_host_failing_after_the_last_token_completes_the_job() -> None:
    """A host that delivered every token asked for and then failed leaves a completed job (nothing is
    left to continue), not a failure."""
    async with _market(MockHostSpec(name="faulty", price_per_token=1, drop_at_token=12)) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=12)
        details = await sdk.wait_for_job_completion(handle.job_id)
        assert details.status is JobStatus.COMPLETED
        assert details.tokens_generated == 12
        assert details.result == await _reference_text(12)


async def test_without_a_replacement_the_job_fails_with_the_hosts_error() -> None:
    """When no other host can take over, the job fails with the failing host's own typed error, and its
    context says why nobody took over; the tokens delivered stay readable."""
    async with _market(MockHostSpec(name="faulty", price_per_token=1, error_at_token=4)) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        with pytest.raises(HostError) as info:
            await sdk.wait_for_job_completion(handle.job_id)
        assert "failover" in info.value.context
        assert len(sdk.create_response_stream(handle.job_id).text) > 0


async def test_max_failovers_bounds_the_chain_of_hosts() -> None:
    """With max_failovers=1 and two faulty hosts before a healthy one, the job fails after one failover
    (the second host's error), within bounds — it does not try a third host."""
    async with _market(
        MockHostSpec(name="a", price_per_token=1, drop_at_token=3),
        MockHostSpec(name="b", price_per_token=2, drop_at_token=3),
        MockHostSpec(name="c", price_per_token=3),
        recovery={"max_failovers": 1},
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        with pytest.raises(TransportError):
            await sdk.wait_for_job_completion(handle.job_id)
        assert sdk.get_performance_metrics()["failovers"] == 1
        assert await sdk.get_job_status(handle.job_id) == JobStatus.FAILED


async def test_two_failovers_in_a_row_still_give_the_whole_completion() -> None:
    """Two hosts failing one after the other (at tokens 3 and 3 more): the third finishes the completion,
    which equals the uninterrupted text."""
    reference = await _reference_text()
    async with _market(
        MockHostSpec(name="a", price_per_token=1, drop_at_token=3),
        MockHostSpec(name="b", price_per_token=2, drop_at_token=3),
        MockHostSpec(name="c", price_per_token=3),
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        details = await sdk.wait_for_job_completion(handle.job_id)
        assert details.result == reference
        assert sdk.get_performance_metrics()["failovers"] == 2
        payment = await sdk.get_payment_details(handle.job_id)
        assert [leg.acknowledged_tokens for leg in payment.legs[:2]] == [3, 3]


async def test_slow_first_token_fails_over_to_a_faster_host() -> None:
    """A host slower to its first token than the first-token timeout is replaced; the job completes on
    the other host with the whole text."""
    reference = await _reference_text()
    async with _market(
        MockHostSpec(name="slow", price_per_token=1, first_token_delay=5.0),
        MockHostSpec(name="fast", price_per_token=2),
        timeouts=TimeoutConfig(first_token=0.3),
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        details = await sdk.wait_for_job_completion(handle.job_id, timeout=30)
        assert details.result == reference
        assert sdk.get_performance_metrics()["failovers"] == 1


async def test_failover_off_fails_the_job() -> None:
    """recovery.failover=False: the first host's failure fails the job even though another host is up."""
    async with _market(
        MockHostSpec(name="faulty", price_per_token=1, drop_at_token=3),
        MockHostSpec(name="steady", price_per_token=2),
        recovery={"failover": False},
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        with pytest.raises(TransportError):
            await sdk.wait_for_job_completion(handle.job_id)
        assert sdk.get_performance_metrics()["failovers"] == 0


async def test_cancelling_during_a_failover_does_not_start_another_host() -> None:
    """A job cancelled by the user ends cancelled; no failover happens after the cancel."""
    async with _market(
        MockHostSpec(name="slow", price_per_token=1, first_token_delay=5.0),
        MockHostSpec(name="steady", price_per_token=2),
        timeouts=TimeoutConfig(first_token=10.0),
    ) as sdk:
        claimed = asyncio.Event()
        sdk.on(EventName.JOB_CLAIMED, lambda e: claimed.set())
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        await asyncio.wait_for(claimed.wait(), 10)
        await sdk.cancel_job(handle.job_id)
        assert await sdk.get_job_status(handle.job_id) == JobStatus.CANCELLED
        assert sdk.get_performance_metrics()["failovers"] == 0


async def test_retries_and_failovers_share_one_overall_deadline() -> None:
    """Hosts that never send a first token, with retries and failovers allowed: submit_job_with_retry
    ends in a typed TimeoutError once the one overall deadline is spent — the attempts do not each get a
    fresh deadline (which would multiply it)."""
    from fabstir import RetryConfig

    hosts = tuple(MockHostSpec(name=f"stuck{i}", first_token_delay=60.0) for i in range(4))
    loop = asyncio.get_running_loop()
    async with _market(
        *hosts,
        timeouts=TimeoutConfig(overall=1.5, first_token=0.4),
        retry=RetryConfig(max_retries=10, initial_delay=0.01, max_delay=0.02, jitter=0.0),
    ) as sdk:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await sdk.submit_job_with_retry(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        elapsed = loop.time() - started
        # a bound far above the deadline, only to tell "one deadline" from "a deadline per attempt"
        # (4 hosts x 0.4 s first-token timeouts, x 11 attempts, would be well over 10 s)
        assert elapsed < 6.0
        assert sdk.get_performance_metrics()["jobs_failed"] >= 1


async def test_health_and_recovery_reports_tell_the_truth() -> None:
    """A healthy market reports healthy; once most jobs fail the health report is degraded and says
    why, and the recovery report lists the failing host's statistics (its drops and failures)."""
    async with _market(
        MockHostSpec(name="broken", price_per_token=1, drop_at_token=2), recovery={"failover": False}
    ) as sdk:
        health = sdk.get_system_health_report()
        assert (health["status"], health["problems"]) == ("healthy", [])
        for _ in range(2):
            handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
            with pytest.raises(TransportError):
                await sdk.wait_for_job_completion(handle.job_id)
        health = sdk.get_system_health_report()
        assert health["status"] == "degraded"
        assert health["failure_rate"] == 1.0
        assert any("2 of 2 finished jobs failed" in p for p in health["problems"])
        (host,) = sdk.get_error_recovery_report()["hosts"]
        assert host["drops"] == 2
        assert host["failures"] > 0
        assert host["reliability"] < 0.99
    assert sdk.get_system_health_report()["status"] == "disconnected"


async def test_a_frozen_host_is_replaced_after_the_inter_token_timeout() -> None:
    """A host that stops sending after 5 tokens but keeps its connection (hang_at_token) is given up on
    after the inter-token timeout and the job continues elsewhere, whole."""
    reference = await _reference_text()
    async with _market(
        MockHostSpec(name="frozen", price_per_token=1, hang_at_token=5),
        MockHostSpec(name="steady", price_per_token=2),
        timeouts=TimeoutConfig(inter_token=0.3),
    ) as sdk:
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        details = await sdk.wait_for_job_completion(handle.job_id, timeout=30)
        assert details.result == reference
        report = sdk.get_error_recovery_report()["failover_details"]
        assert [(f["delivered_by_failed_host"], f["code"]) for f in report] == [(5, "timeout")]


async def test_a_host_serving_another_model_is_caught_on_its_first_batch() -> None:
    """A host declaring another model than asked for is caught before any of its tokens is shown or paid
    for (model_mismatch), flagged as a liar (alert, blacklisted), and the job moves on, whole."""
    reference = await _reference_text()
    async with _market(
        MockHostSpec(name="swapped", price_per_token=1, serve_model="tiny-vicuna-1b"),
        MockHostSpec(name="steady", price_per_token=2),
    ) as sdk:
        alerts: list[dict[str, Any]] = []
        sdk.on(EventName.NODE_RELIABILITY_ALERT, lambda e: alerts.append({**e.data, "node": e.node_id}))
        handle = await sdk.submit_job(prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        details = await sdk.wait_for_job_completion(handle.job_id)
        assert details.result == reference
        payment = await sdk.approve_job_payment(handle.job_id)
        swapped = payment.legs[0]
        assert (swapped.acknowledged_tokens, swapped.settled_amount) == (0, 0)
        assert alerts[0]["reason"] == "model_mismatch"
        assert alerts[0]["blacklisted_until"] is not None
        assert alerts[0]["node"] in sdk.get_system_health_report()["blacklisted_nodes"]


async def test_cancelling_submit_job_with_retry_cancels_the_job() -> None:
    """A caller that cancels submit_job_with_retry while its job runs leaves no job behind: the job ends
    CANCELLED."""
    async with _market(
        MockHostSpec(name="slow", price_per_token=1, first_token_delay=5.0),
        timeouts=TimeoutConfig(first_token=10.0),
    ) as sdk:
        claimed = asyncio.Event()
        sdk.on(EventName.JOB_CLAIMED, lambda e: claimed.set())
        call = asyncio.create_task(sdk.submit_job_with_retry(prompt=PROMPT, model=MODEL, max_tokens=8))
        await asyncio.wait_for(claimed.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (job_id,) = sdk.list_jobs()
        assert await sdk.get_job_status(job_id) is JobStatus.CANCELLED

"""Scripted faults in mock mode: each ends in a typed outcome, never a hang, never a wrong payment."""

from __future__ import annotations

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


def _sdk(*hosts: MockHostSpec, **config: object) -> FabstirSDK:
    return FabstirSDK(mock=MockConfig(seed=3, hosts=hosts), **config)


async def test_reject_reasons_are_reported_per_host() -> None:
    """negotiate_with_nodes reports each scripted reject reason."""
    hosts = (
        MockHostSpec(name="busy", reject="busy"),
        MockHostSpec(name="nomodel", reject="unsupported_model"),
        MockHostSpec(name="ok"),
    )
    async with _sdk(*hosts) as sdk:
        results = await sdk.negotiate_with_nodes(prompt="hi", model=MODEL)
    reasons = sorted(str(r["reason"]) for r in results if not r["accepted"])
    assert reasons == ["busy", "unsupported_model"]
    assert sum(bool(r["accepted"]) for r in results) == 1


async def test_job_goes_to_the_host_that_accepts() -> None:
    """With one busy and one healthy host the job completes on the healthy one; the reject is recorded."""
    async with _sdk(MockHostSpec(name="busy", reject="busy"), MockHostSpec(name="ok")) as sdk:
        offers = await sdk.negotiate_with_nodes(prompt="hi", model=MODEL)
        healthy = [r["node_id"] for r in offers if r["accepted"]]
        handle = await sdk.submit_job(prompt="hi", model=MODEL, max_tokens=10)
        await sdk.wait_for_job_completion(handle.job_id)
        assert [await sdk.get_job_host(handle.job_id)] == healthy
        details = await sdk.get_job_details(handle.job_id)
        assert [reason for _, reason in details.extra["rejections"]] == ["busy"]


async def test_drop_at_token_fails_the_job_and_pays_only_delivered_tokens() -> None:
    """A host vanishing after N tokens fails the job (TransportError); it is paid for at most N tokens."""
    async with _sdk(MockHostSpec(name="flaky", drop_at_token=5)) as sdk:
        failures: list[str] = []
        sdk.on(EventName.NODE_FAILURE, lambda e: failures.append(str(e.node_id)))
        handle = await sdk.submit_job(prompt="drop", model=MODEL, max_tokens=50)
        with pytest.raises(TransportError):
            await sdk.wait_for_job_completion(handle.job_id)
        assert await sdk.get_job_status(handle.job_id) == JobStatus.FAILED
        details = await sdk.approve_job_payment(handle.job_id)
        assert details.settled_amount <= 5 * details.price_per_token
        assert details.settled_amount + details.refunded_amount == details.deposit
        assert failures
        assert sdk.get_node_reliability(failures[0]) < 0.99


async def test_error_frame_fails_the_job_with_a_host_error() -> None:
    """A host sending an error frame after N tokens fails the job with a retryable HostError."""
    async with _sdk(MockHostSpec(name="erring", error_at_token=3)) as sdk:
        handle = await sdk.submit_job(prompt="err", model=MODEL, max_tokens=50)
        with pytest.raises(HostError) as info:
            await sdk.wait_for_job_completion(handle.job_id)
        assert info.value.retryable
        assert await sdk.get_job_status(handle.job_id) == JobStatus.FAILED


async def test_slow_first_token_hits_the_first_token_timeout() -> None:
    """A host slower to its first token than the timeout ends in TimeoutError(phase='first_token')."""
    async with _sdk(
        MockHostSpec(name="slow", first_token_delay=2.0), timeouts=TimeoutConfig(first_token=0.2)
    ) as sdk:
        handle = await sdk.submit_job(prompt="slow", model=MODEL, max_tokens=10)
        with pytest.raises(TimeoutError) as info:
            await sdk.wait_for_job_completion(handle.job_id, timeout=10)
        assert info.value.phase == "first_token"


async def test_overclaiming_host_is_caught_and_paid_for_delivered_tokens() -> None:
    """A host claiming more usage than it sent is flagged (reliability alert), paid only for what arrived."""
    async with _sdk(MockHostSpec(name="liar", overclaim_tokens=10)) as sdk:
        alerts: list[dict[str, object]] = []
        sdk.on(EventName.NODE_RELIABILITY_ALERT, lambda e: alerts.append(dict(e.data)))
        handle = await sdk.submit_job(prompt="lie", model=MODEL, max_tokens=20)
        details = await sdk.wait_for_job_completion(handle.job_id)
        payment = await sdk.approve_job_payment(handle.job_id)
        assert payment.status is PaymentStatus.RELEASED
        assert payment.settled_amount == details.tokens_generated * payment.price_per_token
        assert details.extra["usage_mismatch"] is True
        assert alerts
        assert alerts[0]["claimed"] == int(str(alerts[0]["delivered"])) + 10


async def test_a_failed_job_is_announced_as_an_error_event_too() -> None:
    """Besides `job:failed`, a failed job emits `error` with the same job, host, message and code plus
    whether it was retryable — and a job that completes emits none."""
    async with _sdk(MockHostSpec(name="erring", error_at_token=3)) as sdk:
        errors: list[dict[str, object]] = []
        failed: list[dict[str, object]] = []
        sdk.on(EventName.ERROR, lambda e: errors.append({"job": e.job_id, "node": e.node_id, **e.data}))
        sdk.on(EventName.JOB_FAILED, lambda e: failed.append({"job": e.job_id, "node": e.node_id, **e.data}))
        job_id = (await sdk.submit_job(prompt="hi", model=MODEL, max_tokens=16)).job_id
        with pytest.raises(HostError):
            await sdk.wait_for_job_completion(job_id, timeout=5)
    [error] = errors
    assert error["job"] == job_id
    assert error["retryable"] is True
    assert {k: v for k, v in error.items() if k != "retryable"} == failed[0]

    async with _sdk(MockHostSpec(name="ok")) as sdk:
        sdk.on(EventName.ERROR, lambda e: errors.append(dict(e.data)))
        done = await sdk.submit_job(prompt="hi", model=MODEL, max_tokens=4)
        await sdk.wait_for_job_completion(done.job_id, timeout=5)
    assert len(errors) == 1

"""FabstirSDKSync offers the same capabilities, blocking, for scripts and notebooks."""

from __future__ import annotations

import pytest

from fabstir import (
    FabstirSDKSync,
    JobNotFoundError,
    JobStatus,
    MockConfig,
    PaymentStatus,
    RefundNotAllowedError,
    ValidationError,
)

MODEL = "llama-3.2-1b-instruct"


def test_sync_job_lifecycle_and_payments() -> None:
    """Submit, wait, result, status, details, host, payment and cost work without asyncio."""
    with FabstirSDKSync(mock=MockConfig(seed=5)) as sdk:
        assert sdk.is_connected
        assert sdk.get_chain_id() == 31337
        assert [m.id for m in sdk.get_models()]
        assert sdk.discover_nodes(model=MODEL)
        assert sdk.estimate_job_cost(prompt="abcd", model=MODEL, max_tokens=10).estimated_tokens == 1 + 8
        job = sdk.submit_job(prompt="sync", model=MODEL, max_tokens=12)
        details = sdk.wait_for_job_completion(job, timeout=10)
        assert details.status is JobStatus.COMPLETED
        assert sdk.get_job_status(job) == "COMPLETED"
        assert sdk.get_job_result(job)
        assert sdk.get_job_host(job)
        assert sdk.approve_job_payment(job).status is PaymentStatus.RELEASED
        cost = sdk.calculate_actual_cost(job)
        assert cost.host + cost.treasury == cost.total
        assert len(sdk.get_payment_history()) == 1
        with pytest.raises(RefundNotAllowedError):
            sdk.request_refund(job)
    assert not sdk.is_connected


def test_sync_streaming_iterates_tokens() -> None:
    """A sync stream is a blocking iterator over the tokens, in order, with a final summary."""
    with FabstirSDKSync(mock=MockConfig(seed=6)) as sdk:
        job = sdk.submit_job(prompt="stream", model=MODEL, max_tokens=15, stream=True)
        assert job.stream is not None
        with job.stream as stream:
            tokens = list(stream)
        assert [t.index for t in tokens] == list(range(len(tokens)))
        assert stream.get_final_summary().total_tokens == len(tokens)
        replay = list(sdk.create_response_stream(job, resume_from=3))
        assert replay == tokens[3:]


def test_sync_errors_are_the_same_typed_errors() -> None:
    """The sync facade raises the same fabstir errors as the async SDK."""
    with FabstirSDKSync() as sdk:
        with pytest.raises(ValidationError, match="Prompt cannot be empty"):
            sdk.submit_job(prompt="", model=MODEL)
        with pytest.raises(JobNotFoundError):
            sdk.get_job_status(12345)


def test_sync_cancel_and_events() -> None:
    """Callbacks fire on the facade's loop thread; cancel_job ends a running job as CANCELLED."""
    # Paced hosts: the job must still be running when cancel_job arrives from this thread.
    with FabstirSDKSync(mock=MockConfig(realistic_pacing=True)) as sdk:
        seen: list[str] = []
        unsubscribe = sdk.on("job:cancelled", lambda e: seen.append(e.name.value))
        job = sdk.submit_job(prompt="cancel", model=MODEL, max_tokens=400)
        sdk.cancel_job(job)
        assert sdk.get_job_status(job) is JobStatus.CANCELLED
        assert seen == ["job:cancelled"]
        unsubscribe()


def test_sync_discovery_negotiation_and_subscriptions() -> None:
    """select_best_node, negotiate_with_nodes, submit_job_with_negotiation and the per-job and payment
    subscriptions behave as in the async SDK."""
    # Paced hosts: the per-job subscriptions below are made while the second job is still running.
    with FabstirSDKSync(mock=MockConfig(seed=8, realistic_pacing=True)) as sdk:
        best = sdk.select_best_node(model=MODEL, strategy="price")
        assert best.capabilities.price_for(MODEL) == min(
            n.capabilities.price_for(MODEL) or 0 for n in sdk.discover_nodes(model=MODEL)
        )
        offers = sdk.negotiate_with_nodes(prompt="quote", model=MODEL, max_tokens=8)
        assert all(o["accepted"] for o in offers)
        statuses: list[JobStatus] = []
        payments: list[str] = []
        sdk.on_payment_event(lambda e: payments.append(e.name.value))
        job = sdk.submit_job_with_negotiation(prompt="negotiate", model=MODEL, max_tokens=8)
        assert sdk.get_job_status(job) is JobStatus.COMPLETED
        assert sdk.approve_job_payment(job).status is PaymentStatus.RELEASED
        assert sdk.get_payment_status(job) is PaymentStatus.RELEASED
        assert payments[0] == "payment:escrowed"
        assert "payment:released" in payments
        second = sdk.submit_job(prompt="watch", model=MODEL, max_tokens=8, stream=True)
        sdk.on_job_status_change(second, statuses.append)
        events: list[str] = []
        sdk.stream_job_events(second, lambda e: events.append(e.name.value))
        assert second.stream is not None
        with second.stream as stream:
            first = next(stream)
            stream.pause()
            stream.resume()
            rest = list(stream)
        assert [first.index, *(t.index for t in rest)] == list(range(1 + len(rest)))
        sdk.wait_for_job_completion(second)
        assert statuses[-1] is JobStatus.COMPLETED
        assert "job:completed" in events

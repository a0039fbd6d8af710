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
    """Callbacks fire on the facade's loop thread; cancel_job ends a job as CANCELLED."""
    with FabstirSDKSync() as sdk:
        seen: list[str] = []
        unsubscribe = sdk.on("job:cancelled", lambda e: seen.append(e.name.value))
        job = sdk.submit_job(prompt="cancel", model=MODEL, max_tokens=400)
        sdk.cancel_job(job)
        assert sdk.get_job_status(job) is JobStatus.CANCELLED
        assert seen == ["job:cancelled"]
        unsubscribe()

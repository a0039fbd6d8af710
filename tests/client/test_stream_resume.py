"""A job whose stream breaks without End or Error is resumed on the same host, from the next token."""

from __future__ import annotations

import asyncio

import pytest

from fabstir import FabstirSDK, JobStatus, MockConfig, MockHostSpec, TransportError
from fabstir.mock import MockMarketplace

MODEL = "llama-3.2-1b-instruct"


def _market() -> MockMarketplace:
    # one host, 200 tokens/s: a 40-token job takes ~0.2 s, long enough to break it in the middle
    spec = MockHostSpec(name="solo", tokens_per_second=200.0, latency_ms=1.0)
    return MockMarketplace(MockConfig(seed=11, hosts=(spec,), realistic_pacing=True))


async def _run_with_break(heal_after: float | None, inter_token: float = 2.0) -> tuple[FabstirSDK, int]:
    market = _market()
    sdk = FabstirSDK(
        mock=market.config,
        marketplace=market,
        timeouts={"inter_token": inter_token},
        recovery={"failover": False},
    )
    await sdk.connect()
    handle = await sdk.submit_job(prompt="tell me a story", model=MODEL, max_tokens=40, stream=True)
    assert handle.stream is not None
    client = sdk.get_p2p_status()["peer_id"]
    host = market.hosts[0].peer_id
    seen = 0
    try:
        async for _token in handle.stream:
            seen += 1
            if seen == 10:
                market.network.partition(client, host)
                if heal_after is not None:
                    asyncio.get_running_loop().call_later(heal_after, market.network.heal, client, host)
    except TransportError:  # the stream's reader sees the job's failure; the tests check it on the job
        pass
    return sdk, handle.job_id


async def test_a_broken_stream_is_resumed_and_the_job_completes_without_gaps() -> None:
    """After a partition that heals, the job resumes on the same host: every token index arrives exactly
    once, the text equals an unbroken run's, and every token received is receipted."""
    reference = FabstirSDK(mock=_market().config)
    async with reference:
        expected = await reference.submit_job(prompt="tell me a story", model=MODEL, max_tokens=40)
        await reference.wait_for_job_completion(expected, timeout=10)
        expected_text = await reference.get_job_result(expected)

    sdk, job_id = await asyncio.wait_for(_run_with_break(heal_after=0.1), timeout=20)
    try:
        details = await sdk.wait_for_job_completion(job_id, timeout=10)
        assert details.status is JobStatus.COMPLETED
        stream = sdk.create_response_stream(job_id)
        indices = [token.index async for token in stream]
        assert indices == list(range(len(indices)))
        assert await sdk.get_job_result(job_id) == expected_text
        payment = await sdk.get_payment_details(job_id)
        assert payment.acknowledged_tokens == len(indices)
        runner = sdk._jobs[job_id].runner
        assert runner is not None
        assert runner.resumes == 1
    finally:
        await sdk.disconnect()


async def test_a_stream_that_cannot_be_reopened_fails_with_a_transport_error() -> None:
    """If the host stays unreachable, resuming gives up within the inter-token timeout and the job fails
    with the TransportError of the broken stream (no hang)."""
    sdk, job_id = await asyncio.wait_for(_run_with_break(heal_after=None, inter_token=0.5), timeout=20)
    try:
        with pytest.raises(TransportError):
            await sdk.wait_for_job_completion(job_id, timeout=10)
        assert await sdk.get_job_status(job_id) == JobStatus.FAILED
    finally:
        await sdk.disconnect()

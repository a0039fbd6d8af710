"""The whole marketplace end to end, over a devnet (the contracts on the embedded chain, a bootstrap peer,
five host processes on the simulated backend at 1–5 gwei per token): many jobs at once with a mix of
valid and invalid requests, the money of each, the health report throughout, and one SDK switching from
mock mode to the devnet and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fabstir import (
    DiscoveryError,
    FabstirError,
    FabstirSDK,
    JobStatus,
    MockConfig,
    MockHostSpec,
    PaymentStatus,
    ValidationError,
)
from fabstir.devnet import DevnetFile, DevnetOptions

from ._chain import running_devnet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LIMIT = 150.0
MODEL = "simulated-model"
HOSTS = 5
JOBS = 20
BASE_PRICE = 1_000_000_000


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevnetFile]:
    options = DevnetOptions(hosts=HOSTS, backend="simulated", token_delay=0.005, max_concurrent_jobs=4)
    with running_devnet(tmp_path_factory.mktemp("devnet"), options) as file:
        yield file


async def test_twenty_concurrent_jobs_over_five_hosts_with_invalid_requests_mixed_in(
    devnet: DevnetFile,
) -> None:
    """20 valid jobs run at once (random selection spreads them over the hosts) while invalid requests
    are refused: bad arguments at once with a ValidationError, an unknown model and an impossible price
    limit as failed jobs with a DiscoveryError. Every valid job completes and is paid exactly its tokens ×
    its host's price; the health report counts exactly these outcomes and says healthy (failure rate
    2 / 22 < 0.5) with no job left active."""
    sdk = FabstirSDK.from_devnet(
        devnet.directory, selection_strategy="random", timeouts={"first_token": 20.0, "overall": 120.0}
    )
    async with asyncio.timeout(LIMIT), sdk:
        for bad in ({"prompt": ""}, {"max_tokens": 0}, {"model": ""}):
            request: dict[str, Any] = {"prompt": "hi", "model": MODEL, "max_tokens": 8, **bad}
            with pytest.raises(ValidationError):
                await sdk.submit_job(**request)
        handles = await asyncio.gather(
            *(
                sdk.submit_job(prompt=f"job {i}: tell me something", model=MODEL, max_tokens=24)
                for i in range(JOBS)
            )
        )
        unknown = await sdk.submit_job(prompt="hi", model="no-such-model", max_tokens=8)
        too_cheap = await sdk.submit_job(prompt="hi", model=MODEL, max_tokens=8, max_price_per_token=1)
        results = await asyncio.gather(
            *(sdk.wait_for_job_completion(h.job_id) for h in handles), return_exceptions=True
        )
        for bad_job in (unknown, too_cheap):
            with pytest.raises(DiscoveryError):
                await sdk.wait_for_job_completion(bad_job.job_id)
        payments = [await sdk.approve_job_payment(h.job_id) for h in handles]
        hosts = {await sdk.get_job_host(h.job_id) for h in handles}
        health = sdk.get_system_health_report()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert all(r.status is JobStatus.COMPLETED for r in results if not isinstance(r, BaseException))
    for result, payment in zip(results, payments, strict=True):
        assert not isinstance(result, BaseException)
        assert payment.status is PaymentStatus.RELEASED
        assert payment.price_per_token % BASE_PRICE == 0
        assert payment.settled_amount == result.tokens_generated * payment.price_per_token
        assert payment.settled_amount + payment.refunded_amount == payment.deposit
    assert len(hosts) >= 2  # the jobs were spread (random selection over five hosts)
    assert health["status"] == "healthy"
    assert health["active_jobs"] == 0
    assert health["jobs"]["jobs_completed"] == JOBS
    assert health["jobs"]["jobs_failed"] == 2
    assert health["failure_rate"] == pytest.approx(2 / (JOBS + 2))


async def test_one_sdk_switches_from_mock_to_the_devnet_and_back(devnet: DevnetFile) -> None:
    """A job in mock mode, then transition_mode to the devnet (production, paid) and a job there, then
    back to mock: each job completes in its mode, the earlier jobs stay readable, and event callbacks
    registered at the start see every job complete."""
    production = FabstirSDK.from_devnet(devnet.directory).config
    completed: list[int] = []
    sdk = FabstirSDK(mock=MockConfig(seed=4, hosts=(MockHostSpec(name="m", models=(MODEL,)),)))
    sdk.on("job:completed", lambda e: completed.append(int(e.job_id or 0)))
    async with asyncio.timeout(LIMIT), sdk:
        first = await sdk.submit_job(prompt="in mock mode", model=MODEL, max_tokens=8)
        await sdk.wait_for_job_completion(first.job_id)
        await sdk.transition_mode("production", p2p=production.p2p, chain=production.chain)
        assert sdk.mode == "production"
        second = await sdk.submit_job(prompt="on the devnet", model=MODEL, max_tokens=8)
        await sdk.wait_for_job_completion(second.job_id)
        paid = await sdk.approve_job_payment(second.job_id)
        await sdk.transition_mode("mock")
        third = await sdk.submit_job(prompt="in mock mode again", model=MODEL, max_tokens=8)
        await sdk.wait_for_job_completion(third.job_id)
        assert (await sdk.get_job_details(first.job_id)).status is JobStatus.COMPLETED
        assert (await sdk.get_job_details(second.job_id)).result
    assert completed == [first.job_id, second.job_id, third.job_id]
    assert paid.status is PaymentStatus.RELEASED
    assert paid.settled_amount > 0


async def test_the_health_report_says_degraded_when_the_network_is_gone(devnet: DevnetFile) -> None:
    """A client whose bootstrap address leads nowhere (a closed port) reports degraded — no peer
    connected — and its job fails with a typed error within the deadline, never hanging."""
    sdk = FabstirSDK(
        mode="production",
        p2p={
            "bootstrap_nodes": [
                "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGzBkMAXsnrqnAd8jzUqhqcDDRbHGwKq2Xw1rAmFhpQb4"
            ]
        },
        chain={"escrow": False},
        timeouts={"overall": 10.0},
        discovery={"timeout": 3.0},
    )
    async with asyncio.timeout(LIMIT), sdk:
        health = sdk.get_system_health_report()
        handle = await sdk.submit_job(prompt="anyone?", model=MODEL, max_tokens=8)
        with pytest.raises(FabstirError):
            await sdk.wait_for_job_completion(handle.job_id)
    assert health["status"] == "degraded"
    assert any("no peer connected" in p for p in health["problems"])

"""A host that dies or freezes mid-stream: the client's job ends in a typed fabstir error within its
configured timeouts instead of hanging. Failover is off (``recovery={"failover": False}``): the job must
fail, not move elsewhere; the SDK still tries to resume on the same host, which cannot answer."""

from __future__ import annotations

import asyncio
import signal

import pytest

from fabstir import JobStatus, TimeoutError, TransportError

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: The SDK's timeouts in these tests (seconds): a frozen host is noticed by the pings within about
#: PING_INTERVAL + PING_TIMEOUT, then resuming gives up within INTER_TOKEN.
PING_INTERVAL = PING_TIMEOUT = 0.5
DIAL = 2.0
INTER_TOKEN = 3.0
#: Far above what the timeouts allow (ping detection + resume attempts + the dial bound): only a hang
#: reaches it.
HANG = 30.0


async def run_until_signalled(pool: ProcessPool, bootstrap: MarketProcess, model: str, signum: int) -> None:
    """Starts a slow host serving ``model``, streams a long job from it, sends ``signum`` to the host
    after a few tokens, and checks that the job fails with a transport or timeout error, bounded."""
    spec = HostSpec(name=f"victim-{signum}", models=(model,), prices={"": 3}, token_delay=0.05)
    (host,) = await asyncio.to_thread(pool.start_hosts, [spec], bootstrap)
    sdk = production_sdk(
        bootstrap,
        p2p={"ping_interval": PING_INTERVAL, "ping_timeout": PING_TIMEOUT, "dial_timeout": DIAL},
        timeouts={"first_token": 5.0, "inter_token": INTER_TOKEN},
        recovery={"failover": False},
    )
    async with sdk:
        try:
            async with asyncio.timeout(HANG):
                handle = await sdk.submit_job(
                    prompt="Tell me a long story.", model=model, max_tokens=1000, stream=True
                )
                assert handle.stream is not None
                received = 0

                async def read_and_signal() -> None:
                    nonlocal received
                    assert handle.stream is not None
                    async for _ in handle.stream:
                        received += 1
                        if received == 3:
                            host.send_signal(signum)

                with pytest.raises((TransportError, TimeoutError)) as failure:
                    await read_and_signal()
                assert received >= 3
                assert failure.value.retryable
                assert await sdk.get_job_status(handle) is JobStatus.FAILED
                assert await sdk.get_job_host(handle) == host.peer_id  # failed where it ran: no failover
        finally:
            # a frozen host must not outlive the test (the pool kills it too, after SIGCONT)
            host.send_signal(signal.SIGKILL)


async def test_a_killed_host_fails_the_job(pool: ProcessPool, bootstrap: MarketProcess) -> None:
    """A host SIGKILLed mid-stream ends the client's job with a TransportError (or TimeoutError) within
    the configured timeouts; the job is FAILED on that host."""
    await run_until_signalled(pool, bootstrap, "kill-model", signal.SIGKILL)


async def test_a_frozen_host_fails_the_job(pool: ProcessPool, bootstrap: MarketProcess) -> None:
    """A host SIGSTOPped mid-stream (alive but silent) ends the client's job with a TransportError or
    TimeoutError within the configured timeouts — the health pings or the inter-token timeout notice
    it; the job is FAILED on that host."""
    await run_until_signalled(pool, bootstrap, "freeze-model", signal.SIGSTOP)

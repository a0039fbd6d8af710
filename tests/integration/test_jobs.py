"""Whole jobs across processes: the real built-in model streams an answer with its usage and payment
accounting, and a cancelled job gives its host's only slot back for the next client."""

from __future__ import annotations

import asyncio

import pytest

from fabstir import FinishReason, JobStatus, RejectReason
from fabstir.backend import BUILTIN_MODEL_ID

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LIMIT = 60.0
#: How long a cancelled job's slot may take to become free again (the host learns of the cancel in
#: milliseconds; the bound only keeps a broken host from hanging the test).
FREED_WITHIN = 10.0


async def test_the_builtin_model_streams_a_job_with_usage(
    pool: ProcessPool, bootstrap: MarketProcess
) -> None:
    """A host running the real built-in model (llama.cpp, SmolLM2) streams tokens to the SDK; the job
    completes with a finish reason, usage counts matching the tokens received, and a payment record
    whose acknowledged tokens equal the tokens received."""
    (host,) = await asyncio.to_thread(
        pool.start_hosts, [HostSpec(name="builtin", backend="builtin", prices={"": 7})], bootstrap
    )
    assert host.info["models"] == [BUILTIN_MODEL_ID]
    # the first token waits for prompt processing on one thread of a busy machine: allow for it
    async with (
        production_sdk(bootstrap, timeouts={"first_token": 30.0, "inter_token": 15.0}) as sdk,
        asyncio.timeout(LIMIT),
    ):
        handle = await sdk.submit_job(
            prompt="Name three colours.", model=BUILTIN_MODEL_ID, max_tokens=24, seed=1, stream=True
        )
        assert handle.stream is not None
        async with handle.stream as stream:
            tokens = [token async for token in stream]
        summary = stream.get_final_summary()
        assert len(tokens) > 0
        assert [t.index for t in tokens] == list(range(len(tokens)))
        assert summary.total_tokens == len(tokens)
        assert summary.completion_tokens == len(tokens)
        assert summary.prompt_tokens > 0
        assert summary.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert await sdk.get_job_status(handle) is JobStatus.COMPLETED
        assert await sdk.get_job_host(handle) == host.peer_id
        payment = await sdk.get_payment_details(handle)
        assert payment.acknowledged_tokens == len(tokens)
        assert payment.price_per_token == 7


async def test_cancelling_a_job_frees_the_host_slot(pool: ProcessPool, bootstrap: MarketProcess) -> None:
    """On a host with one slot and no queue, a running job makes the next request busy; once that job
    is cancelled mid-stream (it ends as cancelled), a new request is accepted and its job completes."""
    spec = HostSpec(
        name="one-slot",
        models=("slot-model",),
        prices={"": 5},
        max_concurrent_jobs=1,
        max_queue=0,
        token_delay=0.2,
    )
    (host,) = await asyncio.to_thread(pool.start_hosts, [spec], bootstrap)
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        nodes = await sdk.discover_nodes(model="slot-model")
        assert [n.peer_id for n in nodes] == [host.peer_id]

        long_job = await sdk.submit_job(
            prompt="Tell me a long story.", model="slot-model", max_tokens=500, stream=True
        )
        assert long_job.stream is not None
        await anext(long_job.stream)  # the job runs
        busy = await sdk.negotiate_with_nodes(prompt="Me too", model="slot-model", max_tokens=2, nodes=nodes)
        assert [(a["accepted"], a["reason"]) for a in busy] == [(False, RejectReason.BUSY)]

        await sdk.cancel_job(long_job)
        assert await sdk.get_job_status(long_job) is JobStatus.CANCELLED
        assert long_job.stream.finish_reason is FinishReason.CANCELLED

        # the slot comes back: ask until the host offers (bounded), then run a whole job there
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREED_WITHIN
        while True:
            answers = await sdk.negotiate_with_nodes(
                prompt="Me too", model="slot-model", max_tokens=2, nodes=nodes
            )
            if answers[0]["accepted"] or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert [(a["accepted"], a["reason"]) for a in answers] == [(True, None)]

        second = await sdk.submit_job(prompt="Short one.", model="slot-model", max_tokens=2)
        details = await sdk.wait_for_job_completion(second, timeout=20.0)
        assert details.status is JobStatus.COMPLETED
        assert details.host == host.peer_id
        assert details.tokens_generated == 2


async def test_a_broken_stream_is_resumed_on_the_same_host(
    pool: ProcessPool, bootstrap: MarketProcess
) -> None:
    """When the job's libp2p stream breaks mid-job without End or Error (here: reset under the client),
    the SDK opens a new stream to the same host and resumes from the next token: the job completes,
    every token index arrives exactly once, and every token is receipted."""
    (host,) = await asyncio.to_thread(
        pool.start_hosts,
        [HostSpec(name="resumable", models=("resume-model",), prices={"": 3}, token_delay=0.02)],
        bootstrap,
    )
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        handle = await sdk.submit_job(prompt="Hello", model="resume-model", max_tokens=60, stream=True)
        assert handle.stream is not None
        indices = []
        async with handle.stream as stream:
            async for token in stream:
                indices.append(token.index)
                if len(indices) == 10:
                    runner = sdk._jobs[handle.job_id].runner
                    assert runner is not None
                    await runner._channel.stream.reset()  # the stream dies under the client
        assert indices == list(range(60))
        assert await sdk.get_job_status(handle) is JobStatus.COMPLETED
        assert await sdk.get_job_host(handle) == host.peer_id
        runner = sdk._jobs[handle.job_id].runner
        assert runner is not None
        assert runner.resumes == 1
        assert (await sdk.get_payment_details(handle)).acknowledged_tokens == 60

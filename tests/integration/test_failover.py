"""Failover with real processes: host processes (libp2p on loopback, the simulated backend) misbehave on
cue — the hidden ``fabstir host run --fault-*`` options — while a client's job streams from them. Each run
ends in a completed job whose text is exactly the uninterrupted completion (what a healthy host writes;
every host's simulated backend has the same seed, so a continuation picks up where the failed host
stopped), or in a typed error within the job's deadline: never a hang, never lost or repeated text.

The faulty host charges 1 wei per token and the steady one 5, and the client selects by price, so the
faulty host always gets the job first. The market runs without escrow (the paid variant, with the real
model and the contracts, is tests/integration/test_paid_failover.py).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from fabstir import EventName, FabstirError, FabstirSDK, JobStatus

from ._processes import HostSpec, MarketProcess, ProcessPool, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODEL = "failover-model"
PROMPT = "Tell me a long story about failover."
MAX_TOKENS = 60
FAULT_AT = 6
TOKEN_DELAY = 0.02
LIMIT = 45.0  # bound on one job: far above what the timeouts below allow, reached only by a hang
TIMEOUTS = {"first_token": 3.0, "inter_token": 2.0, "overall": 40.0}


@pytest.fixture(scope="module")
def steady(module_pool: ProcessPool, bootstrap: MarketProcess) -> MarketProcess:
    """The healthy host every failover lands on (5 wei per token)."""
    spec = HostSpec(
        name="steady", models=(MODEL,), prices={"": 5}, token_delay=TOKEN_DELAY, max_concurrent_jobs=4
    )
    return module_pool.start_hosts([spec], bootstrap)[0]


@pytest.fixture(scope="module")
def reference(bootstrap: MarketProcess, steady: MarketProcess) -> str:
    """The uninterrupted completion of PROMPT, from the steady host."""

    async def fetch() -> str:
        async with _sdk(bootstrap) as sdk:
            handle = await sdk.submit_job(
                prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS, node=steady.peer_id
            )
            await sdk.wait_for_job_completion(handle.job_id, timeout=LIMIT)
            return await sdk.get_job_result(handle.job_id)

    return asyncio.run(fetch())


def _sdk(bootstrap: MarketProcess, **overrides: Any) -> FabstirSDK:
    options: dict[str, Any] = {
        "timeouts": TIMEOUTS,
        "recovery": {"failover": True, "max_failovers": 2},
        "selection_strategy": "price",
    }
    options.update(overrides)
    return production_sdk(bootstrap, **options)


def _faulty(pool: ProcessPool, bootstrap: MarketProcess, *fault: str) -> MarketProcess:
    spec = HostSpec(name="faulty", models=(MODEL,), prices={"": 1}, token_delay=TOKEN_DELAY, extra=fault)
    return pool.start_hosts([spec], bootstrap)[0]


async def _run(sdk: FabstirSDK, **submit: Any) -> tuple[list[int], str, list[dict[str, Any]], int]:
    """Streams one job to its end; returns the token indices, the streamed text, the failover events and
    the job id. Raises the job's typed error if it failed."""
    failovers: list[dict[str, Any]] = []
    sdk.on(EventName.JOB_FAILOVER, lambda e: failovers.append(dict(e.data)))
    async with asyncio.timeout(LIMIT):
        handle = await sdk.submit_job(
            prompt=PROMPT, model=MODEL, max_tokens=MAX_TOKENS, stream=True, **submit
        )
        assert handle.stream is not None
        indices: list[int] = []
        texts: list[str] = []
        try:
            async for token in handle.stream:
                indices.append(token.index)
                texts.append(token.text)
        except FabstirError:
            pass  # the job's own error is raised below, by wait_for_job_completion
        await sdk.wait_for_job_completion(handle.job_id)
    return indices, "".join(texts), failovers, handle.job_id


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(("--fault-kill-at-token", str(FAULT_AT)), id="sigkill"),
        pytest.param(("--fault-stop-at-token", str(FAULT_AT)), id="sigstop"),
        pytest.param(("--fault-drop-at-token", str(FAULT_AT)), id="reset"),
        pytest.param(("--fault-error-at-token", str(FAULT_AT)), id="error-frame"),
    ],
)
async def test_a_host_failing_mid_stream_is_replaced_seamlessly(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess, reference: str, fault: tuple[str, ...]
) -> None:
    """The faulty host fails after FAULT_AT tokens (killed, frozen, resetting, or sending an error);
    the steady host continues: the stream's indices are 0..n-1 without a gap or repeat, the text equals
    the uninterrupted completion, and job:failover names both hosts and FAULT_AT delivered tokens."""
    faulty = _faulty(pool, bootstrap, *fault)
    try:
        async with _sdk(bootstrap) as sdk:
            indices, text, failovers, job_id = await _run(sdk)
            assert indices == list(range(len(indices)))
            assert text == reference == await sdk.get_job_result(job_id)
            assert [(f["from_node"], f["to_node"], f["delivered"]) for f in failovers] == [
                (faulty.peer_id, steady.peer_id, FAULT_AT)
            ]
            assert await sdk.get_job_host(job_id) == steady.peer_id
    finally:
        faulty.send_signal(signal.SIGKILL)  # a frozen host must not outlive the test


async def test_a_slow_first_token_moves_the_job(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess, reference: str
) -> None:
    """A host that would take 30 s to its first token (the timeout is 3 s) is replaced before it sends
    anything: the whole text comes from the steady host."""
    faulty = _faulty(pool, bootstrap, "--fault-first-token-delay", "30")
    async with _sdk(bootstrap) as sdk:
        _indices, text, failovers, _ = await _run(sdk)
        assert text == reference
        assert [(f["from_node"], f["delivered"]) for f in failovers] == [(faulty.peer_id, 0)]


async def test_a_host_serving_another_model_is_caught_before_its_first_token_counts(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess, reference: str
) -> None:
    """A host declaring that it serves another model than the one asked for is caught on its first
    batch (no token of it reaches the stream), and the job moves to the steady host."""
    faulty = _faulty(pool, bootstrap, "--fault-serve-model", "some-other-model")
    async with _sdk(bootstrap) as sdk:
        alerts: list[dict[str, Any]] = []
        sdk.on(EventName.NODE_RELIABILITY_ALERT, lambda e: alerts.append({**e.data, "node_id": e.node_id}))
        _, text, failovers, _ = await _run(sdk)
        assert text == reference
        assert [(f["from_node"], f["delivered"]) for f in failovers] == [(faulty.peer_id, 0)]
        assert failovers[0]["code"] == "model_mismatch"
        assert any(a["node_id"] == faulty.peer_id for a in alerts)


async def test_a_host_overclaiming_usage_is_paid_for_what_it_sent(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess, reference: str
) -> None:
    """A host claiming 10 more completion tokens than it sent finishes the job (the text is complete and
    correct), is flagged (usage_mismatch, node:reliability-alert) and its reliability drops."""
    faulty = _faulty(pool, bootstrap, "--fault-overclaim-tokens", "10")
    async with _sdk(bootstrap) as sdk:
        alerts: list[dict[str, Any]] = []
        sdk.on(EventName.NODE_RELIABILITY_ALERT, lambda e: alerts.append({**e.data, "node_id": e.node_id}))
        _, text, failovers, job_id = await _run(sdk)
        assert text == reference
        assert failovers == []
        details = await sdk.get_job_details(job_id)
        assert details.host == faulty.peer_id
        assert details.extra["usage_mismatch"] is True
        assert [a["node_id"] for a in alerts][:1] == [faulty.peer_id]
        assert sdk.get_node_reliability(faulty.peer_id) < sdk.get_node_reliability(steady.peer_id)


async def test_without_a_replacement_the_job_fails_typed_within_its_deadline(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess
) -> None:
    """The only eligible host is killed mid-stream (the steady one is excluded): the job fails with a
    typed, retryable transport/timeout error well within its deadline, keeping the delivered tokens."""
    _faulty(pool, bootstrap, "--fault-kill-at-token", str(FAULT_AT))
    async with _sdk(bootstrap) as sdk:
        with pytest.raises(FabstirError) as failure:
            await _run(sdk, exclude=[steady.peer_id])
        assert failure.value.retryable
        assert "failover" in failure.value.context
        jobs = sdk.list_jobs()
        assert await sdk.get_job_status(jobs[-1]) is JobStatus.FAILED
        assert len(sdk.create_response_stream(jobs[-1]).text) > 0


async def test_bootstrap_down_at_start_fails_typed_not_hanging(pool: ProcessPool) -> None:
    """A client whose bootstrap peer is down connects (it keeps retrying in the background) and its job
    fails with a typed discovery error within the deadline — it does not hang."""
    dead = pool.start_bootstrap()
    dead.send_signal(signal.SIGKILL)
    dead.process.wait(timeout=10)
    async with _sdk(dead, timeouts={**TIMEOUTS, "overall": 10.0}, discovery={"timeout": 3.0}) as sdk:
        with pytest.raises(FabstirError) as failure:
            await _run(sdk)
        assert failure.value.code.value in ("discovery", "timeout", "no_nodes", "not_connected", "transport")

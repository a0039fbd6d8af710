"""The host's process faults (kill/stop at token N) and the wrong-model fault, in-process over the memory
transport, and the client core's check of ``TokenBatch.model``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fabstir import ConfigurationError, ErrorCode, RemoteProtocolError
from fabstir._models import NodeCapabilities, NodeInfo, Token
from fabstir.backend import GenerationRequest, SimulatedBackend
from fabstir.core._client_job import JobRunner
from fabstir.core._negotiation import OfferInHand
from fabstir.core._stream import TokenBuffer
from fabstir.host import HostFaults, HostService, HostServiceOptions
from fabstir.protocol import (
    MAX_FIELD_CHARS,
    SUPPORTED_VERSIONS,
    Cancel,
    End,
    Error,
    Hello,
    Offer,
    Resume,
    TokenBatch,
)

from .test_host_node import MODEL, PRICE, PROMPT, Client, Env, client, host_env

OTHER = "other-model"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with host_env() as environment:
        yield environment


class Recorder:
    """A process fault hook that only records the signals it was asked to send."""

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.called = asyncio.Event()

    def __call__(self, signal_name: str) -> None:
        self.signals.append(signal_name)
        self.called.set()


def completion(backend: SimulatedBackend, model: str, max_tokens: int) -> tuple[str, ...]:
    return backend.completion(GenerationRequest(model=model, prompt=PROMPT, max_tokens=max_tokens))[0]


async def batches_to_end(alice: Client, channel: Any, request: Any, session: Any) -> list[TokenBatch]:
    """Reads the job to its End, acknowledging every batch; returns the batches as they arrived."""
    batches: list[TokenBatch] = []
    received = 0
    while True:
        frame = await channel.receive()
        if isinstance(frame, End):
            await channel.send(alice.receipt(session, request.job_id, received))
            await channel.close()
            return batches
        assert isinstance(frame, TokenBatch), frame
        batches.append(frame)
        received += len(frame.tokens)
        await channel.send(alice.receipt(session, request.job_id, received))


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kill_at_token": -1}, "kill_at_token"),
        ({"kill_at_token": 2.0}, "kill_at_token"),
        ({"stop_at_token": -1}, "stop_at_token"),
        ({"stop_at_token": True}, "stop_at_token"),
        ({"serve_model": ""}, "serve_model"),
        ({"serve_model": 3}, "serve_model"),
        ({"serve_model": "m" * (MAX_FIELD_CHARS + 1)}, "serve_model"),
    ],
)
def test_new_faults_are_validated(overrides: dict[str, Any], message: str) -> None:
    """The kill/stop counts are non-negative integers and serve_model a model id the wire can carry."""
    with pytest.raises(ConfigurationError, match=message):
        HostFaults(**overrides)


def test_new_faults_default_to_none() -> None:
    """A default HostFaults commits none of the new faults either."""
    faults = HostFaults()
    assert (faults.kill_at_token, faults.stop_at_token, faults.serve_model) == (None, None, None)


# -- kill_at_token -------------------------------------------------------------------------------------


async def test_kill_without_a_hook_behaves_like_a_drop(env: Env) -> None:
    """In-process (no hook) kill_at_token=N is drop_at_token=N: exactly N tokens even though later tokens
    were coalesced into bigger batches, then EOF without End or Error; the job is forgotten (a Resume
    finds nothing) and settled with the N receipted tokens."""
    node = await env.start_node(faults=HostFaults(kill_at_token=5), batch_interval=0.02)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session)
    assert run.broken
    assert (run.end, run.error) == (None, None)
    assert [t for _, t in run.tokens] == list(completion(env.backend, MODEL, 30)[:5])
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.tokens_sent == 5
    assert settled.settlement is not None
    assert settled.settlement.amount == 5 * PRICE
    resumed = await alice.open()
    await resumed.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, 5))
    assert isinstance(await resumed.receive(), Hello)
    error = await resumed.receive()
    assert isinstance(error, Error)
    assert error.code == ErrorCode.JOB_NOT_FOUND


async def test_kill_calls_the_hook_once_after_exactly_n_tokens(env: Env) -> None:
    """With a hook the node asks for SIGKILL once, after the batch holding token N went out and before
    anything else: the client has exactly N tokens and the host never counted more as sent."""
    hook = Recorder()
    node = await env.start_node(faults=HostFaults(kill_at_token=4), process_fault=hook)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session)
    assert hook.signals == ["SIGKILL"]
    assert len(run.tokens) == 4
    assert run.broken
    assert (run.end, run.error) == (None, None)
    settled = await node.wait_job_settled(request.job_id)
    assert settled.tokens_sent == 4


async def test_kill_at_zero_sends_no_token(env: Env) -> None:
    """kill_at_token=0 fires before the first token: the hook is called and the client gets nothing."""
    hook = Recorder()
    node = await env.start_node(faults=HostFaults(kill_at_token=0), process_fault=hook)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session)
    assert hook.signals == ["SIGKILL"]
    assert run.tokens == []
    assert run.broken
    assert (await node.wait_job_settled(request.job_id)).tokens_sent == 0


async def test_a_job_shorter_than_n_ends_normally(env: Env) -> None:
    """A job that ends before token N never meets the fault: End as usual, the hook is not called."""
    hook = Recorder()
    await env.start_node(faults=HostFaults(kill_at_token=1000, stop_at_token=1000), process_fault=hook)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=10)
    run = await alice.follow(channel, request, session)
    assert run.end is not None
    assert hook.signals == []


# -- stop_at_token -------------------------------------------------------------------------------------


async def _assert_frozen_after(env: Env, alice: Client, n: int, **start: Any) -> None:
    node = await env.start_node(faults=HostFaults(stop_at_token=n), batch_interval=0.02, **start)
    channel, request, session = await alice.confirmed(max_tokens=30)
    run = await alice.follow(channel, request, session, stop_after=n)
    assert len(run.tokens) == n
    # A live host answers Cancel with End(cancelled) at once; a frozen one answers nothing.
    await channel.send(Cancel(request.job_id))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await channel.receive()
    assert node.metrics().active == 0  # the frozen job holds no generation slot
    await channel.reset()  # the client gives up
    settled = await node.wait_job_settled(request.job_id)
    assert settled.outcome == "failed"
    assert settled.tokens_sent == n
    assert settled.settlement is not None
    assert settled.settlement.amount == n * PRICE  # the receipts for what arrived still pay


async def test_stop_without_a_hook_hangs_after_n_tokens(env: Env) -> None:
    """In-process stop_at_token=N: exactly N tokens (batching capped at N), then the stream stays open and
    silent — no End even for a Cancel — until the client ends it; the job then fails, paid for N."""
    await _assert_frozen_after(env, await client(env), 6)


async def test_stop_calls_the_hook_once_then_hangs(env: Env) -> None:
    """With a hook the node asks for SIGSTOP once after token N; when the hook returns (the process was
    continued) the job stays frozen."""
    hook = Recorder()
    await _assert_frozen_after(env, await client(env), 3, process_fault=hook)
    assert hook.signals == ["SIGSTOP"]


# -- serve_model and TokenBatch.model ------------------------------------------------------------------


async def test_an_honest_host_names_the_requested_model_in_the_first_batch_only(env: Env) -> None:
    """The first batch carries the requested model, later ones leave it empty."""
    await env.start_node(credit_tokens=4)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=20)
    batches = await batches_to_end(alice, channel, request, session)
    assert len(batches) > 1
    assert [b.model for b in batches] == [MODEL] + [""] * (len(batches) - 1)


async def test_serve_model_is_declared_and_generates_when_the_backend_has_it(env: Env) -> None:
    """serve_model=OTHER: the first batch says OTHER, and the text is OTHER's (the backend serves it)."""
    env.backend = SimulatedBackend([MODEL, OTHER])
    await env.start_node(faults=HostFaults(serve_model=OTHER))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=20)
    batches = await batches_to_end(alice, channel, request, session)
    assert batches[0].model == OTHER
    assert all(b.model == "" for b in batches[1:])
    text = tuple(t for b in batches for t in b.tokens)
    assert text == completion(env.backend, OTHER, 20)
    assert text != completion(env.backend, MODEL, 20)


async def test_serve_model_unknown_to_the_backend_is_still_declared(env: Env) -> None:
    """If the backend lacks serve_model (a one-model backend), it generates the requested model but the
    first batch still declares serve_model: the declaration is what clients check."""
    await env.start_node(faults=HostFaults(serve_model=OTHER))
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=20)
    batches = await batches_to_end(alice, channel, request, session)
    assert batches[0].model == OTHER
    assert tuple(t for b in batches for t in b.tokens) == completion(env.backend, MODEL, 20)


async def test_the_first_batch_after_a_resume_names_the_model_again(env: Env) -> None:
    """A resumed stream starts with a batch that carries the model, like the job's first stream."""
    await env.start_node(credit_tokens=4, resume_ttl=30, receipt_timeout=30)
    alice = await client(env)
    channel, request, session = await alice.confirmed(max_tokens=30)
    first = await channel.receive()
    assert isinstance(first, TokenBatch)
    assert first.model == MODEL
    await channel.reset()
    resumed = await alice.open()
    await resumed.send(Hello(SUPPORTED_VERSIONS), Resume(request.job_id, len(first.tokens)))
    assert isinstance(await resumed.receive(), Hello)
    await resumed.send(alice.receipt(session, request.job_id, len(first.tokens)))  # opens the credit window
    again = await resumed.receive()
    assert isinstance(again, TokenBatch)
    assert again.seq == len(first.tokens)
    assert again.model == MODEL


# -- the client core's check ---------------------------------------------------------------------------


async def job_runner(env: Env, alice: Client, **runner: Any) -> tuple[JobRunner, TokenBuffer, list[Token]]:
    """Negotiates a job with the hand-written client, then hands the stream to the core's JobRunner."""
    request = alice.request(max_tokens=20)
    channel, _, offer = await alice.negotiate(request)
    assert isinstance(offer, Offer)
    session = await alice.open_session(offer)
    node = NodeInfo(
        peer_id=env.host_transport.peer_id,
        addresses=(),
        capabilities=NodeCapabilities(
            models=(MODEL,),
            prices={MODEL: {"ETH": PRICE}},
            max_tokens=2048,
            max_concurrent_jobs=4,
            current_load=0,
            payment_address=offer.payment_address,
            chain_id=offer.chain_id,
            protocol_versions=SUPPORTED_VERSIONS,
        ),
    )
    buffer = TokenBuffer()
    shown: list[Token] = []
    job = JobRunner(
        job_key=request.job_id,
        offer=OfferInHand(node=node, offer=offer, channel=channel, round_trip=0.0),
        session=session,
        ledger=env.ledger,
        account=alice.account,
        buffer=buffer,
        first_token_timeout=5.0,
        inter_token_timeout=5.0,
        on_tokens=shown.extend,
        clock=time.time,
        **runner,
    )
    return job, buffer, shown


async def test_runner_refuses_a_host_serving_another_model(env: Env) -> None:
    """JobRunner(model=M) meeting a batch that names another model raises RemoteProtocolError
    (model_mismatch, retryable) saying requested vs served, before taking any token: nothing buffered,
    shown, acknowledged or paid."""
    env.backend = SimulatedBackend([MODEL, OTHER])
    node = await env.start_node(faults=HostFaults(serve_model=OTHER))
    alice = await client(env)
    job, buffer, shown = await job_runner(env, alice, model=MODEL)
    with pytest.raises(RemoteProtocolError) as info:
        await job.run()
    error = info.value
    assert error.code is ErrorCode.MODEL_MISMATCH
    assert error.retryable
    assert dict(error.context) == {"requested_model": MODEL, "served_model": OTHER}
    assert error.node_id == env.host_transport.peer_id
    assert (buffer.tokens, shown, job.received, job.acknowledged) == ([], [], 0, 0)
    # (the host may well have finished this short job before the client said why it stopped reading)
    settled = await node.wait_job_settled(job.job_key)
    assert settled.receipt_amount == 0


async def test_runner_accepts_the_requested_model(env: Env) -> None:
    """An honest host's first batch names the requested model: the job completes."""
    await env.start_node()
    alice = await client(env)
    job, buffer, _ = await job_runner(env, alice, model=MODEL)
    outcome = await job.run()
    assert outcome.tokens_received == len(buffer.tokens) > 0


async def test_runner_without_a_model_does_not_check(env: Env) -> None:
    """JobRunner without ``model`` (None) takes the tokens whatever model the host names."""
    await env.start_node(faults=HostFaults(serve_model=OTHER))
    alice = await client(env)
    job, buffer, _ = await job_runner(env, alice)
    outcome = await job.run()
    assert outcome.tokens_received == len(buffer.tokens) > 0


# -- the service -----------------------------------------------------------------------------------------


async def test_the_simulated_backend_of_a_service_serves_the_fault_model() -> None:
    """``fabstir host run --backend simulated --fault-serve-model X``: the backend also serves X (so the
    text really is X's), while the host still advertises only its own models."""
    options = HostServiceOptions(backend="simulated", escrow=False, faults=HostFaults(serve_model=OTHER))
    service = HostService(options)
    backend = service._build_backend()
    assert OTHER in await backend.list_models()
    assert service.config.models == ("simulated-model",)
    assert service.config.faults == HostFaults(serve_model=OTHER)

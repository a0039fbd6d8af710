"""The client API of SPEC §3 in mock mode: the real core over the in-memory seams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fabstir import (
    CostBreakdown,
    DiscoveryError,
    Event,
    EventName,
    FabstirSDK,
    FinishReason,
    InvalidStateError,
    JobNotFoundError,
    JobRequest,
    JobStatus,
    MockConfig,
    MockHostSpec,
    NoNodesAcceptedError,
    NotConnectedError,
    PaymentStatus,
    RefundNotAllowedError,
    SDKConfig,
    ValidationError,
)

MODEL = "llama-3.2-1b-instruct"


@pytest.fixture
async def sdk() -> AsyncIterator[FabstirSDK]:
    async with FabstirSDK(SDKConfig(mode="mock", mock=MockConfig(seed=1))) as client:
        yield client


async def test_connect_disconnect_and_status() -> None:
    """connect() starts mock mode (no P2P, an address and a chain id); disconnect() is idempotent."""
    client = FabstirSDK()
    states = [client.is_connected]
    await client.connect()
    await client.connect()
    assert client.is_connected
    assert client.is_p2p_enabled() is False
    address = client.get_address()
    assert address is not None
    assert address.startswith("0x")
    assert client.get_chain_id() == 31337
    assert client.get_p2p_status()["connected"] is True
    await client.disconnect()
    await client.disconnect()
    states.append(client.is_connected)
    assert states == [False, False]


async def test_calls_before_connect_raise_not_connected() -> None:
    """Network operations on a disconnected SDK raise NotConnectedError, not an AttributeError."""
    client = FabstirSDK()
    with pytest.raises(NotConnectedError):
        await client.discover_nodes()
    with pytest.raises(NotConnectedError):
        await client.submit_job(prompt="hi", model=MODEL)


async def test_get_models_lists_the_mock_hosts_models(sdk: FabstirSDK) -> None:
    """get_models() returns the union of the live hosts' models, sorted."""
    models = [m.id for m in await sdk.get_models()]
    assert models == sorted(models)
    assert {"llama-3.2-1b-instruct", "tiny-vicuna-1b", "mistral-7b-instruct"} <= set(models)


async def test_estimate_job_cost_uses_the_typescript_formula_and_cheapest_price(sdk: FabstirSDK) -> None:
    """Estimate = ceil(len(prompt)/4) + floor(0.8 × max_tokens) tokens at the lowest live price."""
    estimate = await sdk.estimate_job_cost(prompt="x" * 10, model=MODEL, max_tokens=100)
    assert estimate.estimated_tokens == 3 + 80
    assert estimate.price_per_token == 1_000_000_000
    assert estimate.estimated_cost == 83 * 1_000_000_000
    assert estimate.includes_buffer is True


async def test_discover_nodes_filters(sdk: FabstirSDK) -> None:
    """discover_nodes filters by model, price, latency, reputation and exclusion; preferred come first."""
    everyone = await sdk.discover_nodes(model=MODEL)
    assert len(everyone) == 3
    assert all(n.latency_ms is not None for n in everyone)
    cheap = await sdk.discover_nodes(model=MODEL, max_price=1_500_000_000)
    assert [n.capabilities.price_for(MODEL) for n in cheap] == [1_000_000_000]
    near = await sdk.discover_nodes(model=MODEL, max_latency_ms=50)
    assert {n.latency_ms for n in near} == {40.0, 15.0}
    only_gamma = await sdk.discover_nodes(model="mistral-7b-instruct")
    assert len(only_gamma) == 1
    excluded = await sdk.discover_nodes(model=MODEL, exclude=[everyone[0].peer_id])
    assert everyone[0].peer_id not in {n.peer_id for n in excluded}
    preferred = await sdk.discover_nodes(model=MODEL, preferred=[everyone[-1].peer_id])
    assert preferred[0].peer_id == everyone[-1].peer_id
    assert await sdk.discover_nodes(model=MODEL, min_reputation=1.01) == []


async def test_select_best_node_strategies(sdk: FabstirSDK) -> None:
    """select_best_node picks the cheapest under 'price' and the nearest under 'latency'."""
    cheapest = await sdk.select_best_node(model=MODEL, strategy="price")
    assert cheapest.capabilities.price_for(MODEL) == 1_000_000_000
    nearest = await sdk.select_best_node(model=MODEL, strategy="latency")
    assert nearest.latency_ms == 15.0
    with pytest.raises(DiscoveryError):
        await sdk.select_best_node(model="no-such-model")


async def test_negotiate_with_nodes_returns_offers(sdk: FabstirSDK) -> None:
    """negotiate_with_nodes asks the top hosts and reports each offer with its price."""
    results = await sdk.negotiate_with_nodes(prompt="hello", model=MODEL, max_tokens=16)
    assert len(results) == 3
    assert all(r["accepted"] for r in results)
    assert sorted(r["price_per_token"] for r in results) == [1_000_000_000, 2_000_000_000, 3_000_000_000]


async def test_submit_job_runs_through_the_whole_timeline(sdk: FabstirSDK) -> None:
    """A job moves POSTED → CLAIMED → PROCESSING → COMPLETED by itself, emitting SPEC events in order."""
    statuses: list[str] = []
    names: list[str] = []
    sdk.on("*", lambda e: names.append(e.name.value))
    handle = await sdk.submit_job(prompt="Tell me about rivers", model=MODEL, max_tokens=20)
    sdk.on_job_status_change(handle.job_id, lambda s: statuses.append(s.value))
    assert await sdk.get_job_status(handle.job_id) == "POSTED"
    details = await sdk.wait_for_job_completion(handle.job_id, timeout=10)
    assert details.status is JobStatus.COMPLETED
    await sdk.approve_job_payment(handle.job_id)
    assert statuses == ["CLAIMED", "PROCESSING", "COMPLETED"]
    result = await sdk.get_job_result(handle.job_id)
    assert result
    assert details.tokens_generated <= 20
    order = [
        "job:submitted",
        "discovery:start",
        "nodes:discovered",
        "negotiation:start",
        "negotiation:complete",
        "job:negotiated",
        "payment:escrowed",
        "job:posted",
        "job:claimed",
        "stream:start",
        "stream:token",
        "stream:end",
        "job:completed",
        "payment:released",
    ]
    positions = [names.index(name) for name in order]
    assert positions == sorted(positions)
    assert await sdk.get_job_host(handle.job_id) is not None


async def test_streaming_job_yields_every_token_once_with_metrics(sdk: FabstirSDK) -> None:
    """submit_job(stream=True) returns a stream that yields tokens in order; metrics and summary agree."""
    handle = await sdk.submit_job(prompt="stream please", model=MODEL, max_tokens=30, stream=True)
    assert handle.stream is not None
    async with handle.stream as stream:
        tokens = [t async for t in stream]
        summary = stream.get_final_summary()
        metrics = stream.get_metrics()
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert summary.total_tokens == len(tokens) == metrics.tokens_received
    assert summary.text == "".join(t.text for t in tokens)
    assert summary.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert metrics.time_to_first_token is not None
    assert await sdk.get_job_status(handle.job_id) == JobStatus.COMPLETED


async def test_same_seed_gives_same_text() -> None:
    """Mock mode is deterministic for a seed: two SDKs with the same seed produce the same answer."""
    texts = []
    for _ in range(2):
        async with FabstirSDK(mock=MockConfig(seed=42)) as client:
            handle = await client.submit_job(prompt="determinism", model=MODEL, max_tokens=25)
            await client.wait_for_job_completion(handle.job_id)
            texts.append(await client.get_job_result(handle.job_id))
    assert texts[0] == texts[1]


async def test_create_response_stream_resume_from_replays_from_an_index(sdk: FabstirSDK) -> None:
    """create_response_stream(job, resume_from=n) yields tokens n.. without loss or repetition."""
    handle = await sdk.submit_job(prompt="resume me", model=MODEL, max_tokens=20)
    await sdk.wait_for_job_completion(handle.job_id)
    full = [t async for t in sdk.create_response_stream(handle.job_id)]
    tail = [t async for t in sdk.create_response_stream(handle.job_id, resume_from=5)]
    assert tail == full[5:]


async def test_pause_and_resume_stream(sdk: FabstirSDK) -> None:
    """A paused stream hands out nothing; after resume it continues where it stopped."""
    handle = await sdk.submit_job(prompt="pause", model=MODEL, max_tokens=20)
    await sdk.wait_for_job_completion(handle.job_id)
    stream = sdk.create_response_stream(handle.job_id)
    first = await anext(stream)
    stream.pause()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.05)
    stream.resume()
    second = await anext(stream)
    assert (first.index, second.index) == (0, 1)


async def test_leaving_the_stream_early_cancels_the_job_and_pays_for_what_arrived() -> None:
    """Closing an owning stream early cancels the job; the host is paid only for acknowledged tokens."""
    async with FabstirSDK(mock=MockConfig(seed=1, realistic_pacing=True)) as sdk:
        handle = await sdk.submit_job(prompt="long answer", model=MODEL, max_tokens=200, stream=True)
        assert handle.stream is not None
        async with handle.stream as stream:
            async for token in stream:
                if token.index == 2:
                    break
        await sdk.wait_for_job_completion(handle.job_id)
        assert await sdk.get_job_status(handle.job_id) == JobStatus.CANCELLED
        payment = await sdk.approve_job_payment(handle.job_id)
        cost = await sdk.calculate_actual_cost(handle.job_id)
    assert cost.total + cost.refunded == payment.deposit
    assert cost.tokens < 200


async def test_cancel_job(sdk: FabstirSDK) -> None:
    """cancel_job ends a running job as CANCELLED; cancelling a finished job is a no-op."""
    handle = await sdk.submit_job(prompt="cancel me", model=MODEL, max_tokens=500)
    await sdk.cancel_job(handle.job_id)
    assert await sdk.get_job_status(handle.job_id) == JobStatus.CANCELLED
    await sdk.cancel_job(handle.job_id)
    assert await sdk.get_job_status(handle.job_id) == JobStatus.CANCELLED


async def test_payment_flow_and_cost_breakdown(sdk: FabstirSDK) -> None:
    """Payment: escrowed then released; host + treasury = total; total + refund = deposit; fee is 1 %."""
    payments: list[Event] = []
    sdk.on_payment_event(payments.append)
    handle = await sdk.submit_job(prompt="pay me", model=MODEL, max_tokens=40)
    await sdk.wait_for_job_completion(handle.job_id)
    details = await sdk.approve_job_payment(handle.job_id)
    assert details.status is PaymentStatus.RELEASED
    cost: CostBreakdown = await sdk.calculate_actual_cost(handle.job_id)
    tokens = (await sdk.get_job_details(handle.job_id)).tokens_generated
    assert cost.tokens == tokens
    assert cost.total == tokens * cost.price_per_token
    assert cost.host + cost.treasury == cost.total
    assert cost.treasury == cost.total * 100 // 10_000
    assert cost.total + cost.refunded == details.deposit
    assert [e.name for e in payments][:1] == [EventName.PAYMENT_ESCROWED]
    assert EventName.PAYMENT_RELEASED in [e.name for e in payments]
    history = await sdk.get_payment_history()
    assert [p.job_id for p in history] == [handle.job_id]


async def test_refund_rules(sdk: FabstirSDK) -> None:
    """request_refund refuses completed jobs with the SPEC message."""
    handle = await sdk.submit_job(prompt="no refund", model=MODEL, max_tokens=5)
    await sdk.wait_for_job_completion(handle.job_id)
    with pytest.raises(RefundNotAllowedError, match="Refund only available for failed or cancelled jobs"):
        await sdk.request_refund(handle.job_id)


async def test_refund_of_a_cancelled_job_reports_the_refunded_deposit() -> None:
    """A job cancelled mid-stream pays the host for what arrived; request_refund reports the refunded rest."""
    async with FabstirSDK(mock=MockConfig(seed=1, realistic_pacing=True)) as sdk:
        handle = await sdk.submit_job(prompt="cancel then refund", model=MODEL, max_tokens=300, stream=True)
        assert handle.stream is not None
        await anext(handle.stream)
        await sdk.cancel_job(handle.job_id)
        assert await sdk.get_job_status(handle.job_id) == JobStatus.CANCELLED
        details = await sdk.request_refund(handle.job_id)
    assert details.refunded_amount > 0
    assert details.settled_amount + details.refunded_amount == details.deposit
    assert details.status is PaymentStatus.REFUNDED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "", "model": MODEL}, "Prompt cannot be empty"),
        ({"prompt": "   ", "model": MODEL}, "Prompt cannot be empty"),
        ({"prompt": "hi", "model": MODEL, "max_tokens": 0}, "Max tokens must be positive"),
        ({"prompt": "hi", "model": MODEL, "max_tokens": -5}, "Max tokens must be positive"),
        ({"prompt": "hi", "model": ""}, "Invalid model ID"),
        ({"prompt": "hi", "model": MODEL, "bogus": 1}, "Unknown job option: bogus"),
    ],
)
async def test_submit_job_validation(sdk: FabstirSDK, kwargs: dict[str, Any], message: str) -> None:
    """submit_job rejects bad requests with the TypeScript SDK's messages, as ValidationError."""
    with pytest.raises(ValidationError, match=message):
        await sdk.submit_job(**kwargs)


async def test_submit_job_accepts_a_request_object(sdk: FabstirSDK) -> None:
    """A JobRequest value works as well as keyword arguments."""
    handle = await sdk.submit_job(JobRequest(prompt="object", model=MODEL, max_tokens=8))
    await sdk.wait_for_job_completion(handle.job_id)
    assert (await sdk.get_job_details(handle.job_id)).request.prompt == "object"


async def test_unknown_job_id(sdk: FabstirSDK) -> None:
    """An unknown id raises JobNotFoundError with 'Job <id> not found'."""
    with pytest.raises(JobNotFoundError, match="Job 999 not found"):
        await sdk.get_job_status(999)
    with pytest.raises(JobNotFoundError):
        sdk.create_response_stream(999)


async def test_get_job_result_before_completion_raises(sdk: FabstirSDK) -> None:
    """get_job_result on a running job raises InvalidStateError."""
    handle = await sdk.submit_job(prompt="slow", model=MODEL, max_tokens=300)
    with pytest.raises(InvalidStateError):
        await sdk.get_job_result(handle.job_id)
    await sdk.cancel_job(handle.job_id)


async def test_submit_job_with_negotiation_when_all_reject() -> None:
    """Every host rejecting ends in NoNodesAcceptedError('No nodes accepted the job') with the reason."""
    hosts = (MockHostSpec(name="a", reject="busy"), MockHostSpec(name="b", reject="busy"))
    async with FabstirSDK(mock=MockConfig(hosts=hosts)) as client:
        with pytest.raises(NoNodesAcceptedError, match="No nodes accepted the job") as info:
            await client.submit_job_with_negotiation(prompt="anyone?", model=MODEL)
        assert info.value.reason == "busy"


async def test_events_async_iterator(sdk: FabstirSDK) -> None:
    """sdk.events(names) yields matching events as an async iterator."""
    seen: list[Event] = []

    async def collect() -> None:
        async for event in sdk.events("job:completed"):
            seen.append(event)
            return

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0)
    handle = await sdk.submit_job(prompt="events", model=MODEL, max_tokens=5)
    await sdk.wait_for_job_completion(handle.job_id)
    async with asyncio.timeout(5):
        await collector
    assert seen[0].job_id == handle.job_id


async def test_stream_job_events_only_for_that_job(sdk: FabstirSDK) -> None:
    """stream_job_events(job, cb) receives only that job's events."""
    first = await sdk.submit_job(prompt="one", model=MODEL, max_tokens=5)
    got: list[Event] = []
    sdk.stream_job_events(first.job_id, got.append)
    second = await sdk.submit_job(prompt="two", model=MODEL, max_tokens=5)
    await sdk.wait_for_job_completion(first.job_id)
    await sdk.wait_for_job_completion(second.job_id)
    assert got
    assert {e.job_id for e in got} == {first.job_id}


async def test_health_and_metrics_reports(sdk: FabstirSDK) -> None:
    """The reports count what happened: one completed job, no failures."""
    handle = await sdk.submit_job(prompt="metrics", model=MODEL, max_tokens=5)
    await sdk.wait_for_job_completion(handle.job_id)
    metrics = sdk.get_performance_metrics()
    assert metrics["jobs_completed"] == 1
    assert metrics["jobs_failed"] == 0
    health = sdk.get_system_health_report()
    assert health["status"] == "healthy"
    assert health["active_jobs"] == 0
    assert sdk.get_error_recovery_report()["failures"] == []


async def test_submit_job_with_negotiation_and_retry_succeed(sdk: FabstirSDK) -> None:
    """submit_job_with_negotiation and submit_job_with_retry return a completed job on a healthy market."""
    first = await sdk.submit_job_with_negotiation(prompt="negotiate", model=MODEL, max_tokens=8)
    assert await sdk.get_job_status(first.job_id) == JobStatus.COMPLETED
    retried = await sdk.submit_job_with_retry(prompt="retry", model=MODEL, max_tokens=8)
    assert await sdk.get_job_status(retried.job_id) == JobStatus.COMPLETED
    assert await sdk.get_payment_status(retried.job_id) in (PaymentStatus.ESCROWED, PaymentStatus.RELEASED)


async def test_submit_job_with_retry_retries_a_dropping_host_and_reports_it() -> None:
    """With failover off, a retryable failure is retried as a new job on another host (on_retry is told);
    a non-retryable one is not."""
    from fabstir import RetryConfig

    retries: list[int] = []
    hosts = (
        MockHostSpec(name="flaky", drop_at_token=2, price_per_token=1),
        MockHostSpec(name="steady", price_per_token=5),
    )
    async with FabstirSDK(
        mock=MockConfig(seed=2, hosts=hosts),
        selection_strategy="price",
        retry=RetryConfig(max_retries=2, initial_delay=0.001, max_delay=0.002, jitter=0.0),
        recovery={"failover": False},
    ) as client:
        handle = await client.submit_job_with_retry(
            prompt="retry", model=MODEL, max_tokens=20, on_retry=lambda err, n, delay: retries.append(n)
        )
        assert await client.get_job_status(handle.job_id) == JobStatus.COMPLETED
        assert (await client.get_job_details(handle.job_id)).price_per_token == 5
        assert retries == [1]
        assert client.get_performance_metrics()["retries"] == 1
        with pytest.raises(ValidationError):
            await client.submit_job_with_retry(prompt="", model=MODEL)

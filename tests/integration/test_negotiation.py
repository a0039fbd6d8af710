"""Negotiation against real host processes: every answer a host can give to a job request — an offer,
and each reject reason (busy, unsupported model, insufficient payment, version mismatch) — arrives at a
client in this process over libp2p."""

from __future__ import annotations

import asyncio

import pytest

from fabstir import DiscoveryError, RejectReason
from fabstir.protocol import SUPPORTED_VERSIONS, Hello, Reject, Request, encode
from fabstir.transport._libp2p import Libp2pTransport

from ._processes import HostSpec, MarketProcess, ProcessPool, exchange_raw, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMIT = 30.0
PRICE = 1000


@pytest.fixture(scope="module")
def hosts(module_pool: ProcessPool, bootstrap: MarketProcess) -> dict[str, MarketProcess]:
    """``offering``: serves ``neg-model`` with room to spare; ``busy``: one slot, no queue, slow."""
    offering, busy = module_pool.start_hosts(
        [
            HostSpec(name="offering", models=("neg-model",), prices={"": PRICE}),
            # one slot, no queue, 0.2 s per token: a single job occupies it for seconds
            HostSpec(
                name="busy",
                models=("busy-model",),
                prices={"": PRICE},
                max_concurrent_jobs=1,
                max_queue=0,
                token_delay=0.2,
            ),
        ],
        bootstrap,
    )
    return {"offering": offering, "busy": busy}


async def test_a_host_makes_an_offer(bootstrap: MarketProcess, hosts: dict[str, MarketProcess]) -> None:
    """A host serving the model at an acceptable price answers with an offer at its announced price."""
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        answers = await sdk.negotiate_with_nodes(prompt="Hello", model="neg-model", max_tokens=8)
        assert len(answers) == 1
        (answer,) = answers
        assert answer["node_id"] == hosts["offering"].peer_id
        assert answer["accepted"] is True
        assert answer["price_per_token"] == PRICE
        assert answer["reason"] is None
        assert isinstance(answer["estimated_time_ms"], int)


async def test_a_full_host_answers_busy(bootstrap: MarketProcess, hosts: dict[str, MarketProcess]) -> None:
    """A host whose only slot runs a job (and that keeps no queue) rejects the next request as busy."""
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        handle = await sdk.submit_job(
            prompt="Tell me a long story.", model="busy-model", max_tokens=500, stream=True
        )
        assert handle.stream is not None
        async with handle.stream as first_job:
            await anext(first_job)  # the job runs: the slot is taken
            nodes = await sdk.discover_nodes(model="busy-model")
            assert [n.peer_id for n in nodes] == [hosts["busy"].peer_id]
            answers = await sdk.negotiate_with_nodes(
                prompt="Me too", model="busy-model", max_tokens=8, nodes=nodes
            )
            assert [(a["accepted"], a["reason"]) for a in answers] == [(False, RejectReason.BUSY)]
        # leaving the block cancelled the first job


async def test_an_unknown_model_is_rejected(
    bootstrap: MarketProcess, hosts: dict[str, MarketProcess]
) -> None:
    """A request for a model the host does not serve is rejected as ``unsupported_model``."""
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        nodes = await sdk.discover_nodes(model="neg-model")
        answers = await sdk.negotiate_with_nodes(
            prompt="Hello", model="no-such-model", max_tokens=8, nodes=nodes
        )
        assert [(a["node_id"], a["accepted"], a["reason"]) for a in answers] == [
            (hosts["offering"].peer_id, False, RejectReason.UNSUPPORTED_MODEL)
        ]


async def test_a_price_below_the_host_price_is_rejected(
    bootstrap: MarketProcess, hosts: dict[str, MarketProcess]
) -> None:
    """A request whose ``max_price_per_token`` is below the host's price is rejected as
    ``insufficient_payment`` by the host; a job with that maximum never reaches the host: discovery
    already rules it out, and the job fails with a DiscoveryError that names the price limit."""
    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        answers = await sdk.negotiate_with_nodes(
            prompt="Hello", model="neg-model", max_tokens=8, max_price_per_token=PRICE - 1
        )
        assert [(a["node_id"], a["accepted"], a["reason"]) for a in answers] == [
            (hosts["offering"].peer_id, False, RejectReason.INSUFFICIENT_PAYMENT)
        ]
        handle = await sdk.submit_job(
            prompt="Hello", model="neg-model", max_tokens=8, max_price_per_token=PRICE - 1
        )
        with pytest.raises(DiscoveryError, match=f"at or below {PRICE - 1} per token"):
            await sdk.wait_for_job_completion(handle)


async def test_an_unknown_protocol_version_is_rejected(
    hosts: dict[str, MarketProcess], raw_client: Libp2pTransport
) -> None:
    """A client speaking only an unknown major version gets the host's own versions in Hello, then a
    ``version_mismatch`` reject, and the host ends the stream."""
    request = Request(
        job_id="job-from-the-future",
        model="neg-model",
        prompt="Hello",
        max_tokens=8,
        client_address="0x" + "11" * 20,
        payment_token="ETH",
    )
    async with asyncio.timeout(LIMIT):
        frames, ended = await exchange_raw(
            raw_client, hosts["offering"].peer, encode(Hello(("9.0",), "from-the-future")) + encode(request)
        )
    assert len(frames) == 2, frames
    hello, reject = frames
    assert isinstance(hello, Hello)
    assert hello.versions == SUPPORTED_VERSIONS
    assert isinstance(reject, Reject)
    assert (reject.job_id, reject.reason) == ("job-from-the-future", RejectReason.VERSION_MISMATCH)
    assert ended == "eof"

"""Hostile peers against real processes: a client sending bytes that are not the job protocol gets an
``Error`` frame and its stream ended while the host keeps serving others, and capability records that
are forged or expired never make a peer discoverable."""

from __future__ import annotations

import asyncio
import time

import pytest

from fabstir import ErrorCode, JobStatus, RemoteProtocolError
from fabstir.protocol import (
    SUPPORTED_VERSIONS,
    CapabilityRecord,
    Confirm,
    Error,
    PeerIdentity,
    capability_key,
    encode,
    encode_capability_record,
    model_key,
    service_key,
    validate_capability_record,
)
from fabstir.transport._libp2p import Libp2pTransport

from ._processes import HostSpec, MarketProcess, ProcessPool, exchange_raw, production_sdk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMIT = 30.0

#: Hostile openings of a job stream, and the error code each must be answered with.
GARBAGE = bytes([12]) + b"\xc1" * 12  # a 12-byte "frame" of 0xc1, a byte msgpack never uses
TOO_LARGE = bytes([0x81, 0x80, 0x40])  # uvarint 1,048,577: one byte above the 1 MiB limit, no payload
WRONG_FIRST = encode(Confirm("job-1", "0x" + "00" * 32))  # well-formed, but a client starts with Hello
HOSTILE = {
    "garbage": (GARBAGE, ErrorCode.MALFORMED_FRAME),
    "oversized-length-prefix": (TOO_LARGE, ErrorCode.FRAME_TOO_LARGE),
    "wrong-first-frame": (WRONG_FIRST, ErrorCode.UNEXPECTED_FRAME),
}


@pytest.fixture(scope="module")
def steady(module_pool: ProcessPool, bootstrap: MarketProcess) -> MarketProcess:
    """The host the hostile client attacks (shared: it must survive every attack)."""
    (host,) = module_pool.start_hosts(
        [HostSpec(name="steady", models=("steady-model",), prices={"": 2})], bootstrap
    )
    return host


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hostile_stream_gets_an_error_and_the_host_keeps_serving(
    case: str, bootstrap: MarketProcess, steady: MarketProcess, raw_client: Libp2pTransport
) -> None:
    """Garbage bytes, a length prefix above the 1 MiB frame limit (sent without any payload: the host
    must not wait for it), and a well-formed frame of the wrong kind first are each answered with one
    ``Error`` frame carrying the matching code, after which the host ends the stream; a normal SDK job
    on the same host then completes."""
    data, code = HOSTILE[case]
    async with asyncio.timeout(LIMIT):
        frames, ended = await exchange_raw(raw_client, steady.peer, data)
    assert len(frames) == 1, frames
    (error,) = frames
    assert isinstance(error, Error)
    assert error.code == code
    assert ended == "eof"

    async with production_sdk(bootstrap) as sdk, asyncio.timeout(LIMIT):
        handle = await sdk.submit_job(prompt="Still there?", model="steady-model", max_tokens=4)
        details = await sdk.wait_for_job_completion(handle)
        assert details.status is JobStatus.COMPLETED
        assert details.host == steady.peer_id
        assert details.tokens_generated > 0


def record_for(transport: Libp2pTransport, model: str, *, expires: float) -> CapabilityRecord:
    return CapabilityRecord(
        peer_id=transport.peer_id,
        addrs=transport.listen_addrs,
        models=(model,),
        prices={model: {"ETH": 1}},  # the cheapest on offer: attractive if it were believed
        max_tokens=2048,
        max_concurrent_jobs=4,
        current_load=0,
        payment_address="0x" + "22" * 20,
        chain_id=1,
        protocol_versions=SUPPORTED_VERSIONS,
        seq=int(time.time() * 1000),
        expires=expires,
    )


async def store_unvalidated(transport: Libp2pTransport, key: bytes, value: bytes) -> None:
    """Puts ``value`` in the node's own DHT store without the validator (``put_value`` refuses it), as a
    malicious or buggy node could; the node then serves it to whoever asks for ``key``."""
    dht = transport._dht
    assert dht is not None

    async def put() -> None:
        dht.value_store.put(key, value)

    await transport._bridge.call(put)


async def test_forged_and_expired_records_are_ignored(
    pool: ProcessPool, bootstrap: MarketProcess, steady: MarketProcess
) -> None:
    """Three peers of our own join the DHT as servers and announce themselves as providers of the service
    and of a model: one with a valid record, one whose record is signed by another key, one whose record
    has expired. ``discover_nodes`` returns the honest one and the real hosts, never the other two."""
    model = "record-model"
    real = await asyncio.to_thread(
        pool.start_hosts,
        [HostSpec(name=f"real-{i}", models=(model,), prices={"": 10}) for i in range(2)],
        bootstrap,
    )
    peers = [
        Libp2pTransport(PeerIdentity(), bootstrap=[bootstrap.peer], dht_mode="server", dial_timeout=3.0)
        for _ in range(3)
    ]
    honest, forged, stale = peers
    try:
        async with asyncio.timeout(LIMIT):
            await asyncio.gather(*(p.start() for p in peers))
            for peer in peers:
                await peer.provide(service_key())
                await peer.provide(model_key(model))
            now = time.time()

            await honest.put_value(
                capability_key(honest.peer_id),
                encode_capability_record(record_for(honest, model, expires=now + 300), honest.sign),
            )
            forged_key = capability_key(forged.peer_id)
            forged_value = encode_capability_record(
                record_for(forged, model, expires=now + 300), PeerIdentity().sign
            )
            with pytest.raises(RemoteProtocolError, match="bad signature"):
                validate_capability_record(forged_key, forged_value, now)
            await store_unvalidated(forged, forged_key, forged_value)
            stale_key = capability_key(stale.peer_id)
            stale_value = encode_capability_record(record_for(stale, model, expires=now - 60), stale.sign)
            with pytest.raises(RemoteProtocolError, match="expired"):
                validate_capability_record(stale_key, stale_value, now)
            await store_unvalidated(stale, stale_key, stale_value)

            async with production_sdk(bootstrap) as sdk:
                by_model = {n.peer_id for n in await sdk.discover_nodes(model=model)}
                assert by_model == {honest.peer_id, *(h.peer_id for h in real)}
                everyone = {n.peer_id for n in await sdk.discover_nodes()}
                assert everyone >= {honest.peer_id, steady.peer_id, *(h.peer_id for h in real)}
                assert not everyone & {forged.peer_id, stale.peer_id}
    finally:
        await asyncio.gather(*(p.aclose() for p in peers))

"""Where discovery gets a host's capability record: from the host itself when it is about to be
contacted anyway (one round trip, the freshest record), from the DHT otherwise — and a record is
trusted only if it validates against the provider's own peer id, wherever it came from."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from fabstir import TransportError
from fabstir.core._discovery import DiscoveryFilter, NodeDiscovery
from fabstir.core._reliability import ReliabilityTracker
from fabstir.protocol import (
    MAX_RECORD_SIZE,
    RECORD_PROTOCOL_ID,
    SUPPORTED_VERSIONS,
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    encode_capability_record,
    service_key,
)
from fabstir.transport import InMemoryNetwork, InMemoryTransport, PeerInfo, Stream


def _record(peer_id: str, *, seq: int = 1, load: int = 0) -> CapabilityRecord:
    return CapabilityRecord(
        peer_id=peer_id,
        addrs=(),
        models=("m",),
        prices={"m": {"ETH": 5}},
        max_tokens=64,
        max_concurrent_jobs=2,
        current_load=load,
        payment_address="0x" + "11" * 20,
        chain_id=31337,
        protocol_versions=SUPPORTED_VERSIONS,
        seq=seq,
        expires=time.time() + 300,
    )


def _serve(transport: InMemoryTransport, value: bytes) -> list[int]:
    """Makes ``transport`` answer record requests with ``value``; returns a list counting the requests."""
    served: list[int] = []

    async def handler(stream: Stream) -> None:
        served.append(1)
        await stream.write(value)
        await stream.close()

    transport.set_stream_handler(RECORD_PROTOCOL_ID, handler)
    return served


async def _start(network: InMemoryNetwork, identity: PeerIdentity | None = None) -> InMemoryTransport:
    transport = network.create_transport(identity)
    await transport.start()
    return transport


def _discovery(client: InMemoryTransport, *, liveness_check: bool = True) -> NodeDiscovery:
    return NodeDiscovery(
        client, ReliabilityTracker(time.time), cache_ttl=60, max_nodes=10, liveness_check=liveness_check
    )


async def test_the_record_comes_from_the_host_when_it_is_contacted_anyway() -> None:
    """A host that put nothing in the DHT but hands out its record directly is discovered with that
    record (and its current load), in one request."""
    network = InMemoryNetwork()
    host = await _start(network)
    served = _serve(host, encode_capability_record(_record(host.peer_id, load=1), host.sign))
    await host.provide(service_key())
    client = await _start(network)
    nodes = await _discovery(client).discover(DiscoveryFilter())
    assert [n.peer_id for n in nodes] == [host.peer_id]
    assert nodes[0].capabilities.current_load == 1
    assert served == [1]


async def test_the_host_s_fresher_record_wins_over_the_dht_copy() -> None:
    """When the DHT holds an older record, the host's own (higher seq, new load) is the one used."""
    network = InMemoryNetwork()
    host = await _start(network)
    await host.put_value(
        capability_key(host.peer_id), encode_capability_record(_record(host.peer_id, seq=1), host.sign)
    )
    _serve(host, encode_capability_record(_record(host.peer_id, seq=2, load=2), host.sign))
    await host.provide(service_key())
    client = await _start(network)
    (node,) = await _discovery(client).discover(DiscoveryFilter())
    assert (node.record_seq, node.capabilities.current_load) == (2, 2)


async def test_a_host_that_does_not_hand_out_records_is_found_through_the_dht() -> None:
    """A host without the record protocol (an older host) is still discovered from its DHT record."""
    network = InMemoryNetwork()
    host = await _start(network)
    await host.put_value(
        capability_key(host.peer_id), encode_capability_record(_record(host.peer_id), host.sign)
    )
    await host.provide(service_key())
    client = await _start(network)
    assert [n.peer_id for n in await _discovery(client).discover(DiscoveryFilter())] == [host.peer_id]


async def test_without_liveness_checks_the_host_is_not_contacted() -> None:
    """With liveness checks off, discovery contacts no host: the record comes from the DHT only."""
    network = InMemoryNetwork()
    host = await _start(network)
    served = _serve(host, encode_capability_record(_record(host.peer_id), host.sign))
    await host.put_value(
        capability_key(host.peer_id), encode_capability_record(_record(host.peer_id), host.sign)
    )
    await host.provide(service_key())
    client = await _start(network)
    nodes = await _discovery(client, liveness_check=False).discover(DiscoveryFilter())
    assert [n.peer_id for n in nodes] == [host.peer_id]
    assert served == []


async def test_a_host_handing_out_another_peer_s_record_or_garbage_is_not_trusted() -> None:
    """A record signed for another peer id, an oversized answer and bytes that are no record are all
    ignored; with nothing valid in the DHT either, those hosts are not discovered, while an honest
    host next to them is."""
    network = InMemoryNetwork()
    other = PeerIdentity()
    impostor = await _start(network)
    _serve(impostor, encode_capability_record(_record(other.peer_id), other.sign))
    flooder = await _start(network)
    _serve(flooder, b"\x00" * (MAX_RECORD_SIZE + 10))
    babbler = await _start(network)
    _serve(babbler, b"not a record")
    honest = await _start(network)
    _serve(honest, encode_capability_record(_record(honest.peer_id), honest.sign))
    for transport in (impostor, flooder, babbler, honest):
        await transport.provide(service_key())
    client = await _start(network)
    nodes = await _discovery(client).discover(DiscoveryFilter())
    assert [n.peer_id for n in nodes] == [honest.peer_id]


async def test_a_lookup_that_fails_after_its_waiters_gave_up_is_not_an_unhandled_error() -> None:
    """A shared lookup whose only waiter timed out and which then fails (the network went away) ends
    quietly: its exception is retrieved, so asyncio never reports a 'Task exception was never retrieved'
    — and the next discovery starts a new lookup instead of reusing the failed one."""
    network = InMemoryNetwork()
    client = await _start(network)
    calls: list[int] = []

    async def failing_find_providers(key: bytes, count: int) -> list[PeerInfo]:
        calls.append(1)
        await asyncio.sleep(0.05)
        raise TransportError("the network went away")

    client.find_providers = failing_find_providers  # type: ignore[method-assign]
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unhandled.append(context))
    discovery = _discovery(client)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(discovery.discover(DiscoveryFilter()), 0.01)
    await asyncio.sleep(0.1)  # the lookup fails with nobody waiting
    gc.collect()  # an unretrieved exception is reported when its task is destroyed
    assert unhandled == []
    with pytest.raises(TransportError):
        await discovery.discover(DiscoveryFilter())
    assert calls == [1, 1]

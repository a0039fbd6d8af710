"""The in-memory transport: the conformance suite (with and without latency), then what only it offers —
fault injection (kill, freeze, partition), DHT realism (provider records outlive killed peers, values are
validated at read time) and its own argument checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest

from fabstir import PeerUnreachableError, TransportError, ValidationError
from fabstir.protocol import (
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    encode_capability_record,
    model_key,
    verify_peer_signature,
)
from fabstir.transport import (
    InMemoryNetwork,
    InMemoryTransport,
    PeerEvent,
    PeerEventKind,
    Stream,
    Transport,
)

from .conformance import ECHO, PeerEvents, TransportConformance, TransportFactory, echo, info, read_all

SINK = "/fabstir/test/sink/1.0.0"
#: Safety bound on each test (they take milliseconds; this only turns a hang into a failure).
LIMIT = 10.0
#: How long a test watches something that must *not* happen (a frozen peer answering).
STILL = 0.05


class TestInMemoryConformance(TransportConformance):
    @pytest.fixture
    async def transport_factory(self) -> AsyncIterator[TransportFactory]:
        network = InMemoryNetwork()
        made: list[Transport] = []

        async def make(count: int) -> list[Transport]:
            new: list[Transport] = [network.create_transport() for _ in range(count)]
            for transport in new:
                await transport.start()
            made.extend(new)
            return new

        yield make
        for transport in made:
            await transport.aclose()


class TestInMemoryConformanceWithLatency(TransportConformance):
    """The same contract holds when every delivery is delayed and the window is small."""

    backpressure_bytes = 1024 * 1024

    @pytest.fixture
    async def transport_factory(self) -> AsyncIterator[TransportFactory]:
        network = InMemoryNetwork(latency=0.0005, window=16 * 1024)
        made: list[Transport] = []

        async def make(count: int) -> list[Transport]:
            new: list[Transport] = [network.create_transport() for _ in range(count)]
            for transport in new:
                await transport.start()
            made.extend(new)
            return new

        yield make
        for transport in made:
            await transport.aclose()


@pytest.fixture
def network() -> InMemoryNetwork:
    return InMemoryNetwork()


@pytest.fixture
async def nodes(network: InMemoryNetwork) -> AsyncIterator[list[InMemoryTransport]]:
    """Three started nodes on ``network``, closed afterwards; each test runs under ``LIMIT``."""
    made = [network.create_transport() for _ in range(3)]
    for node in made:
        await node.start()
    async with asyncio.timeout(LIMIT):
        yield made
    for node in made:
        await node.aclose()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def capability(identity_or_node: PeerIdentity | InMemoryTransport, *, seq: int, expires: float) -> bytes:
    """An encoded capability record signed by ``identity_or_node``."""
    record = CapabilityRecord(
        peer_id=identity_or_node.peer_id,
        addrs=(),
        models=("m",),
        prices=MappingProxyType({"m": MappingProxyType({"ETH": 1})}),
        max_tokens=16,
        max_concurrent_jobs=1,
        current_load=0,
        payment_address="0x" + "22" * 20,
        chain_id=31337,
        protocol_versions=("1.0",),
        seq=seq,
        expires=expires,
    )
    return encode_capability_record(record, identity_or_node.sign)


# identity and lifecycle ------------------------------------------------------------------------------


async def test_identity_addresses_and_protocols(network: InMemoryNetwork) -> None:
    """A transport takes its peer id from its Ed25519 identity, listens at ``/memory/<n>/p2p/<id>``, signs
    verifiably from the peer id alone, and satisfies the Transport and Stream protocols."""
    identity = PeerIdentity(bytes(range(32)))
    async with network.create_transport(identity) as a, network.create_transport() as b:
        assert a.peer_id == identity.peer_id
        (addr,) = a.listen_addrs
        number, _, peer = addr.removeprefix("/memory/").partition("/p2p/")
        assert number.isdigit()
        assert peer == a.peer_id
        assert a.listen_addrs != b.listen_addrs
        assert verify_peer_signature(a.peer_id, b"payload", a.sign(b"payload"))
        assert isinstance(a, Transport)
        b.set_stream_handler(ECHO, echo)
        stream = await a.open_stream(info(b), ECHO)
        assert isinstance(stream, Stream)
        await stream.reset()


async def test_lifecycle(network: InMemoryNetwork) -> None:
    """Nothing works before start; start is idempotent; ``async with`` closes; a closed transport cannot
    start again; the same peer id cannot run twice at once."""
    identity = PeerIdentity()
    transport = network.create_transport(identity)
    with pytest.raises(TransportError, match="not running"):
        await transport.provide(b"key")
    async with transport:
        await transport.start()
        assert network.running_peers() == (transport.peer_id,)
        with pytest.raises(TransportError, match="already running"):
            await network.create_transport(identity).start()
    assert network.running_peers() == ()
    with pytest.raises(TransportError, match="not running"):
        await transport.find_providers(b"key", 1)
    with pytest.raises(TransportError, match="cannot be restarted"):
        await transport.start()


async def test_finished_streams_are_forgotten(
    network: InMemoryNetwork, nodes: list[InMemoryTransport]
) -> None:
    """A stream closed by both sides and read to the end, or a reset one, leaves nothing behind in the
    network (a long-running mock host does not leak)."""
    a, b, _ = nodes
    b.set_stream_handler(ECHO, echo)
    for ending in ("close", "reset"):
        stream = await a.open_stream(info(b), ECHO)
        await stream.write(b"round trip")
        if ending == "close":
            await stream.close()
            assert await read_all(stream) == b"round trip"
        else:
            await stream.reset()
        assert not network._links


async def test_handler_failures_are_logged(
    nodes: list[InMemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """An exception from a stream handler is logged on ``fabstir.transport`` with its traceback, and the
    stream is reset for the opener."""
    a, b, _ = nodes

    async def handler(stream: Stream) -> None:
        raise RuntimeError("boom in handler")

    b.set_stream_handler(SINK, handler)
    with caplog.at_level(logging.ERROR, logger="fabstir.transport"):
        stream = await a.open_stream(info(b), SINK)
        with pytest.raises(TransportError):
            await stream.read()
    (entry,) = [r for r in caplog.records if r.name == "fabstir.transport"]
    assert entry.exc_info is not None
    assert "boom in handler" in str(entry.exc_info[1])


async def test_listener_failure_is_logged_and_others_still_hear(
    nodes: list[InMemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """A peer listener that raises is logged and does not stop the other listeners."""
    a, b, _ = nodes

    def broken(event: PeerEvent) -> None:
        raise RuntimeError("listener bug")

    events = PeerEvents()
    a.add_peer_listener(broken)
    a.add_peer_listener(events)
    with caplog.at_level(logging.ERROR, logger="fabstir.transport"):
        await a.connect(info(b))
    assert events.count(PeerEventKind.CONNECTED, b.peer_id) == 1
    assert any("listener" in r.getMessage() for r in caplog.records if r.name == "fabstir.transport")


# faults ----------------------------------------------------------------------------------------------


async def test_kill(network: InMemoryNetwork, nodes: list[InMemoryTransport]) -> None:
    """A killed peer vanishes: the other side's read and write raise, it sees a disconnect, dials and pings
    fail; the dead node's handlers are cancelled and its own calls fail; closing it later is harmless."""
    a, b, _ = nodes
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(stream: Stream) -> None:
        started.set()
        try:
            await stream.read()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b.set_stream_handler(SINK, handler)
    events = PeerEvents()
    a.add_peer_listener(events)
    stream = await a.open_stream(info(b), SINK)
    await started.wait()
    reading = asyncio.create_task(stream.read())
    network.kill(b.peer_id)
    with pytest.raises(TransportError, match="vanished"):
        await reading
    with pytest.raises(TransportError):
        await stream.write(b"anyone there?")
    await events.wait_for(PeerEventKind.DISCONNECTED, b.peer_id)
    assert b.peer_id not in a.connected_peers()
    with pytest.raises(PeerUnreachableError):
        await a.open_stream(info(b), SINK)
    with pytest.raises(TransportError):
        await a.ping(info(b))
    await cancelled.wait()
    with pytest.raises(TransportError, match="killed"):
        await b.provide(b"key")
    await b.aclose()
    network.kill(b.peer_id)  # killing a dead peer is a no-op


async def test_killed_peer_restarts_with_the_same_identity(
    network: InMemoryNetwork, nodes: list[InMemoryTransport]
) -> None:
    """After a kill, a new transport with the same identity joins at a new address and is reachable."""
    a, _, _ = nodes
    identity = PeerIdentity()
    old = network.create_transport(identity)
    await old.start()
    network.kill(identity.peer_id)
    async with network.create_transport(identity) as new:
        new.set_stream_handler(ECHO, echo)
        assert new.listen_addrs != old.listen_addrs
        stream = await a.open_stream(info(new), ECHO)
        await stream.write(b"welcome back")
        await stream.close()
        assert await read_all(stream) == b"welcome back"


async def test_freeze_stops_both_directions_until_unfreeze(
    network: InMemoryNetwork, nodes: list[InMemoryTransport]
) -> None:
    """While a peer is frozen nothing it is sent arrives and nothing it sends arrives; after unfreeze both
    go through, in order and intact."""
    a, b, _ = nodes
    got: asyncio.Queue[bytes] = asyncio.Queue()
    speak = asyncio.Event()

    async def handler(stream: Stream) -> None:
        got.put_nowait(await stream.read())
        await speak.wait()
        await stream.write(b"pong")
        await stream.close()

    b.set_stream_handler(SINK, handler)
    stream = await a.open_stream(info(b), SINK)

    network.freeze(b.peer_id)
    await stream.write(b"ping")  # the window takes it; it is not delivered
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(got.get(), STILL)
    network.unfreeze(b.peer_id)
    assert await got.get() == b"ping"

    network.freeze(b.peer_id)
    speak.set()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(STILL):
            await stream.read()
    network.unfreeze(b.peer_id)
    assert await read_all(stream) == b"pong"


async def test_frozen_peer_hangs_pings_and_dials(
    network: InMemoryNetwork, nodes: list[InMemoryTransport]
) -> None:
    """A ping or a new stream to a frozen peer neither succeeds nor fails until it is unfrozen; then both
    complete. A frozen peer killed meanwhile makes them fail instead."""
    a, b, c = nodes
    b.set_stream_handler(ECHO, echo)
    c.set_stream_handler(ECHO, echo)
    network.freeze(b.peer_id)
    pinging = asyncio.create_task(a.ping(info(b)))
    opening = asyncio.create_task(a.open_stream(info(b), ECHO))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(asyncio.gather(pinging, opening)), STILL)
    network.unfreeze(b.peer_id)
    assert await pinging >= 0.0
    await (await opening).reset()

    network.freeze(c.peer_id)
    pinging = asyncio.create_task(a.ping(info(c)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(pinging), STILL)
    network.kill(c.peer_id)
    with pytest.raises(PeerUnreachableError):
        await pinging


async def test_partition_and_heal(network: InMemoryNetwork, nodes: list[InMemoryTransport]) -> None:
    """A partition resets the streams between the two peers, disconnects them and makes dials fail, while a
    third peer still reaches both; healing restores dials."""
    a, b, c = nodes
    b.set_stream_handler(ECHO, echo)
    a_events, b_events = PeerEvents(), PeerEvents()
    a.add_peer_listener(a_events)
    b.add_peer_listener(b_events)
    stream = await a.open_stream(info(b), ECHO)
    network.partition(a.peer_id, b.peer_id)
    with pytest.raises(TransportError, match="partition"):
        await stream.read()
    await a_events.wait_for(PeerEventKind.DISCONNECTED, b.peer_id)
    await b_events.wait_for(PeerEventKind.DISCONNECTED, a.peer_id)
    with pytest.raises(PeerUnreachableError):
        await a.open_stream(info(b), ECHO)
    assert await c.ping(info(a)) >= 0.0
    assert await c.ping(info(b)) >= 0.0
    network.heal(a.peer_id, b.peer_id)
    assert await a.ping(info(b)) >= 0.0
    assert a_events.count(PeerEventKind.CONNECTED, b.peer_id) == 2


# DHT realism -----------------------------------------------------------------------------------------


async def test_killed_providers_stay_closed_ones_go(
    network: InMemoryNetwork, nodes: list[InMemoryTransport]
) -> None:
    """Like libp2p provider records, a killed peer's stay (even after its object is closed), so clients must
    check liveness; a cleanly closed transport's are withdrawn."""
    a, b, c = nodes
    d = network.create_transport()
    await d.start()
    key = model_key("realism")
    for node in (a, b, c):
        await node.provide(key)
    network.kill(b.peer_id)
    await b.aclose()
    await c.aclose()
    found = await d.find_providers(key, 10)
    assert sorted(p.peer_id for p in found) == sorted([a.peer_id, b.peer_id])
    with pytest.raises(PeerUnreachableError):
        await d.ping(next(p for p in found if p.peer_id == b.peer_id))
    await d.aclose()


async def test_get_value_validates_what_was_stored() -> None:
    """Values planted without validation are only returned if valid now: garbage and forgeries never,
    a valid injected record yes (and it out-ranks a lower seq put later); records expire by themselves."""
    clock = FakeClock(1_700_000_000.0)
    network = InMemoryNetwork(clock=clock)
    async with network.create_transport() as a, network.create_transport() as b:
        key = capability_key(a.peer_id)
        network.inject_raw_value(key, b"\x00 not msgpack")
        network.inject_raw_value(key, capability(PeerIdentity(), seq=9, expires=clock.now + 60))  # wrong key
        forged = bytearray(capability(a, seq=8, expires=clock.now + 60))
        forged[-1] ^= 1
        network.inject_raw_value(key, bytes(forged))
        assert await b.get_value(key) is None

        planted = capability(a, seq=3, expires=clock.now + 60)
        network.inject_raw_value(key, planted)
        assert await b.get_value(key) == planted
        await a.put_value(key, capability(a, seq=2, expires=clock.now + 600))
        assert await b.get_value(key) == planted

        clock.now += 61
        assert await b.get_value(key) is None
        network.inject_raw_value(b"/other/key", planted)
        assert await b.get_value(b"/other/key") is None


# latency and arguments -------------------------------------------------------------------------------


async def test_latency_delays_pings_but_not_correctness() -> None:
    """With a one-way latency, a ping reports at least a round trip, and bytes still arrive intact."""
    network = InMemoryNetwork(latency=0.005)
    async with network.create_transport() as a, network.create_transport() as b, asyncio.timeout(LIMIT):
        b.set_stream_handler(ECHO, echo)
        assert await a.ping(info(b)) >= 0.01
        stream = await a.open_stream(info(b), ECHO)
        await stream.write(b"slow but sure")
        await stream.close()
        assert await read_all(stream, max_bytes=3) == b"slow but sure"


async def test_zero_latency_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without latency, streams, pings and the DHT never call ``asyncio.sleep`` (mock mode stays instant)."""
    network = InMemoryNetwork()
    async with network.create_transport() as a, network.create_transport() as b, asyncio.timeout(LIMIT):
        b.set_stream_handler(ECHO, echo)

        async def no_sleep(*args: object, **kwargs: object) -> None:
            raise AssertionError("asyncio.sleep called with zero latency")

        monkeypatch.setattr(asyncio, "sleep", no_sleep)
        await a.ping(info(b))
        stream = await a.open_stream(info(b), ECHO)
        await stream.write(b"instant")
        await stream.close()
        assert await read_all(stream) == b"instant"
        await a.provide(b"k")
        assert await b.find_providers(b"k", 1) != []
        assert await b.get_value(capability_key(a.peer_id)) is None


async def test_bad_arguments(nodes: list[InMemoryTransport]) -> None:
    """Nonsense arguments raise ValidationError: a zero window, a negative or infinite latency, a zero
    ``count``, a zero ``max_bytes``; dialling ourselves is unreachable."""
    a, b, _ = nodes
    with pytest.raises(ValidationError):
        InMemoryNetwork(window=0)
    for latency in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            InMemoryNetwork(latency=latency)
    with pytest.raises(ValidationError):
        await a.find_providers(b"k", 0)
    b.set_stream_handler(ECHO, echo)
    stream = await a.open_stream(info(b), ECHO)
    with pytest.raises(ValidationError):
        await stream.read(0)
    with pytest.raises(PeerUnreachableError):
        await a.open_stream(info(a), ECHO)

"""The transport conformance suite: what the core relies on from any :class:`fabstir.transport.Transport`.

Not collected by itself (the class name does not start with ``Test``). An implementation's test module
subclasses :class:`TransportConformance` and provides the ``transport_factory`` fixture::

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        async def transport_factory(self) -> AsyncIterator[TransportFactory]:
            made: list[Transport] = []

            async def make(count: int) -> list[Transport]:
                ...  # start `count` transports that can reach each other and share one DHT
                return new

            yield make
            for transport in made:
                await transport.aclose()

Each call returns ``count`` started transports (1 to 3) that can dial each other and share one DHT. A test
may call the factory more than once: transports from different calls must be able to dial each other,
but must not be connected to each other yet (the connection-event test relies on it). Tests may
``aclose`` what the factory returned (``aclose`` is idempotent), so its teardown must tolerate that.
A subclass may override ``unreachable_peer`` (a peer that cannot be dialled, e.g. a dead TCP port for a
real network), ``now`` (the clock the DHT uses for record expiry), ``limit`` and ``backpressure_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from types import MappingProxyType

import pytest

from fabstir import PeerUnreachableError, TransportError
from fabstir.protocol import (
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    encode_capability_record,
    model_key,
)
from fabstir.transport import PeerEvent, PeerEventKind, PeerInfo, Stream, Transport

__all__ = [
    "ECHO",
    "PeerEvents",
    "TransportConformance",
    "TransportFactory",
    "echo",
    "info",
    "read_all",
    "write_until_it_fails",
]

#: Starts ``count`` transports able to reach each other (sharing one DHT) and returns them; see above.
TransportFactory = Callable[[int], Awaitable[list[Transport]]]

ECHO = "/fabstir/test/echo/1.0.0"
SINK = "/fabstir/test/sink/1.0.0"
UNKNOWN = "/fabstir/test/nobody-speaks-this/1.0.0"


def info(transport: Transport) -> PeerInfo:
    """How another node dials ``transport``."""
    return PeerInfo(transport.peer_id, transport.listen_addrs)


async def read_all(stream: Stream, max_bytes: int = 65536) -> bytes:
    """Everything until the peer's clean close."""
    data = bytearray()
    while chunk := await stream.read(max_bytes):
        data += chunk
    return bytes(data)


async def echo(stream: Stream) -> None:
    """Reads until EOF, writes it all back, closes."""
    await stream.write(await read_all(stream))
    await stream.close()


async def write_until_it_fails(stream: Stream) -> None:
    """Writes until a write raises: a real network may accept a write or two before a reset arrives."""
    while True:
        await stream.write(b"x" * 1024)


class PeerEvents:
    """A peer listener that records events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[PeerEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: PeerEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: PeerEventKind, peer_id: str) -> None:
        while PeerEvent(kind, peer_id) not in self.events:
            self._changed.clear()
            await self._changed.wait()

    def count(self, kind: PeerEventKind, peer_id: str) -> int:
        return self.events.count(PeerEvent(kind, peer_id))


class TransportConformance:
    """Behaviour every transport must show; see the module docstring for how to subclass."""

    #: Safety bound on each test: a hang fails the test instead of blocking the run.
    limit: float = 20.0
    #: More than any implementation may buffer for one stream whose reader reads nothing. libp2p: yamux
    #: auto-tunes its receive window up to 16 MiB, on top of socket buffers and the facade's read-ahead.
    backpressure_bytes: int = 64 * 1024 * 1024

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        raise NotImplementedError(
            "a TransportConformance subclass must provide the transport_factory fixture"
        )

    @pytest.fixture
    def unreachable_peer(self) -> PeerInfo:
        """A well-formed peer that no node can dial."""
        return PeerInfo(PeerIdentity().peer_id)

    def now(self) -> float:
        """The wall clock the DHT validates record expiry against."""
        return time.time()

    def record(self, transport: Transport, *, seq: int = 1, ttl: float = 3600.0) -> CapabilityRecord:
        return CapabilityRecord(
            peer_id=transport.peer_id,
            addrs=transport.listen_addrs,
            models=("conformance-model",),
            prices=MappingProxyType({"conformance-model": MappingProxyType({"ETH": 1_000})}),
            max_tokens=256,
            max_concurrent_jobs=2,
            current_load=0,
            payment_address="0x" + "11" * 20,
            chain_id=31337,
            protocol_versions=("1.0",),
            seq=seq,
            expires=self.now() + ttl,
        )

    # streams -----------------------------------------------------------------------------------------

    async def test_echo(self, transport_factory: TransportFactory) -> None:
        """Bytes written on a stream reach the peer's handler, which sees who opened it for which
        protocol, and its answer comes back before EOF."""
        a, b = await transport_factory(2)
        seen: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            seen.set_result((stream.remote_peer, stream.protocol_id))
            await echo(stream)

        b.set_stream_handler(ECHO, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), ECHO)
            assert (stream.remote_peer, stream.protocol_id) == (b.peer_id, ECHO)
            await stream.write(b"hello ")
            await stream.write(b"world")
            await stream.close()
            assert await read_all(stream) == b"hello world"
            assert await seen == (a.peer_id, ECHO)

    async def test_large_payload_arrives_intact_and_in_order(
        self, transport_factory: TransportFactory
    ) -> None:
        """A 1 MiB write arrives byte for byte, in order, through many reads none larger than asked."""
        a, b = await transport_factory(2)
        payload = random.Random(7).randbytes(1024 * 1024)
        max_bytes = 64 * 1024
        received: asyncio.Future[tuple[bytes, list[int]]] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            data, sizes = bytearray(), []
            while chunk := await stream.read(max_bytes):
                sizes.append(len(chunk))
                data += chunk
            received.set_result((bytes(data), sizes))

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await stream.write(payload)
            await stream.close()
            data, sizes = await received
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert len(sizes) >= len(payload) // max_bytes
        assert all(0 < size <= max_bytes for size in sizes)

    async def test_eof_after_close_is_sticky(self, transport_factory: TransportFactory) -> None:
        """After the writer's close the reader gets the data, then ``b""`` — and ``b""`` again; closing
        twice is harmless."""
        a, b = await transport_factory(2)
        reads: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            data = await read_all(stream)
            reads.set_result([data, await stream.read(), await stream.read()])

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await stream.write(b"last words")
            await stream.close()
            await stream.close()
            assert await reads == [b"last words", b"", b""]

    async def test_half_close_still_reads(self, transport_factory: TransportFactory) -> None:
        """Closing our side ends our writes (a later write raises) but the peer's reply still arrives."""
        a, b = await transport_factory(2)

        async def handler(stream: Stream) -> None:
            question = await read_all(stream)
            await stream.write(b"reply to " + question)
            await stream.close()

        b.set_stream_handler(ECHO, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), ECHO)
            await stream.write(b"question")
            await stream.close()
            with pytest.raises(TransportError):
                await stream.write(b"too late")
            assert await read_all(stream) == b"reply to question"

    async def test_reset_by_handler_is_seen_on_read_and_write(
        self, transport_factory: TransportFactory
    ) -> None:
        """When the handler resets the stream, the opener's read and write raise TransportError."""
        a, b = await transport_factory(2)
        was_reset = asyncio.Event()

        async def handler(stream: Stream) -> None:
            await stream.reset()
            await stream.reset()  # idempotent
            was_reset.set()

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await was_reset.wait()
            with pytest.raises(TransportError):
                await stream.read()
            with pytest.raises(TransportError):
                await write_until_it_fails(stream)

    async def test_reset_by_opener_is_seen_by_handler(self, transport_factory: TransportFactory) -> None:
        """When the opener resets, the handler's pending read raises, and so do the opener's own calls."""
        a, b = await transport_factory(2)
        outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            try:
                outcome.set_result(await read_all(stream))
            except TransportError as exc:
                outcome.set_result(exc)

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await stream.write(b"partial")
            await stream.reset()
            assert isinstance(await outcome, TransportError)
            with pytest.raises(TransportError):
                await stream.read()
            with pytest.raises(TransportError):
                await stream.write(b"more")

    async def test_handler_failure_resets_the_stream(self, transport_factory: TransportFactory) -> None:
        """A handler that raises does not leave the opener waiting: its read raises TransportError."""
        a, b = await transport_factory(2)

        async def handler(stream: Stream) -> None:
            await stream.read()
            raise RuntimeError("handler bug (expected by the test)")

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await stream.write(b"trigger")
            with pytest.raises(TransportError):
                await stream.read()

    async def test_backpressure_blocks_the_writer_until_the_reader_drains(
        self, transport_factory: TransportFactory
    ) -> None:
        """Writes stop completing while the peer reads nothing (after at most ``backpressure_bytes``);
        once it reads, the blocked write completes and every byte arrives in order."""
        a, b = await transport_factory(2)
        release = asyncio.Event()
        received: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            await release.wait()
            total, digest = 0, hashlib.sha256()
            while chunk := await stream.read():
                total += len(chunk)
                digest.update(chunk)
            received.set_result((total, digest.hexdigest()))

        b.set_stream_handler(SINK, handler)
        rng = random.Random(11)
        sent, written = hashlib.sha256(), 0
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            # Write 1 MiB at a time until a write fails to complete within 0.2 s: the peer's buffers,
            # however large, are full. A transport without backpressure runs past backpressure_bytes.
            while True:
                chunk = rng.randbytes(1024 * 1024)
                writing = asyncio.create_task(stream.write(chunk))
                done, _ = await asyncio.wait({writing}, timeout=0.2)
                if not done:
                    break
                writing.result()
                sent.update(chunk)
                written += len(chunk)
                assert written <= self.backpressure_bytes, "the writer never blocked"
            try:
                release.set()
                await writing
            finally:
                writing.cancel()
            sent.update(chunk)
            written += len(chunk)
            await stream.close()
            assert await received == (written, sent.hexdigest())

    # dialling ----------------------------------------------------------------------------------------

    async def test_unknown_peer_is_unreachable(
        self, transport_factory: TransportFactory, unreachable_peer: PeerInfo
    ) -> None:
        """Opening a stream to, connecting to or pinging a peer nobody runs raises PeerUnreachableError
        (a TransportError)."""
        a, _ = await transport_factory(2)
        async with asyncio.timeout(self.limit):
            with pytest.raises(PeerUnreachableError):
                await a.open_stream(unreachable_peer, ECHO)
            with pytest.raises(PeerUnreachableError):
                await a.connect(unreachable_peer)
            with pytest.raises(TransportError):
                await a.ping(unreachable_peer)

    async def test_closed_peer_is_unreachable(self, transport_factory: TransportFactory) -> None:
        """Once a peer closed, streams to it and pings fail with TransportError (PeerUnreachableError
        for a new stream)."""
        a, b = await transport_factory(2)
        b.set_stream_handler(ECHO, echo)
        async with asyncio.timeout(self.limit):
            await a.connect(info(b))
            await b.aclose()
            with pytest.raises(PeerUnreachableError):
                await a.open_stream(info(b), ECHO)
            with pytest.raises(TransportError):
                await a.ping(info(b))

    async def test_unsupported_protocol(self, transport_factory: TransportFactory) -> None:
        """A protocol the peer has no handler for raises TransportError, not PeerUnreachableError (the
        peer is there), and the connection still serves the protocols it does speak."""
        a, b = await transport_factory(2)
        b.set_stream_handler(ECHO, echo)
        async with asyncio.timeout(self.limit):
            with pytest.raises(TransportError) as caught:
                await a.open_stream(info(b), UNKNOWN)
            assert not isinstance(caught.value, PeerUnreachableError)
            stream = await a.open_stream(info(b), ECHO)
            await stream.write(b"still fine")
            await stream.close()
            assert await read_all(stream) == b"still fine"

    async def test_ping_a_live_peer(self, transport_factory: TransportFactory) -> None:
        """Pinging a live peer returns a round-trip time in seconds."""
        a, b = await transport_factory(2)
        async with asyncio.timeout(self.limit):
            rtt = await a.ping(info(b))
        assert isinstance(rtt, float)
        assert rtt >= 0.0

    async def test_connect_and_disconnect_events(self, transport_factory: TransportFactory) -> None:
        """Connecting emits CONNECTED on both sides once (a second connect adds none) and lists the peers
        as connected; when one closes, the other sees DISCONNECTED, and a removed listener hears nothing."""
        # Separate calls, so that a factory that bootstraps its nodes to each other cannot have
        # connected these two before the listeners are in place.
        (a,) = await transport_factory(1)
        (b,) = await transport_factory(1)
        a_events, b_events, removed = PeerEvents(), PeerEvents(), PeerEvents()
        a.add_peer_listener(a_events)
        b.add_peer_listener(b_events)
        assert b.peer_id not in a.connected_peers(), "the factory broke its contract: already connected"
        async with asyncio.timeout(self.limit):
            await a.connect(info(b))
            await a_events.wait_for(PeerEventKind.CONNECTED, b.peer_id)
            await b_events.wait_for(PeerEventKind.CONNECTED, a.peer_id)
            await a.connect(info(b))
            assert a_events.count(PeerEventKind.CONNECTED, b.peer_id) == 1
            assert b.peer_id in a.connected_peers()
            assert a.peer_id in b.connected_peers()

            unsubscribe = a.add_peer_listener(removed)
            unsubscribe()
            unsubscribe()  # harmless twice
            await b.aclose()
            await a_events.wait_for(PeerEventKind.DISCONNECTED, b.peer_id)
        assert b.peer_id not in a.connected_peers()
        assert removed.events == []

    # DHT ---------------------------------------------------------------------------------------------

    async def test_providers_are_distinct_and_bounded(self, transport_factory: TransportFactory) -> None:
        """provide reports the record stored beyond the node; find_providers lists each provider once (even
        if it provided twice), at most ``count`` of them, with addresses good enough to dial; a key nobody
        provides has none."""
        a, b, c = await transport_factory(3)
        key = model_key(f"conformance-{os.urandom(6).hex()}")
        async with asyncio.timeout(self.limit):
            assert await a.provide(key) is True
            assert await a.provide(key) is True
            assert await b.provide(key) is True
            found = await c.find_providers(key, 10)
            assert sorted(p.peer_id for p in found) == sorted([a.peer_id, b.peer_id])
            assert len(await c.find_providers(key, 1)) == 1
            assert await c.find_providers(model_key(f"nobody-{os.urandom(6).hex()}"), 5) == []
            provider_a = next(p for p in found if p.peer_id == a.peer_id)
            assert await c.ping(provider_a) >= 0.0

    async def test_put_and_get_a_capability_record(self, transport_factory: TransportFactory) -> None:
        """A valid signed capability record put by its host is returned, byte for byte, to another node;
        an absent key gives None."""
        a, b, c = await transport_factory(3)
        value = encode_capability_record(self.record(a), a.sign)
        async with asyncio.timeout(self.limit):
            await a.put_value(capability_key(a.peer_id), value)
            assert await b.get_value(capability_key(a.peer_id)) == value
            assert await b.get_value(capability_key(c.peer_id)) is None

    async def test_invalid_records_are_rejected(self, transport_factory: TransportFactory) -> None:
        """put_value refuses, with TransportError, a forged signature, an expired record, a record under
        another peer's key and an unknown namespace; the valid record stays what readers get."""
        a, b = await transport_factory(2)
        key = capability_key(a.peer_id)
        good = encode_capability_record(self.record(a), a.sign)
        forged = encode_capability_record(self.record(a, seq=5), PeerIdentity().sign)
        expired = encode_capability_record(self.record(a, seq=6, ttl=-60.0), a.sign)
        async with asyncio.timeout(self.limit):
            await a.put_value(key, good)
            for bad_key, bad_value in [
                (key, forged),
                (key, expired),
                (capability_key(b.peer_id), good),
                (b"/elsewhere/" + key[-32:], good),
            ]:
                with pytest.raises(TransportError, match="rejected"):
                    await a.put_value(bad_key, bad_value)
            assert await b.get_value(key) == good

    async def test_highest_seq_wins(self, transport_factory: TransportFactory) -> None:
        """Readers get the record with the highest seq; an older record put later does not replace it
        (an implementation may refuse it or keep it aside)."""
        a, b = await transport_factory(2)
        key = capability_key(a.peer_id)
        first, second = (encode_capability_record(self.record(a, seq=s), a.sign) for s in (1, 2))
        async with asyncio.timeout(self.limit):
            await a.put_value(key, first)
            await a.put_value(key, second)
            assert await b.get_value(key) == second
            with contextlib.suppress(TransportError):
                await a.put_value(key, first)
            assert await b.get_value(key) == second

    # lifecycle ---------------------------------------------------------------------------------------

    async def test_aclose_is_idempotent_and_resets_open_streams(
        self, transport_factory: TransportFactory
    ) -> None:
        """Closing a transport (twice is fine) resets its open streams for both sides, and it can no
        longer open streams."""
        a, b = await transport_factory(2)
        outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()
        reading = asyncio.Event()

        async def handler(stream: Stream) -> None:
            reading.set()
            try:
                outcome.set_result(await read_all(stream))
            except TransportError as exc:
                outcome.set_result(exc)

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            stream = await a.open_stream(info(b), SINK)
            await stream.write(b"unfinished")
            await reading.wait()
            await a.aclose()
            await a.aclose()
            assert isinstance(await outcome, TransportError)
            with pytest.raises(TransportError):
                await stream.write(b"more")
            with pytest.raises(TransportError):
                await stream.read()
            with pytest.raises(TransportError):
                await a.open_stream(info(b), SINK)

    async def test_aclose_cancels_running_handlers(self, transport_factory: TransportFactory) -> None:
        """A handler still running when its transport closes is cancelled, and aclose waits for it."""
        a, b = await transport_factory(2)
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def handler(stream: Stream) -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # never set: only cancellation ends this handler
            except asyncio.CancelledError:
                cancelled.set()
                raise

        b.set_stream_handler(SINK, handler)
        async with asyncio.timeout(self.limit):
            await a.open_stream(info(b), SINK)
            await started.wait()
            await b.aclose()
        assert cancelled.is_set()

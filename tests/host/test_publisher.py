"""The record publisher's three clocks, against a transport that only records what it is asked: provider
records re-announced every provider_refresh, the record put in the DHT every record_refresh, and a load
change answered by a re-signed record with no DHT write at all."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from fabstir.host import HostConfig
from fabstir.host._publisher import RecordPublisher
from fabstir.protocol import (
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    decode_capability_record,
    model_key,
    service_key,
)
from fabstir.transport import Transport

MODELS = ("model-a", "model-b")
#: Bounds every test (they take well under a second; this only stops a hang).
LIMIT = 10.0


class RecordingTransport:
    """The part of a transport the publisher uses; remembers each call with the event-loop time."""

    def __init__(self) -> None:
        self.identity = PeerIdentity(hashlib.sha256(b"publisher-tests").digest())
        self.peer_id = self.identity.peer_id
        self.listen_addrs = ("/ip4/127.0.0.1/tcp/4001",)
        self.provided: list[tuple[float, bytes]] = []
        self.puts: list[tuple[float, bytes, bytes]] = []
        self.reach = True  # what provide() answers: whether another DHT node stored the record
        self.called = asyncio.Condition()  # notified after every call

    async def _record(self) -> None:
        async with self.called:
            self.called.notify_all()

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)

    async def provide(self, key: bytes) -> bool:
        self.provided.append((asyncio.get_running_loop().time(), key))
        await self._record()
        return self.reach

    async def put_value(self, key: bytes, value: bytes) -> None:
        self.puts.append((asyncio.get_running_loop().time(), key, value))
        await self._record()


class Load:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def publisher(transport: RecordingTransport, load: Load, **overrides: Any) -> RecordPublisher:
    config = HostConfig(models=MODELS, prices={m: {"ETH": 1} for m in MODELS}, **overrides)
    return RecordPublisher(
        config,
        transport=cast(Transport, transport),
        payment_address="0x" + "11" * 20,
        chain_id=31337,
        load=load,
        clock=time.time,
    )


_RUNNING: set[asyncio.Task[None]] = set()


@pytest.fixture
async def running() -> AsyncIterator[tuple[RecordingTransport, Load]]:
    """A recording transport and a load gauge; publishers started in the test stop at its end."""
    transport, load = RecordingTransport(), Load()
    try:
        async with asyncio.timeout(LIMIT):
            yield transport, load
    finally:
        for task in _RUNNING:
            task.cancel()
        await asyncio.gather(*_RUNNING, return_exceptions=True)
        _RUNNING.clear()


async def start(pub: RecordPublisher) -> None:
    """What HostNode.start does: announce, publish, then run in the background."""
    await pub.provide()
    await pub.publish()
    _RUNNING.add(asyncio.create_task(pub.run()))


async def until(transport: RecordingTransport, condition: Callable[[], bool]) -> None:
    """Waits (bounded by the fixture) until ``condition`` holds after some call to the transport."""
    async with transport.called:
        await transport.called.wait_for(condition)


def newer_than(seq: int) -> Callable[[CapabilityRecord], bool]:
    return lambda record: record.seq > seq


def rounds(provided: list[tuple[float, bytes]]) -> list[float]:
    """The times of the provide rounds (one provide of the service key starts each)."""
    return [t for t, key in provided if key == service_key()]


async def test_provider_records_follow_provider_refresh_not_record_refresh(running: Any) -> None:
    """With record_refresh 0.02 s and provider_refresh 0.2 s, every provide round announces the service
    key and each model key, rounds are at least provider_refresh apart, and record puts at least
    record_refresh apart — so there are several puts for each round, not one round per put."""
    transport, load = running
    await start(publisher(transport, load, record_refresh=0.02, record_ttl=5, provider_refresh=0.2))
    await until(transport, lambda: len(rounds(transport.provided)) >= 3)

    times = rounds(transport.provided)
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(times))
    assert [key for _, key in transport.provided[:3]] == [service_key(), *(model_key(m) for m in MODELS)]
    put_times = [t for t, _, _ in transport.puts]
    assert all(b - a >= 0.02 for a, b in itertools.pairwise(put_times))
    assert len(transport.puts) > len(times)
    assert {key for _, key, _ in transport.puts} == {capability_key(transport.peer_id)}
    seqs = [decode_capability_record(value).seq for _, _, value in transport.puts]
    assert seqs == sorted(set(seqs))


async def test_a_load_change_re_signs_the_record_without_a_dht_write(running: Any) -> None:
    """A load change gives a record with the new load and a higher seq, handed out at once (record and
    encoded), while the DHT sees no write until record_refresh — which then carries the new load."""
    transport, load = running
    pub = publisher(transport, load, record_refresh=2.0, record_ttl=5, provider_refresh=60)
    await start(pub)
    first = pub.record
    assert first is not None
    assert first.current_load == 0
    assert len(transport.puts) == 1

    load.value = 2
    pub.load_changed()
    changed = await pub.wait_for(lambda r: r.current_load == 2)
    assert changed.seq > first.seq
    assert pub.encoded is not None
    assert decode_capability_record(pub.encoded) == changed
    assert len(transport.puts) == 1

    await until(transport, lambda: len(transport.puts) == 2)
    assert decode_capability_record(transport.puts[1][2]).current_load == 2
    assert len(rounds(transport.provided)) == 1


async def test_a_burst_of_load_changes_gives_one_record(running: Any) -> None:
    """Ten load changes in a row are debounced into one re-signed record (not ten)."""
    transport, load = running
    pub = publisher(transport, load, record_refresh=60, record_ttl=300, provider_refresh=600)
    await start(pub)
    first = pub.record
    assert first is not None
    signed: list[int] = []

    async def watch() -> None:
        while True:
            last = signed[-1] if signed else first.seq
            record = await pub.wait_for(newer_than(last))
            signed.append(record.seq)

    watcher = asyncio.create_task(watch())
    for n in range(1, 11):
        load.value = n
        pub.load_changed()
    await pub.wait_for(lambda r: r.current_load == 10)
    await asyncio.sleep(0.3)  # longer than the debounce: a second record would have come by now
    watcher.cancel()
    assert len(signed) == 1
    assert len(transport.puts) == 1


async def test_a_provide_round_that_reached_no_peer_is_retried_at_the_record_refresh(running: Any) -> None:
    """While provide reaches no other DHT node (a host up before its bootstrap peer), rounds come every
    record_refresh (0.05 s) rather than provider_refresh (60 s); once a round reaches the DHT, the next
    waits for provider_refresh again."""
    transport, load = running
    transport.reach = False
    pub = publisher(transport, load, record_refresh=0.05, record_ttl=5, provider_refresh=60)
    await start(pub)
    await until(transport, lambda: len(rounds(transport.provided)) >= 3)
    times = rounds(transport.provided)
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(times))

    transport.reach = True
    reached = len(rounds(transport.provided)) + 1  # the round that will reach the DHT
    await until(transport, lambda: len(rounds(transport.provided)) >= reached)
    puts = len(transport.puts)
    await until(transport, lambda: len(transport.puts) >= puts + 4)  # 4 record refreshes later: no new round
    assert len(rounds(transport.provided)) == reached


async def test_reannounce_announces_and_puts_at_once(running: Any) -> None:
    """reannounce() (the host got its bootstrap peer back) announces the provider records and puts the
    record now, although neither clock is due for minutes."""
    transport, load = running
    pub = publisher(transport, load, record_refresh=60, record_ttl=300, provider_refresh=600)
    await start(pub)
    assert len(rounds(transport.provided)) == 1
    assert len(transport.puts) == 1

    pub.reannounce()
    await until(transport, lambda: len(transport.puts) == 2)
    assert len(rounds(transport.provided)) == 2
    assert [key for _, key in transport.provided[3:]] == [service_key(), *(model_key(m) for m in MODELS)]

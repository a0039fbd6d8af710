"""What the libp2p transport guarantees beyond the conformance suite: its identity is the PeerIdentity's,
it refuses plaintext, its DHT speaks only ``/fabstir/kad/1.0.0`` and never answers from a stale local
copy, it redials a restarted peer at once, it keeps py-libp2p out of mock mode's imports — plus the
latencies of dial, stream, ping and DHT operations on a 5-node loopback network (printed)."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import multiaddr
import pytest
import trio
import trio.testing
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.config import RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from fabstir import ConfigurationError, PeerUnreachableError, TransportError
from fabstir.protocol import (
    CapabilityRecord,
    PeerIdentity,
    capability_key,
    encode_capability_record,
    model_key,
    service_key,
    verify_peer_signature,
)
from fabstir.transport import PeerEventKind, PeerInfo, Stream
from fabstir.transport._libp2p import KAD_PROTOCOL_ID, Libp2pTransport
from fabstir.transport._libp2p._dht import admit_servers_only, provider_key
from fabstir.transport._libp2p._host import key_pair_from_identity
from fabstir.transport._libp2p._thread import TrioThread

from .conformance import PeerEvents, echo, info, read_all

ECHO = "/fabstir/test/echo/1.0.0"
#: Safety bound on each test (they take well under a second); only turns a hang into a failure.
LIMIT = 15.0


@asynccontextmanager
async def network(count: int, **options: Any) -> AsyncIterator[list[Libp2pTransport]]:
    """``count`` started nodes sharing one DHT through an extra node that bootstraps from them all
    (so they are not connected to each other); all closed on exit."""
    made = [Libp2pTransport(PeerIdentity(), **options) for _ in range(count)]
    nodes = list(made)
    try:
        for node in nodes:
            await node.start()
        hub = Libp2pTransport(PeerIdentity(), bootstrap=[info(node) for node in nodes], **options)
        made.append(hub)
        await hub.start()
        yield nodes
    finally:
        await asyncio.gather(*(node.aclose() for node in made))


def record(transport: Libp2pTransport, *, seq: int, expires: float) -> bytes:
    return encode_capability_record(
        CapabilityRecord(
            peer_id=transport.peer_id,
            addrs=transport.listen_addrs,
            models=("m",),
            prices=MappingProxyType({"m": MappingProxyType({"ETH": 1})}),
            max_tokens=16,
            max_concurrent_jobs=1,
            current_load=seq,
            payment_address="0x" + "22" * 20,
            chain_id=31337,
            protocol_versions=("1.0",),
            seq=seq,
            expires=expires,
        ),
        transport.sign,
    )


# identity and configuration ---------------------------------------------------------------------------


def test_key_pair_has_the_identity_peer_id() -> None:
    """The libp2p key pair built from a PeerIdentity's seed has the same peer id, and libp2p's signature
    verifies with fabstir's verifier: one key, two libraries."""
    identity = PeerIdentity()
    key_pair = key_pair_from_identity(identity)
    assert ID.from_pubkey(key_pair.public_key).to_base58() == identity.peer_id
    assert verify_peer_signature(identity.peer_id, b"data", key_pair.private_key.sign(b"data"))


async def test_identity_addresses_and_signatures() -> None:
    """The node's peer id is its identity's, its addresses end in /p2p/<peer id>, a peer sees that id on
    the streams it accepts, and sign() verifies from the peer id alone."""
    identity = PeerIdentity()
    async with network(1) as (other,), Libp2pTransport(identity) as node, asyncio.timeout(LIMIT):
        assert node.peer_id == identity.peer_id
        assert node.listen_addrs
        assert all(addr.endswith(f"/p2p/{identity.peer_id}") for addr in node.listen_addrs)
        assert verify_peer_signature(node.peer_id, b"payload", node.sign(b"payload"))
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handler(stream: Stream) -> None:
            seen.set_result(stream.remote_peer)
            await stream.close()

        other.set_stream_handler(ECHO, handler)
        await node.open_stream(info(other), ECHO)
        assert await seen == identity.peer_id


@pytest.mark.parametrize(
    "options",
    [
        {"ping_interval": 0.0},
        {"ping_timeout": -1.0},
        {"dial_timeout": float("nan")},
        {"stream_timeout": float("inf")},
        {"dht_mode": "both"},
        {"listen_addrs": ()},
        {"listen_addrs": ("not a multiaddr",)},
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any]) -> None:
    """Non-positive or non-finite timeouts, an unknown DHT mode and missing or malformed listen
    addresses raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        Libp2pTransport(PeerIdentity(), **options)


def trio_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("fabstir-libp2p-")]


async def test_address_in_use_fails_start_and_lifecycle_is_enforced() -> None:
    """Listening on a port already taken raises TransportError from start(); a node that is not running
    (never started, or closed) refuses work with TransportError and cannot be restarted; a closed or
    failed node leaves no trio thread behind."""
    before = trio_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Libp2pTransport(PeerIdentity(), listen_addrs=(f"/ip4/127.0.0.1/tcp/{port}",))
        async with asyncio.timeout(LIMIT):
            with pytest.raises(TransportError, match="cannot listen"):
                await node.start()
            await node.aclose()
    fresh = Libp2pTransport(PeerIdentity())
    with pytest.raises(TransportError):
        await fresh.open_stream(PeerInfo(PeerIdentity().peer_id), ECHO)
    async with asyncio.timeout(LIMIT):
        await fresh.start()
        assert len(trio_threads()) == len(before) + 1
        await fresh.aclose()
        with pytest.raises(TransportError):
            await fresh.start()
        with pytest.raises(TransportError):
            await fresh.provide(service_key())
    assert trio_threads() == before


def test_importing_the_transport_package_does_not_load_libp2p() -> None:
    """Mock mode stays light: importing fabstir and fabstir.transport loads neither py-libp2p nor trio;
    asking for Libp2pTransport does."""
    code = (
        "import sys, fabstir, fabstir.transport as t\n"
        "assert 'libp2p' not in sys.modules and 'trio' not in sys.modules, 'loaded eagerly'\n"
        "assert t.Libp2pTransport.__name__ == 'Libp2pTransport'\n"
        "assert 'libp2p' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# security and dialling ---------------------------------------------------------------------------------


@dataclass
class PlaintextHost:
    bridge: TrioThread
    host: IHost
    info: PeerInfo

    async def dial(self, target: PeerInfo) -> None:
        """Dials ``target`` from the plaintext host; raises what py-libp2p raises."""
        addrs = [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in target.addrs]
        peer = Libp2pPeerInfo(ID.from_base58(target.peer_id), addrs)

        async def connect() -> None:
            with trio.fail_after(5):
                await self.host.connect(peer)

        await self.bridge.call(connect)


@asynccontextmanager
async def plaintext_host() -> AsyncIterator[PlaintextHost]:
    """A py-libp2p host that only speaks the plaintext security protocol, in its own trio thread."""
    bridge = TrioThread("plaintext-host")
    made: dict[str, Any] = {}

    async def main(task_status: Any) -> None:
        key_pair = key_pair_from_identity(PeerIdentity())
        host = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        )
        setattr(host.get_network(), "retry_config", RetryConfig(max_retries=0))  # fail fast  # noqa: B010
        made["stop"] = stop = trio.Event()
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            made["host"] = host
            made["info"] = PeerInfo(str(host.get_id()), tuple(str(a) for a in host.get_addrs()))
            task_status.started()
            await stop.wait()

    await bridge.start(main)
    try:
        yield PlaintextHost(bridge, made["host"], made["info"])
    finally:
        bridge.call_soon(made["stop"].set)
        await bridge.wait_finished()


async def test_plaintext_peers_are_refused_both_ways() -> None:
    """A peer offering only plaintext can neither be dialled (PeerUnreachableError) nor dial in: the
    node speaks noise only, and no connection ever appears."""
    async with network(1) as (node,), plaintext_host() as plain, asyncio.timeout(LIMIT):
        events = PeerEvents()
        node.add_peer_listener(events)
        with pytest.raises(PeerUnreachableError):
            await node.connect(plain.info)
        with pytest.raises(SwarmException):
            await plain.dial(info(node))
        assert all(event.peer_id != plain.info.peer_id for event in events.events)
        assert plain.info.peer_id not in node.connected_peers()


async def test_dead_port_is_unreachable_and_a_restarted_peer_is_redialled() -> None:
    """A refused dial raises PeerUnreachableError; when the peer comes back with the same identity at a
    new port, the next dial succeeds at once (libp2p would otherwise block it for 60 s)."""
    identity = PeerIdentity()
    async with network(1) as (node,), asyncio.timeout(LIMIT):
        events = PeerEvents()
        node.add_peer_listener(events)
        first = Libp2pTransport(identity)
        await first.start()
        await node.connect(info(first))
        await first.aclose()
        await events.wait_for(PeerEventKind.DISCONNECTED, identity.peer_id)
        with pytest.raises(PeerUnreachableError):
            await node.connect(info(first))
        async with Libp2pTransport(identity) as again:
            again.set_stream_handler(ECHO, echo)
            stream = await node.open_stream(info(again), ECHO)
            await stream.write(b"back")
            await stream.close()
            assert await read_all(stream) == b"back"


async def test_a_peer_without_addresses_is_found_through_the_dht() -> None:
    """open_stream with only a peer id works when the DHT knows where that peer listens."""
    async with network(2) as (a, b), asyncio.timeout(LIMIT):
        b.set_stream_handler(ECHO, echo)
        stream = await a.open_stream(PeerInfo(b.peer_id), ECHO)
        await stream.write(b"found you")
        await stream.close()
        assert await read_all(stream) == b"found you"


async def test_a_cancelled_read_loses_no_data() -> None:
    """Cancelling a pending read (a caller's timeout) neither breaks the stream nor drops the bytes that
    arrive afterwards."""
    async with network(2) as (a, b), asyncio.timeout(LIMIT):
        go = asyncio.Event()

        async def late_writer(stream: Stream) -> None:
            await go.wait()
            await stream.write(b"late but whole")
            await stream.close()

        b.set_stream_handler(ECHO, late_writer)
        stream = await a.open_stream(info(b), ECHO)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.read(), 0.05)
        go.set()
        assert await read_all(stream) == b"late but whole"


# the private DHT ---------------------------------------------------------------------------------------


async def test_only_the_private_kad_protocol_is_served() -> None:
    """A server-mode node answers /fabstir/kad/1.0.0 and not the public /ipfs/kad/1.0.0; a client-mode
    node answers neither (it queries without serving)."""
    async with network(2) as (server, asker), asyncio.timeout(LIMIT):
        client = Libp2pTransport(PeerIdentity(), dht_mode="client")
        async with client:
            kad = await asker.open_stream(info(server), KAD_PROTOCOL_ID)
            await kad.reset()
            for target, protocol in [
                (server, "/ipfs/kad/1.0.0"),
                (client, KAD_PROTOCOL_ID),
                (client, "/ipfs/kad/1.0.0"),
            ]:
                with pytest.raises(TransportError) as caught:
                    await asker.open_stream(info(target), protocol)
                assert not isinstance(caught.value, PeerUnreachableError)


def test_queriers_enter_the_routing_table_only_through_the_server_check() -> None:
    """A peer that sent us a query is admitted through the routing table's server-mode check, and only
    once identify has told us its protocols (or after a bound); other admissions are unchanged."""
    admitted: list[tuple[str, bool, float]] = []
    protocols: dict[str, list[str]] = {}

    class FakeDHT:
        async def add_peer(self, peer_id: str, *, skip_server_mode_check: bool = False) -> bool:
            admitted.append((peer_id, skip_server_mode_check, trio.current_time()))
            return True

    class FakePeerstore:
        def get_protocols(self, peer_id: str) -> list[str]:
            return protocols[peer_id]  # KeyError for an unknown peer, as libp2p raises

    class FakeHost:
        def get_peerstore(self) -> FakePeerstore:
            return FakePeerstore()

    async def main() -> None:
        dht = FakeDHT()
        async with trio.open_nursery() as nursery:
            admit_servers_only(cast(KadDHT, dht), cast(IHost, FakeHost()), nursery.start_soon)
            assert await dht.add_peer("bootstrap")
            assert await dht.add_peer("querier", skip_server_mode_check=True)
            assert await dht.add_peer("silent", skip_server_mode_check=True)
            await trio.sleep(0.5)
            protocols["querier"] = [KAD_PROTOCOL_ID]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(peer, skipped) for peer, skipped, _ in admitted] == [
        ("bootstrap", False),
        ("querier", False),
        ("silent", False),
    ]
    assert 0.5 <= admitted[1][2] < 1.0  # right after identify
    assert admitted[2][2] >= 2.0  # the bound: identify never answered


def test_provider_keys_are_multihashes() -> None:
    """Providers are announced under the multihash of a CIDv1 key (as js-libp2p does); other keys are
    used as they are."""
    key = service_key()
    assert provider_key(key) == key[2:]
    assert provider_key(key)[:2] == b"\x12\x20"
    assert provider_key(b"plain-key") == b"plain-key"


async def test_new_providers_are_found_after_a_cached_lookup() -> None:
    """A node that already found providers for a key (and cached them) still finds a provider that
    appears later: lookups ask the network, not only the local cache."""
    async with network(3) as (a, b, c), asyncio.timeout(LIMIT):
        key = model_key(f"late-{os.urandom(4).hex()}")
        await a.provide(key)
        assert [p.peer_id for p in await c.find_providers(key, 10)] == [a.peer_id]
        await b.provide(key)
        assert sorted(p.peer_id for p in await c.find_providers(key, 10)) == sorted([a.peer_id, b.peer_id])


async def test_provide_says_whether_another_node_stored_the_record() -> None:
    """A node with no DHT peer keeps its provider record to itself and provide answers False (the host's
    publisher then retries soon); a node in a DHT answers True, and others find it."""
    key = model_key(f"reach-{os.urandom(4).hex()}")
    alone = Libp2pTransport(PeerIdentity())
    try:
        async with asyncio.timeout(LIMIT):
            await alone.start()
            assert await alone.provide(key) is False
    finally:
        await alone.aclose()
    async with network(2) as (a, b), asyncio.timeout(LIMIT):
        assert await a.provide(key) is True
        assert [p.peer_id for p in await b.find_providers(key, 5)] == [a.peer_id]


async def test_an_updated_record_replaces_a_cached_one() -> None:
    """A reader that fetched a host's record gets the host's newer record (higher seq) afterwards, not
    its cached copy."""
    async with network(3) as (host, _, reader), asyncio.timeout(LIMIT):
        key = capability_key(host.peer_id)
        first, second = (record(host, seq=s, expires=time.time() + 600) for s in (1, 2))
        await host.put_value(key, first)
        assert await reader.get_value(key) == first
        await host.put_value(key, second)
        assert await reader.get_value(key) == second


async def test_an_expired_record_is_not_returned() -> None:
    """Once a record's expiry has passed (on the DHT's clock), readers get None, even those holding a
    cached copy; a fresh record put later is served again."""
    now = [time.time()]

    def clock() -> float:
        return now[0]

    async with network(2, clock=clock) as (host, reader), asyncio.timeout(LIMIT):
        key = capability_key(host.peer_id)
        await host.put_value(key, record(host, seq=1, expires=now[0] + 60))
        assert await reader.get_value(key) is not None
        now[0] += 120
        assert await reader.get_value(key) is None
        fresh = record(host, seq=2, expires=now[0] + 60)
        await host.put_value(key, fresh)
        assert await reader.get_value(key) == fresh


# measurements ------------------------------------------------------------------------------------------


async def test_latencies_on_a_five_node_network() -> None:
    """On 5 loopback nodes: dial, stream open, ping and stream RTT, bulk transfer, provide / find / put /
    get all work (every provider found, the record read back); their timings are printed."""
    async with network(5) as nodes, asyncio.timeout(LIMIT * 2):
        a, b = nodes[0], nodes[1]
        b.set_stream_handler(ECHO, echo)

        async def pong(stream: Stream) -> None:
            while data := await stream.read():
                await stream.write(data)

        b.set_stream_handler("/fabstir/test/pong/1.0.0", pong)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        await a.connect(info(b))
        timings["dial"] = time.perf_counter() - started
        started = time.perf_counter()
        stream = await a.open_stream(info(b), "/fabstir/test/pong/1.0.0")
        timings["open stream"] = time.perf_counter() - started
        timings["ping (p50)"] = statistics.median([await a.ping(info(b)) for _ in range(20)])
        rtts = []
        for _ in range(200):
            started = time.perf_counter()
            await stream.write(b"x")
            assert await stream.read() == b"x"
            rtts.append(time.perf_counter() - started)
        timings["stream RTT (p50)"] = statistics.median(rtts)
        await stream.close()

        payload = os.urandom(8 * 1024 * 1024)
        started = time.perf_counter()
        bulk = await a.open_stream(info(b), ECHO)
        await bulk.write(payload)
        await bulk.close()
        assert await read_all(bulk) == payload
        bulk_rate = 2 * len(payload) / (time.perf_counter() - started) / 1e6

        key = model_key(f"perf-{os.urandom(4).hex()}")
        started = time.perf_counter()
        for node in nodes[:3]:
            await node.provide(key)
        timings["provide (mean of 3)"] = (time.perf_counter() - started) / 3
        started = time.perf_counter()
        found = await nodes[4].find_providers(key, 10)
        timings["find_providers (cold)"] = time.perf_counter() - started
        assert sorted(p.peer_id for p in found) == sorted(n.peer_id for n in nodes[:3])

        value = record(a, seq=1, expires=time.time() + 600)
        started = time.perf_counter()
        await a.put_value(capability_key(a.peer_id), value)
        timings["put_value"] = time.perf_counter() - started
        started = time.perf_counter()
        assert await nodes[3].get_value(capability_key(a.peer_id)) == value
        timings["get_value"] = time.perf_counter() - started
    report = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in timings.items())
    print(f"\n5 nodes, one process: {report}; bulk {bulk_rate:.1f} MB/s (8 MiB there and back)")


async def test_idle_connections_are_closed_busy_and_bootstrap_ones_kept() -> None:
    """With idle_connection_timeout a node closes a connection that carried no stream for that long,
    keeps one with an open stream however long it lasts, never closes its bootstrap peers' — and a
    closed connection is dialled again when needed. Without the option nothing is closed."""
    timeout = 0.4
    async with (
        Libp2pTransport(PeerIdentity()) as boot,
        Libp2pTransport(PeerIdentity()) as idle,
        Libp2pTransport(PeerIdentity()) as busy,
        Libp2pTransport(PeerIdentity()) as untrimmed,
        Libp2pTransport(PeerIdentity(), bootstrap=[info(boot)], idle_connection_timeout=timeout) as node,
        asyncio.timeout(LIMIT),
    ):
        node.set_stream_handler(ECHO, echo)
        events = PeerEvents()
        node.add_peer_listener(events)
        await idle.connect(info(node))
        long_stream = await busy.open_stream(info(node), ECHO)
        await untrimmed.connect(info(idle))  # idle runs without the option: it never closes it
        await events.wait_for(PeerEventKind.DISCONNECTED, idle.peer_id)
        await asyncio.sleep(3 * timeout)  # several more sweeps
        assert busy.peer_id in node.connected_peers()
        assert boot.peer_id in node.connected_peers()
        assert idle.peer_id not in node.connected_peers()
        assert untrimmed.peer_id in idle.connected_peers()
        await long_stream.write(b"still here")
        await long_stream.close()
        assert await read_all(long_stream) == b"still here"
        again = await idle.open_stream(info(node), ECHO)  # redialled
        await again.write(b"back")
        await again.close()
        assert await read_all(again) == b"back"


def test_idle_connection_timeout_must_be_positive() -> None:
    """A zero, negative or infinite idle timeout is a ConfigurationError naming the option."""
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="idle_connection_timeout"):
            Libp2pTransport(PeerIdentity(), idle_connection_timeout=bad)

"""The libp2p transport passes the transport conformance suite: real TCP on loopback, noise, yamux and
Kademlia on ``/fabstir/kad/1.0.0``, each node with its own trio thread, all in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fabstir.protocol import PeerIdentity
from fabstir.transport import Transport
from fabstir.transport._libp2p import Libp2pTransport

from .conformance import TransportConformance, TransportFactory, info


class TestLibp2pConformance(TransportConformance):
    #: yamux grows a stream's receive window up to 16 MiB while the reader keeps up (our read-ahead
    #: pump does), so an unread stream can absorb that much plus socket buffers before the writer blocks.
    backpressure_bytes = 32 * 1024 * 1024

    @pytest.fixture
    async def transport_factory(self) -> AsyncIterator[TransportFactory]:
        made: list[Transport] = []

        async def make(count: int) -> list[Transport]:
            # The nodes share one DHT through an extra bootstrap node that dials them, so that they are
            # not connected to each other (the suite checks the events of their first connection).
            new: list[Transport] = []
            for _ in range(count):
                node = Libp2pTransport(PeerIdentity())
                made.append(node)
                await node.start()
                new.append(node)
            hub = Libp2pTransport(PeerIdentity(), bootstrap=[info(node) for node in new])
            made.append(hub)
            await hub.start()
            return new

        yield make
        await asyncio.gather(*(transport.aclose() for transport in made))  # ~0.2 s each: in parallel

"""A node listening on 0.0.0.0 tells its peers the address it announces, not the wildcard: the DHT's
provider records carry the announced address, and a client reaches the node through it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from fabstir import ConfigurationError
from fabstir.protocol import PeerIdentity, service_key
from fabstir.transport import PeerInfo
from fabstir.transport._libp2p import Libp2pTransport

LIMIT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_providers_carry_the_announced_address_and_it_is_dialable() -> None:
    """With listen 0.0.0.0:P and announce 127.0.0.1:P, listen_addrs and the provider record found by a
    cold client both hold only 127.0.0.1:P, and the client can ping the node there."""
    port = _free_port()
    announced = f"/ip4/127.0.0.1/tcp/{port}"
    async with asyncio.timeout(LIMIT):
        boot = Libp2pTransport(PeerIdentity())
        await boot.start()
        try:
            boot_peer = PeerInfo(boot.peer_id, boot.listen_addrs)
            node = Libp2pTransport(
                PeerIdentity(),
                listen_addrs=[f"/ip4/0.0.0.0/tcp/{port}"],
                announce_addrs=[announced],
                bootstrap=[boot_peer],
            )
            await node.start()
            try:
                assert [a.split("/p2p/")[0] for a in node.listen_addrs] == [announced]
                await node.provide(service_key())
                client = Libp2pTransport(PeerIdentity(), dht_mode="client", bootstrap=[boot_peer])
                await client.start()
                try:
                    found = await client.find_providers(service_key(), 5)
                    assert [p.peer_id for p in found] == [node.peer_id]
                    assert {a.split("/p2p/")[0] for a in found[0].addrs} == {announced}
                    assert await client.ping(found[0]) > 0
                finally:
                    await client.aclose()
            finally:
                await node.aclose()
        finally:
            await boot.aclose()


def test_a_bad_announce_address_is_a_configuration_error() -> None:
    """An announce address that is not a multiaddr is refused at construction, naming the address."""
    with pytest.raises(ConfigurationError, match="invalid announce address 'nope'"):
        Libp2pTransport(PeerIdentity(), announce_addrs=["nope"])

"""A libp2p peer in its own process, for the cross-process tests of the libp2p transport.

Run as ``python tests/transport/_libp2p_peer.py MODE``; it prints one JSON line with its ``peer_id`` and
``addrs`` once it listens, then serves until its stdin closes (or it is killed). Modes:

* ``serve``: a :class:`~fabstir.transport.Libp2pTransport` (DHT server) with the test protocols below;
* ``stock-dht``: a bare py-libp2p host whose Kademlia speaks the public ``/ipfs/kad/1.0.0`` (this process
  never switches to the private protocol id) and provides :data:`STOCK_KEY`.

Protocols of ``serve``:

* :data:`ECHO`: reads to EOF, writes it back, closes;
* :data:`HOLD`: writes ``b"ready"`` then keeps the stream open without writing (to kill or freeze the
  process mid-stream);
* :data:`FRAMES`: reads ``b"<count> <size> <batch>\\n"`` then writes ``count`` length-prefixed frames of
  ``size`` bytes, ``batch`` frames per write, and closes.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from pathlib import Path

STOCK_KEY = b"fabstir-test-stock-dht-key"
ECHO = "/fabstir/test/echo/1.0.0"
HOLD = "/fabstir/test/hold/1.0.0"
FRAMES = "/fabstir/test/frames/1.0.0"


async def serve() -> None:
    from fabstir.protocol import PeerIdentity
    from fabstir.transport import Stream
    from fabstir.transport._libp2p import Libp2pTransport

    async def echo(stream: Stream) -> None:
        data = bytearray()
        while chunk := await stream.read():
            data += chunk
        await stream.write(bytes(data))
        await stream.close()

    async def hold(stream: Stream) -> None:
        await stream.write(b"ready")
        await asyncio.Event().wait()

    async def frames(stream: Stream) -> None:
        request = bytearray()
        while not request.endswith(b"\n"):
            request += await stream.read(64)
        count, size, batch = (int(part) for part in request.split())
        frame = struct.pack(">I", size) + b"t" * size
        for start in range(0, count, batch):
            await stream.write(frame * min(batch, count - start))
        await stream.close()

    async with Libp2pTransport(PeerIdentity()) as transport:
        transport.set_stream_handler(ECHO, echo)
        transport.set_stream_handler(HOLD, hold)
        transport.set_stream_handler(FRAMES, frames)
        announce(transport.peer_id, list(transport.listen_addrs))
        await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin


def stock_dht() -> None:
    import multiaddr
    import trio
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    from fabstir.protocol import PeerIdentity
    from fabstir.transport._libp2p._host import HostSettings, build_host, quiet_libp2p_logging

    async def main() -> None:
        quiet_libp2p_logging()
        host = build_host(PeerIdentity(), ["/ip4/127.0.0.1/tcp/0"], HostSettings(5.0, 10.0, 2.0, 2.0))
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            dht = KadDHT(host, DHTMode.SERVER)
            async with background_trio_service(dht):
                await dht.provider_store.provide(STOCK_KEY)
                announce(str(host.get_id()), [str(addr) for addr in host.get_addrs()])
                await trio.to_thread.run_sync(sys.stdin.read)

    trio.run(main)


def announce(peer_id: str, addrs: list[str]) -> None:
    print(json.dumps({"peer_id": peer_id, "addrs": addrs}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if mode == "serve":
        asyncio.run(serve())
    elif mode == "stock-dht":
        stock_dht()
    else:
        raise SystemExit(f"unknown mode {mode!r}")

"""A bootstrap peer: a libp2p node that serves the DHT and nothing else, for others to start from.

Run by ``fabstir bootstrap`` (operators keep one or more on stable addresses) and by the devnet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..host._service import load_identity
from ..transport import dialable_addrs, parse_peer_addr

__all__ = ["BootstrapPeer"]


class BootstrapPeer:
    """``async with BootstrapPeer(listen_addrs=[...], identity_path=...) as peer:`` — ``peer.addrs()``
    are the multiaddrs (with ``/p2p/<id>``) to give hosts and clients as bootstrap nodes."""

    def __init__(
        self,
        *,
        listen_addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        announce_addrs: Sequence[str] = (),
        identity_path: Path | None = None,
        bootstrap: Sequence[str] = (),
    ) -> None:
        self._identity = load_identity(identity_path)
        self._listen = tuple(listen_addrs)
        self._announce = tuple(announce_addrs)
        self._bootstrap = [parse_peer_addr(a) for a in bootstrap]
        self._transport: Any = None

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    async def start(self) -> None:
        from ..transport._libp2p import Libp2pTransport

        transport = Libp2pTransport(
            self._identity,
            listen_addrs=self._listen,
            announce_addrs=self._announce,
            bootstrap=self._bootstrap,
            dht_mode="server",
            # every peer of the network connects here: a slow ping pace keeps the CPU cost per peer low
            ping_interval=10.0,
            ping_timeout=5.0,
            # and it keeps only the connections in use (the DHT redials; peers keep their own to it)
            idle_connection_timeout=60.0,
        )
        await transport.start()
        self._transport = transport

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    async def __aenter__(self) -> BootstrapPeer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def addrs(self) -> list[str]:
        return dialable_addrs(self._transport, self.peer_id)

    def connected_peers(self) -> int:
        return len(self._transport.connected_peers()) if self._transport is not None else 0

    def describe(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "addrs": self.addrs(), "pid": os.getpid()}

"""The transport seam: how the core reaches peers, whatever carries the bytes.

Two implementations pass the same conformance suite (``tests/transport/conformance.py``):
:class:`~fabstir.transport.InMemoryNetwork` (mock mode, unit tests) and the libp2p facade (production).
Everything here is asyncio; implementations map their own exceptions to :class:`fabstir.TransportError`
(or :class:`fabstir.PeerUnreachableError`) and never let them escape. Methods take no ``timeout=``: the
caller bounds them (``asyncio.timeout``), except where the implementation must bound a dial itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["PeerEvent", "PeerEventKind", "PeerInfo", "Stream", "StreamHandler", "Transport"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer and the multiaddrs it can be dialled at (may be empty if the transport knows it already)."""

    peer_id: str
    addrs: tuple[str, ...] = ()


class PeerEventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    kind: PeerEventKind
    peer_id: str


@runtime_checkable
class Stream(Protocol):
    """A bidirectional byte stream to one peer, for one protocol.

    * ``read`` returns whatever is available (at most ``max_bytes``, at least 1 byte) and ``b""`` once the
      peer closed its side cleanly; it raises :class:`fabstir.TransportError` if the stream was reset or
      the connection died.
    * ``write`` may block while the peer is not reading (backpressure); it raises
      :class:`fabstir.TransportError` if the stream is reset or closed.
    * ``close`` ends our side cleanly (the peer reads EOF after the data already written); idempotent.
    * ``reset`` aborts both directions at once; the peer's pending and later calls raise; idempotent.
    """

    @property
    def remote_peer(self) -> str: ...

    @property
    def protocol_id(self) -> str: ...

    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


StreamHandler = Callable[[Stream], Awaitable[None]]


@runtime_checkable
class Transport(Protocol):
    """A node on the network: identity, streams, peer liveness, and DHT routing (provide / find / put / get).

    ``start`` then ``aclose`` (idempotent; also ``async with``). DHT values are validated by the network
    with :func:`fabstir.protocol.validate_capability_record` for keys under ``/fcap/``; ``get_value``
    returns the best valid value (highest ``seq``) or ``None``.
    """

    @property
    def peer_id(self) -> str: ...

    @property
    def listen_addrs(self) -> tuple[str, ...]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None: ...

    def add_peer_listener(self, listener: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """Calls ``listener`` on peer connect/disconnect; returns a function that removes it."""
        ...

    async def connect(self, peer: PeerInfo) -> None: ...

    async def open_stream(self, peer: PeerInfo, protocol_id: str) -> Stream: ...

    async def ping(self, peer: PeerInfo) -> float:
        """Round-trip time in seconds; raises :class:`fabstir.TransportError` if the peer is not alive."""
        ...

    def connected_peers(self) -> tuple[str, ...]: ...

    def sign(self, data: bytes) -> bytes:
        """Signs with this node's peer key (verifiable from the peer id alone)."""
        ...

    async def provide(self, key: bytes) -> bool:
        """Announces this node as a provider of ``key``; ``True`` if another DHT node stored the record
        (``False``: only this node knows, e.g. no DHT peer yet — try again later)."""
        ...

    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        """At most ``count`` distinct providers (de-duplicated by peer id)."""
        ...

    async def put_value(self, key: bytes, value: bytes) -> None: ...

    async def get_value(self, key: bytes) -> bytes | None: ...

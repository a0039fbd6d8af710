"""The in-memory transport: the transport seam of mock mode and of unit tests.

Nodes of one :class:`InMemoryNetwork` live on one asyncio loop. Streams carry real bytes through bounded
pipes and behave like libp2p's where it matters: a read returns whatever is buffered, a write blocks
while the peer's window is full, a clean close is an EOF, a reset (or a vanished peer) is an error on
both sides. The DHT behaves like a converged Kademlia: provider records outlive dead peers (libp2p keeps
them 48 h), so clients must check liveness; capability records are validated on put and on get.
Faults for tests and mock mode: :meth:`InMemoryNetwork.kill`, :meth:`~InMemoryNetwork.freeze`,
:meth:`~InMemoryNetwork.partition`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from .._exceptions import PeerUnreachableError, RemoteProtocolError, TransportError
from ..protocol import PeerIdentity, select_capability_record, validate_capability_record
from ..protocol._records import CAPABILITY_NAMESPACE
from ._base import PeerEvent, PeerEventKind, PeerInfo, StreamHandler

__all__ = ["InMemoryNetwork", "InMemoryStream", "InMemoryTransport"]

_log = logging.getLogger("fabstir.transport")
_CAP_PREFIX = f"/{CAPABILITY_NAMESPACE}/".encode()


class _Pipe:
    """One direction of a stream: bytes in flight (with delivery times), EOF and reset flags."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.eof = False
        self.reset = False
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float | None = None) -> None:
        event = self._changed
        if timeout is None:
            await event.wait()
            return
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass


class InMemoryStream:
    """Implements :class:`~fabstir.transport.Stream`."""

    def __init__(
        self,
        network: InMemoryNetwork,
        local: str,
        remote: str,
        protocol_id: str,
        incoming: _Pipe,
        outgoing: _Pipe,
    ) -> None:
        self._network = network
        self._local = local
        self._remote = remote
        self._protocol_id = protocol_id
        self._in = incoming
        self._out = outgoing
        self._write_closed = False

    @property
    def remote_peer(self) -> str:
        return self._remote

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    def _frozen(self) -> bool:
        return self._network.is_frozen(self._local) or self._network.is_frozen(self._remote)

    async def read(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        while True:
            if self._in.reset:
                raise TransportError("stream reset", node_id=self._remote)
            now = time.monotonic()
            if self._in.chunks and not self._frozen():
                due, _ = self._in.chunks[0]
                if due <= now:
                    return self._take(max_bytes, now)
                await self._in.changed(due - now)
                continue
            if self._in.eof and not self._in.chunks:
                return b""
            await self._in.changed()

    def _take(self, max_bytes: int, now: float) -> bytes:
        out = bytearray()
        while self._in.chunks and len(out) < max_bytes:
            due, chunk = self._in.chunks[0]
            if due > now:
                break
            room = max_bytes - len(out)
            if len(chunk) <= room:
                self._in.chunks.popleft()
                out += chunk
            else:
                out += chunk[:room]
                self._in.chunks[0] = (due, chunk[room:])
        self._in.buffered -= len(out)
        self._in.notify()  # a blocked writer may continue
        return bytes(out)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._out.reset:
                raise TransportError("stream reset", node_id=self._remote)
            if self._write_closed:
                raise TransportError("stream closed for writing", node_id=self._remote)
            room = self._out.window - self._out.buffered
            if room <= 0:
                await self._out.changed()
                continue
            piece = bytes(view[:room])
            view = view[room:]
            self._out.chunks.append((time.monotonic() + self._network.latency, piece))
            self._out.buffered += len(piece)
            self._out.notify()

    async def close(self) -> None:
        if not self._write_closed:
            self._write_closed = True
            self._out.eof = True
            self._out.notify()

    async def reset(self) -> None:
        for pipe in (self._in, self._out):
            if not pipe.reset:
                pipe.reset = True
                pipe.chunks.clear()
                pipe.buffered = 0
                pipe.notify()

    @property
    def is_reset(self) -> bool:
        return self._in.reset


class InMemoryNetwork:
    """A network of in-memory nodes, with a shared DHT and fault injection."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, latency: float = 0.0, window: int = 256 * 1024
    ) -> None:
        if latency < 0 or window < 1:
            raise ValueError("latency must be >= 0 and window >= 1")
        self.clock = clock
        self.latency = latency
        self.window = window
        self._counter = itertools.count(1)
        self._nodes: dict[str, InMemoryTransport] = {}
        self._killed: set[str] = set()
        self._frozen: set[str] = set()
        self._thawed = asyncio.Event()
        self._partitions: set[frozenset[str]] = set()
        self._providers: dict[bytes, dict[str, PeerInfo]] = {}
        self._values: dict[bytes, list[bytes]] = {}
        self._pipes: list[tuple[str, str, _Pipe]] = []  # (writer, reader, pipe)

    def create_transport(self, identity: PeerIdentity | None = None) -> InMemoryTransport:
        return InMemoryTransport(self, identity or PeerIdentity(), next(self._counter))

    # faults ------------------------------------------------------------------------------------------
    def kill(self, peer_id: str) -> None:
        """The peer vanishes (like SIGKILL): its streams reset, dials fail; its DHT provider records stay."""
        self._killed.add(peer_id)
        node = self._nodes.pop(peer_id, None)
        self._reset_streams_of(peer_id)
        if node is not None:
            node._vanish()

    def freeze(self, peer_id: str) -> None:
        """The peer stops (like SIGSTOP): nothing it sends or is sent arrives, pings hang, until unfreeze."""
        self._frozen.add(peer_id)

    def unfreeze(self, peer_id: str) -> None:
        self._frozen.discard(peer_id)
        for _, _, pipe in self._pipes:
            pipe.notify()
        self._thawed.set()
        self._thawed = asyncio.Event()

    async def wait_unfrozen(self) -> None:
        """Returns at the next :meth:`unfreeze` of any peer."""
        await self._thawed.wait()

    def partition(self, a: str, b: str) -> None:
        """``a`` and ``b`` can no longer dial each other (existing streams are reset)."""
        self._partitions.add(frozenset((a, b)))
        for writer, reader, pipe in self._pipes:
            if frozenset((writer, reader)) == frozenset((a, b)):
                pipe.reset = True
                pipe.notify()

    def heal(self, a: str, b: str) -> None:
        self._partitions.discard(frozenset((a, b)))

    def is_frozen(self, peer_id: str) -> bool:
        return peer_id in self._frozen

    def inject_raw_value(self, key: bytes, value: bytes) -> None:
        """Plants a DHT value without validation (to test that readers validate)."""
        self._values.setdefault(key, []).append(value)

    # internals ---------------------------------------------------------------------------------------
    def _reachable(self, source: str, target: str) -> InMemoryTransport:
        node = self._nodes.get(target)
        if node is None or target in self._killed or frozenset((source, target)) in self._partitions:
            raise PeerUnreachableError(f"cannot reach peer {target}", node_id=target)
        return node

    def _new_pipe(self, writer: str, reader: str) -> _Pipe:
        pipe = _Pipe(self.window)
        self._pipes.append((writer, reader, pipe))
        return pipe

    def _reset_streams_of(self, peer_id: str) -> None:
        survivors = []
        for writer, reader, pipe in self._pipes:
            if peer_id in (writer, reader):
                pipe.reset = True
                pipe.chunks.clear()
                pipe.buffered = 0
                pipe.notify()
            elif not pipe.reset and not (pipe.eof and not pipe.chunks):
                survivors.append((writer, reader, pipe))
        self._pipes = survivors

    def _gc_pipes(self) -> None:
        if len(self._pipes) > 1024:
            self._pipes = [p for p in self._pipes if not p[2].reset and not (p[2].eof and not p[2].chunks)]

    def _put(self, key: bytes, value: bytes) -> None:
        if not key.startswith(_CAP_PREFIX):
            raise TransportError(f"record rejected: unknown namespace in key {key!r}")
        try:
            validate_capability_record(key, value, self.clock())
        except RemoteProtocolError as exc:
            raise TransportError(f"record rejected: {exc}") from exc
        stored = self._values.setdefault(key, [])
        stored.append(value)
        best = select_capability_record(key, stored, self.clock())
        self._values[key] = [stored[best]] if best is not None else []

    def _get(self, key: bytes) -> bytes | None:
        values = self._values.get(key, [])
        best = select_capability_record(key, values, self.clock())
        return values[best] if best is not None else None


class InMemoryTransport:
    """Implements :class:`~fabstir.transport.Transport` on an :class:`InMemoryNetwork`."""

    def __init__(self, network: InMemoryNetwork, identity: PeerIdentity, number: int) -> None:
        self._network = network
        self._identity = identity
        self._addr = f"/memory/{number}/p2p/{identity.peer_id}"
        self._handlers: dict[str, StreamHandler] = {}
        self._listeners: list[Callable[[PeerEvent], None]] = []
        self._connected: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: list[InMemoryStream] = []
        self._started = False
        self._closed = False

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return (self._addr,)

    async def start(self) -> None:
        if self._closed:
            raise TransportError("transport closed")
        if not self._started:
            self._started = True
            self._network._nodes[self.peer_id] = self

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._network._nodes.pop(self.peer_id, None)
        for providers in self._network._providers.values():
            providers.pop(self.peer_id, None)
        for stream in self._streams:
            await stream.reset()
        self._streams.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in list(self._connected):
            other = self._network._nodes.get(peer)
            if other is not None:
                other._peer_gone(self.peer_id)
        self._connected.clear()

    async def __aenter__(self) -> InMemoryTransport:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _vanish(self) -> None:
        """Killed: no goodbye, but the other side notices the connection drop (like a TCP reset)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self._connected):
            other = self._network._nodes.get(peer)
            if other is not None:
                other._peer_gone(self.peer_id)

    def _peer_gone(self, peer_id: str) -> None:
        if peer_id in self._connected:
            self._connected.discard(peer_id)
            self._notify(PeerEvent(PeerEventKind.DISCONNECTED, peer_id))

    def _notify(self, event: PeerEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("peer listener raised")

    def _require_started(self) -> None:
        if not self._started or self._closed:
            raise TransportError("the transport is not running")

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        self._handlers[protocol_id] = handler

    def add_peer_listener(self, listener: Callable[[PeerEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def connect(self, peer: PeerInfo) -> None:
        self._require_started()
        other = self._network._reachable(self.peer_id, peer.peer_id)
        if peer.peer_id not in self._connected:
            self._connected.add(peer.peer_id)
            self._notify(PeerEvent(PeerEventKind.CONNECTED, peer.peer_id))
        if self.peer_id not in other._connected:
            other._connected.add(self.peer_id)
            other._notify(PeerEvent(PeerEventKind.CONNECTED, self.peer_id))

    async def open_stream(self, peer: PeerInfo, protocol_id: str) -> InMemoryStream:
        self._require_started()
        other = self._network._reachable(self.peer_id, peer.peer_id)
        handler = other._handlers.get(protocol_id)
        if handler is None:
            raise TransportError(f"peer {peer.peer_id} does not support {protocol_id}", node_id=peer.peer_id)
        await self.connect(peer)
        if self._network.latency:
            await asyncio.sleep(2 * self._network.latency)  # protocol negotiation costs a round trip
        self._network._gc_pipes()
        to_them = self._network._new_pipe(self.peer_id, peer.peer_id)
        to_us = self._network._new_pipe(peer.peer_id, self.peer_id)
        ours = InMemoryStream(self._network, self.peer_id, peer.peer_id, protocol_id, to_us, to_them)
        theirs = InMemoryStream(self._network, peer.peer_id, self.peer_id, protocol_id, to_them, to_us)
        self._streams.append(ours)
        other._streams.append(theirs)
        other._spawn(handler, theirs)
        return ours

    def _spawn(self, handler: StreamHandler, stream: InMemoryStream) -> None:
        async def run() -> None:
            try:
                await handler(stream)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("stream handler for %s failed", stream.protocol_id)
                await stream.reset()

        task = asyncio.get_running_loop().create_task(
            run(), name=f"fabstir-memory-handler-{self.peer_id[-6:]}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._streams = [s for s in self._streams if not s.is_reset]

    async def ping(self, peer: PeerInfo) -> float:
        self._require_started()
        started = time.monotonic()
        self._network._reachable(self.peer_id, peer.peer_id)
        while self._network.is_frozen(peer.peer_id):  # a stopped peer never answers; the caller bounds it
            await self._network.wait_unfrozen()
        if self._network.latency:
            await asyncio.sleep(2 * self._network.latency)
        self._network._reachable(self.peer_id, peer.peer_id)
        return time.monotonic() - started

    def connected_peers(self) -> tuple[str, ...]:
        return tuple(sorted(self._connected))

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)

    async def provide(self, key: bytes) -> None:
        self._require_started()
        self._network._providers.setdefault(key, {})[self.peer_id] = PeerInfo(self.peer_id, self.listen_addrs)

    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        self._require_started()
        return list(self._network._providers.get(key, {}).values())[:count]

    async def put_value(self, key: bytes, value: bytes) -> None:
        self._require_started()
        self._network._put(key, value)

    async def get_value(self, key: bytes) -> bytes | None:
        self._require_started()
        return self._network._get(key)

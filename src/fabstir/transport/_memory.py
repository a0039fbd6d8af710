"""The in-memory transport: the transport seam of mock mode and of unit tests.

Every node of one :class:`InMemoryNetwork` lives on one asyncio loop (no threads). It passes the same
conformance suite as the libp2p facade, and copies libp2p where the core could tell the difference:

* streams carry real bytes through bounded pipes: ``read`` returns whatever is buffered, ``write`` blocks
  while the peer's receive window is full, ``close`` is a half-close (the peer reads EOF after the data),
  ``reset`` (or a vanished peer) is an error on both sides and discards what was in flight;
* a dial to a stopped (frozen) peer hangs rather than fails, as a libp2p dial to a SIGSTOPped host does:
  the caller's ``asyncio.timeout`` decides;
* the DHT is a converged Kademlia shared by the network. Provider records outlive killed peers (libp2p
  keeps them 48 h and cannot withdraw them), so clients must check liveness; capability records are
  validated when stored and again when read, so an expired record disappears by itself.

Faults for tests and mock mode: :meth:`InMemoryNetwork.kill`, :meth:`~InMemoryNetwork.freeze`,
:meth:`~InMemoryNetwork.partition`, :meth:`~InMemoryNetwork.inject_raw_value`.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from .._exceptions import PeerUnreachableError, RemoteProtocolError, TransportError, ValidationError
from ..protocol._identity import PeerIdentity
from ..protocol._records import CAPABILITY_NAMESPACE, select_capability_record, validate_capability_record
from ._base import PeerEvent, PeerEventKind, PeerInfo, StreamHandler
from ._listeners import PeerListeners

__all__ = ["InMemoryNetwork", "InMemoryStream", "InMemoryTransport"]

_log = logging.getLogger("fabstir.transport")
_CAPABILITY_PREFIX = f"/{CAPABILITY_NAMESPACE}/".encode()
#: yamux's default per-stream receive window, which is what the libp2p transport gives us.
DEFAULT_WINDOW = 256 * 1024


class _Signal:
    """Wakes every current waiter when fired (an :class:`asyncio.Event` that re-arms itself)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Pipe:
    """One direction of a stream: the bytes in flight (each with the loop time it becomes readable)."""

    __slots__ = ("buffered", "chunks", "eof", "signal")

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.eof = False
        # Fired on every change; the reader and the writer of this pipe both wait on it and re-check.
        self.signal = _Signal()


class _Link:
    """Both directions of one stream, and why it was reset (if it was)."""

    __slots__ = ("acceptor", "opener", "reset_by", "reset_reason", "to_acceptor", "to_opener")

    def __init__(self, opener: str, acceptor: str) -> None:
        self.opener = opener
        self.acceptor = acceptor
        self.to_acceptor = _Pipe()
        self.to_opener = _Pipe()
        self.reset_reason: str | None = None
        self.reset_by: str | None = None

    def involves(self, peer_id: str) -> bool:
        return peer_id in (self.opener, self.acceptor)

    def between(self, a: str, b: str) -> bool:
        return {self.opener, self.acceptor} == {a, b}

    @property
    def finished(self) -> bool:
        """Nothing more can happen on it: reset, or both sides closed and everything read."""
        if self.reset_reason is not None:
            return True
        return all(p.eof and not p.chunks for p in (self.to_acceptor, self.to_opener))

    def abort(self, reason: str, by: str | None) -> None:
        """Resets both directions at once; what was in flight is lost (as with a yamux RST)."""
        if self.reset_reason is not None:
            return
        self.reset_reason = reason
        self.reset_by = by
        for pipe in (self.to_acceptor, self.to_opener):
            pipe.chunks.clear()
            pipe.buffered = 0
            pipe.signal.fire()

    def wake(self) -> None:
        self.to_acceptor.signal.fire()
        self.to_opener.signal.fire()


class InMemoryStream:
    """One end of an in-memory stream; implements :class:`~fabstir.transport.Stream`."""

    def __init__(
        self, network: InMemoryNetwork, link: _Link, local: str, remote: str, protocol_id: str
    ) -> None:
        self._network = network
        self._link = link
        self._local = local
        self._remote = remote
        self._protocol_id = protocol_id
        opener = link.opener == local
        self._in = link.to_opener if opener else link.to_acceptor
        self._out = link.to_acceptor if opener else link.to_opener
        self._write_closed = False

    def __repr__(self) -> str:
        return f"<InMemoryStream {self._protocol_id} {self._local[-6:]}->{self._remote[-6:]}>"

    @property
    def remote_peer(self) -> str:
        return self._remote

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    def _check_reset(self) -> None:
        link = self._link
        if link.reset_reason is None:
            return
        if link.reset_by == self._local:
            raise TransportError("stream reset by us", node_id=self._remote)
        raise TransportError(f"stream reset: {link.reset_reason}", node_id=self._remote)

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` of what has arrived (waits for at least one byte); ``b""`` at EOF."""
        if max_bytes < 1:
            raise ValidationError("max_bytes must be positive")
        pipe = self._in
        while True:
            self._check_reset()
            if not self._network._frozen_between(self._local, self._remote):
                if pipe.chunks:
                    loop = asyncio.get_running_loop()
                    due = pipe.chunks[0][0]
                    if due <= loop.time():
                        return self._take(max_bytes)
                    # Delayed by the network latency: wake when it is due (or earlier on a reset).
                    # The loop may run the callback a hair early, hence the re-check above.
                    wake = loop.call_at(due, pipe.signal.fire)
                    try:
                        await pipe.signal.wait()
                    finally:
                        wake.cancel()
                    continue
                if pipe.eof:
                    self._network._forget_if_finished(self._link)
                    return b""
            await pipe.signal.wait()

    def _take(self, max_bytes: int) -> bytes:
        pipe = self._in
        now = asyncio.get_running_loop().time()
        out = bytearray()
        while pipe.chunks and len(out) < max_bytes:
            due, chunk = pipe.chunks[0]
            if due > now:
                break
            room = max_bytes - len(out)
            if len(chunk) <= room:
                pipe.chunks.popleft()
                out += chunk
            else:
                out += chunk[:room]
                pipe.chunks[0] = (due, chunk[room:])
        pipe.buffered -= len(out)
        pipe.signal.fire()  # the window opened: a blocked writer may go on
        return bytes(out)

    async def write(self, data: bytes) -> None:
        """Queues ``data`` for the peer, waiting while its receive window is full."""
        pipe = self._out
        view = memoryview(data).cast("B")
        network = self._network
        while True:
            self._check_reset()
            if self._write_closed:
                raise TransportError("stream closed for writing", node_id=self._remote)
            if not view:
                return
            room = network.window - pipe.buffered
            if room <= 0:
                await pipe.signal.wait()
                continue
            piece = bytes(view[:room])
            view = view[room:]
            pipe.chunks.append((asyncio.get_running_loop().time() + network.latency, piece))
            pipe.buffered += len(piece)
            pipe.signal.fire()

    async def close(self) -> None:
        """Half-close: the peer reads EOF after the data already written; we can still read. Idempotent."""
        if self._write_closed:
            return
        self._write_closed = True
        if self._link.reset_reason is None:
            self._out.eof = True
            self._out.signal.fire()
            self._network._forget_if_finished(self._link)

    async def reset(self) -> None:
        """Aborts both directions; the peer's pending and later calls raise. Idempotent."""
        self._write_closed = True
        self._link.abort(f"peer {self._local} reset the stream", by=self._local)
        self._network._forget_if_finished(self._link)


class InMemoryNetwork:
    """A network of in-memory nodes on one event loop, with a shared DHT and fault injection.

    ``clock`` (wall-clock seconds) decides capability-record expiry; ``latency`` (seconds, one way) delays
    every delivery, dial and ping — with the default 0 nothing ever sleeps; ``window`` is the per-stream,
    per-direction receive buffer in bytes.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        latency: float = 0.0,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not (math.isfinite(latency) and latency >= 0):
            raise ValidationError("latency must be a finite number of seconds >= 0")
        if window < 1:
            raise ValidationError("window must be at least 1 byte")
        self._clock = clock
        self._latency = float(latency)
        self._window = window
        self._numbers = itertools.count(1)
        self._nodes: dict[str, InMemoryTransport] = {}  # running nodes by peer id
        self._frozen: set[str] = set()
        self._partitions: set[frozenset[str]] = set()
        self._links: set[_Link] = set()  # streams not finished yet
        self._providers: dict[bytes, dict[str, PeerInfo]] = {}
        self._values: dict[bytes, list[bytes]] = {}
        # Fired whenever reachability changes: dials and pings waiting on a frozen peer re-check.
        self._reachability = _Signal()

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def window(self) -> int:
        return self._window

    def create_transport(self, identity: PeerIdentity | None = None) -> InMemoryTransport:
        """A new node (not started) with ``identity`` or a fresh Ed25519 key."""
        return InMemoryTransport(self, identity or PeerIdentity(), next(self._numbers))

    def running_peers(self) -> tuple[str, ...]:
        """Peer ids of the started nodes that were neither closed nor killed."""
        return tuple(self._nodes)

    # faults ------------------------------------------------------------------------------------------

    def kill(self, peer_id: str) -> None:
        """The peer vanishes, like a SIGKILLed process: its streams are reset for the other side, its
        handlers are cancelled, its peers see it disconnect and dials to it fail. It cannot say goodbye,
        so its DHT provider records stay. A no-op if the peer is not running."""
        node = self._nodes.pop(peer_id, None)
        if node is None:
            return
        self._abort_links(lambda link: link.involves(peer_id), f"peer {peer_id} vanished")
        node._vanish()
        self._drop_connections(node)
        self._reachability.fire()

    def freeze(self, peer_id: str) -> None:
        """The peer stops, like a SIGSTOPped process: no data moves on its streams in either direction,
        and dials and pings to it hang, until :meth:`unfreeze`. Writers fill the window, then block."""
        self._frozen.add(peer_id)

    def unfreeze(self, peer_id: str) -> None:
        self._frozen.discard(peer_id)
        for link in list(self._links):
            if link.involves(peer_id):
                link.wake()
        self._reachability.fire()

    def partition(self, a: str, b: str) -> None:
        """``a`` and ``b`` lose each other: their streams are reset, both see the other disconnect, and
        dials between them fail until :meth:`heal`. Everyone else still reaches both."""
        self._partitions.add(frozenset((a, b)))
        self._abort_links(lambda link: link.between(a, b), f"network partition between {a} and {b}")
        node_a, node_b = self._nodes.get(a), self._nodes.get(b)
        if node_a is not None and node_b is not None:
            node_a._peer_gone(b)
            node_b._peer_gone(a)
        self._reachability.fire()

    def heal(self, a: str, b: str) -> None:
        self._partitions.discard(frozenset((a, b)))
        self._reachability.fire()

    def inject_raw_value(self, key: bytes, value: bytes) -> None:
        """Stores a DHT value without validation, as a malicious or buggy node could (readers must
        validate). ``get_value`` still only returns values that pass validation at read time."""
        self._values.setdefault(key, []).append(value)

    # internals ---------------------------------------------------------------------------------------

    def _frozen_between(self, a: str, b: str) -> bool:
        return a in self._frozen or b in self._frozen

    def _reachable(self, source: str, target: str) -> InMemoryTransport:
        if target == source:
            raise PeerUnreachableError("cannot dial ourselves", node_id=target)
        node = self._nodes.get(target)
        if node is None:
            raise PeerUnreachableError(f"peer {target} is not reachable", node_id=target)
        if frozenset((source, target)) in self._partitions:
            raise PeerUnreachableError(f"peer {target} is not reachable (partitioned)", node_id=target)
        return node

    async def _wait_reachable(self, source: InMemoryTransport, target: str) -> InMemoryTransport:
        """The target node; hangs while either side is frozen, raises if it is (or becomes) unreachable."""
        while True:
            source._require_running()
            node = self._reachable(source.peer_id, target)
            if not self._frozen_between(source.peer_id, target):
                return node
            await self._reachability.wait()

    def _open_link(self, opener: str, acceptor: str) -> _Link:
        link = _Link(opener, acceptor)
        self._links.add(link)
        return link

    def _forget_if_finished(self, link: _Link) -> None:
        if link.finished:
            self._links.discard(link)

    def _abort_links(self, which: Callable[[_Link], bool], reason: str, by: str | None = None) -> None:
        for link in [link for link in self._links if which(link)]:
            link.abort(reason, by)
            self._links.discard(link)

    def _drop_connections(self, node: InMemoryTransport) -> None:
        for peer_id in node._take_connections():
            other = self._nodes.get(peer_id)
            if other is not None:
                other._peer_gone(node.peer_id)

    def _register(self, node: InMemoryTransport) -> None:
        if node.peer_id in self._nodes:
            raise TransportError(f"peer id {node.peer_id} is already running on this network")
        self._nodes[node.peer_id] = node
        self._reachability.fire()

    def _unregister(self, node: InMemoryTransport) -> None:
        """A clean shutdown: streams reset, peers told, provider records withdrawn."""
        if self._nodes.get(node.peer_id) is not node:
            return
        del self._nodes[node.peer_id]
        gone = node.peer_id
        self._abort_links(lambda link: link.involves(gone), f"peer {gone} closed", by=gone)
        self._drop_connections(node)
        for key in list(self._providers):
            providers = self._providers[key]
            providers.pop(node.peer_id, None)
            if not providers:
                del self._providers[key]
        self._reachability.fire()

    def _provide(self, info: PeerInfo, key: bytes) -> None:
        self._providers.setdefault(key, {})[info.peer_id] = info

    def _find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        return list(self._providers.get(key, {}).values())[:count]

    def _put(self, key: bytes, value: bytes) -> None:
        if not key.startswith(_CAPABILITY_PREFIX):
            raise TransportError(f"record rejected: unknown namespace in key {key!r}")
        now = self._clock()
        try:
            validate_capability_record(key, value, now)
        except RemoteProtocolError as exc:
            raise TransportError(f"record rejected: {exc}") from exc
        stored = [*self._values.get(key, []), value]
        # Like a Kademlia value store: keep only the best record, so an older seq never displaces a newer.
        best = select_capability_record(key, stored, now)
        self._values[key] = [stored[best]] if best is not None else []

    def _get(self, key: bytes) -> bytes | None:
        if not key.startswith(_CAPABILITY_PREFIX):
            return None  # no validator for other namespaces: nothing there can be valid
        values = self._values.get(key, [])
        best = select_capability_record(key, values, self._clock())
        return values[best] if best is not None else None


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    KILLED = "killed"
    CLOSED = "closed"


class InMemoryTransport:
    """A node of an :class:`InMemoryNetwork`; implements :class:`~fabstir.transport.Transport`.

    Listens at ``/memory/<n>/p2p/<peer id>``. Incoming streams run their handler in a task the transport
    owns: :meth:`aclose` cancels it, and an exception from it is logged on ``fabstir.transport`` and resets
    the stream (so the opener is not left waiting).
    """

    def __init__(self, network: InMemoryNetwork, identity: PeerIdentity, number: int) -> None:
        self._network = network
        self._identity = identity
        self._addrs = (f"/memory/{number}/p2p/{identity.peer_id}",)
        self._handlers: dict[str, StreamHandler] = {}
        self._listeners = PeerListeners()
        self._connected: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = _State.NEW

    def __repr__(self) -> str:
        return f"<InMemoryTransport {self.peer_id} {self._state.value}>"

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return self._addrs

    # lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Joins the network. Idempotent; a closed or killed transport cannot start again (make a new one
        with the same identity to model a restart)."""
        if self._state is _State.RUNNING:
            return
        if self._state is not _State.NEW:
            raise TransportError("this transport was stopped and cannot be restarted")
        self._network._register(self)
        self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Leaves the network: open streams are reset, peers see a disconnect, our provider records are
        withdrawn, handler tasks are cancelled and awaited. Idempotent."""
        if self._state is _State.CLOSED:
            return
        was_running = self._state is _State.RUNNING
        self._state = _State.CLOSED
        if was_running:
            self._network._unregister(self)
        await self._cancel_tasks()

    async def __aenter__(self) -> InMemoryTransport:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        # Handlers already logged their own failures; here we only wait until they are gone.
        await asyncio.gather(*tasks, return_exceptions=True)

    def _vanish(self) -> None:
        """Killed: no goodbye. Handlers die with the process (cancelled; ``aclose`` later awaits them)."""
        self._state = _State.KILLED
        for task in self._tasks:
            task.cancel()

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise TransportError(f"the transport is not running ({self._state.value})", node_id=self.peer_id)

    # peers -------------------------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Runs ``handler`` for each incoming stream of ``protocol_id`` (replaces an earlier handler)."""
        self._handlers[protocol_id] = handler

    def add_peer_listener(self, listener: Callable[[PeerEvent], None]) -> Callable[[], None]:
        return self._listeners.add(listener)

    def connected_peers(self) -> tuple[str, ...]:
        return tuple(sorted(self._connected))

    def _notify(self, event: PeerEvent) -> None:
        self._listeners.emit(event)

    def _peer_joined(self, peer_id: str) -> None:
        if peer_id not in self._connected:
            self._connected.add(peer_id)
            self._notify(PeerEvent(PeerEventKind.CONNECTED, peer_id))

    def _peer_gone(self, peer_id: str) -> None:
        if peer_id in self._connected:
            self._connected.discard(peer_id)
            self._notify(PeerEvent(PeerEventKind.DISCONNECTED, peer_id))

    def _take_connections(self) -> set[str]:
        connected, self._connected = self._connected, set()
        return connected

    async def _dial(self, peer_id: str) -> InMemoryTransport:
        network = self._network
        other = await network._wait_reachable(self, peer_id)
        if peer_id not in self._connected:
            if network.latency:
                await asyncio.sleep(2 * network.latency)  # the handshake costs a round trip
                other = await network._wait_reachable(self, peer_id)
            self._peer_joined(peer_id)
            other._peer_joined(self.peer_id)
        return other

    async def connect(self, peer: PeerInfo) -> None:
        """Connects (emitting ``CONNECTED`` on both sides the first time). Raises
        :class:`~fabstir.PeerUnreachableError`; hangs while the peer is frozen."""
        self._require_running()
        await self._dial(peer.peer_id)

    async def open_stream(self, peer: PeerInfo, protocol_id: str) -> InMemoryStream:
        """A new stream to ``peer``, whose handler for ``protocol_id`` starts at once. Raises
        :class:`~fabstir.PeerUnreachableError` if the peer is not running (or partitioned away) and
        :class:`~fabstir.TransportError` if it has no handler for the protocol."""
        self._require_running()
        network = self._network
        other = await self._dial(peer.peer_id)
        if network.latency:
            await asyncio.sleep(2 * network.latency)  # protocol negotiation costs a round trip
            other = await network._wait_reachable(self, peer.peer_id)
        handler = other._handlers.get(protocol_id)
        if handler is None:
            raise TransportError(
                f"peer {peer.peer_id} does not support protocol {protocol_id}", node_id=peer.peer_id
            )
        link = network._open_link(self.peer_id, peer.peer_id)
        ours = InMemoryStream(network, link, self.peer_id, peer.peer_id, protocol_id)
        theirs = InMemoryStream(network, link, peer.peer_id, self.peer_id, protocol_id)
        other._spawn(handler, theirs)
        return ours

    def _spawn(self, handler: StreamHandler, stream: InMemoryStream) -> None:
        task = asyncio.get_running_loop().create_task(
            self._serve(handler, stream), name=f"fabstir-memory-handler {stream.protocol_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, handler: StreamHandler, stream: InMemoryStream) -> None:
        try:
            await handler(stream)
        except TransportError as exc:
            _log.warning(
                "stream handler for %s from %s ended by a transport error: %s",
                stream.protocol_id,
                stream.remote_peer,
                exc,
            )
            await stream.reset()
        except Exception:
            _log.exception("stream handler for %s from %s failed", stream.protocol_id, stream.remote_peer)
            await stream.reset()

    async def ping(self, peer: PeerInfo) -> float:
        """Round-trip time in seconds (at least twice the network latency). Raises
        :class:`~fabstir.TransportError` if the peer is gone; hangs while it is frozen."""
        self._require_running()
        network = self._network
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._dial(peer.peer_id)
        if network.latency:
            await asyncio.sleep(2 * network.latency)
        await network._wait_reachable(self, peer.peer_id)  # it may have died or stopped meanwhile
        return max(loop.time() - started, 2 * network.latency)

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)

    # DHT ---------------------------------------------------------------------------------------------

    async def _dht_round_trip(self) -> None:
        self._require_running()
        if self._network.latency:
            await asyncio.sleep(2 * self._network.latency)
            self._require_running()

    async def provide(self, key: bytes) -> bool:
        """Always ``True``: the network itself keeps the record."""
        await self._dht_round_trip()
        self._network._provide(PeerInfo(self.peer_id, self._addrs), key)
        return True

    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        """At most ``count`` distinct providers, killed ones included (provider records outlive them)."""
        if count < 1:
            raise ValidationError("count must be positive")
        await self._dht_round_trip()
        return self._network._find_providers(key, count)

    async def put_value(self, key: bytes, value: bytes) -> None:
        """Stores a record; raises :class:`~fabstir.TransportError` (``record rejected: ...``) if it is
        not a valid capability record for ``key``. An older ``seq`` is accepted, but never displaces a
        newer one."""
        await self._dht_round_trip()
        self._network._put(key, value)

    async def get_value(self, key: bytes) -> bytes | None:
        """The best record that is valid now (highest ``seq``), or ``None``."""
        await self._dht_round_trip()
        return self._network._get(key)

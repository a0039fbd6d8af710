"""The libp2p transport: :class:`~fabstir.transport.Transport` over py-libp2p running in a trio thread.

Everything here runs on the asyncio loop except the methods named ``_trio_*`` (and the helpers they
call), which run in the trio thread and are reached through :class:`~._thread.TrioThread`. Every network
wait in the trio thread is bounded by one of the constructor's timeouts; the asyncio-facing methods take
no ``timeout=`` (the caller bounds them, as the seam's contract says).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.tools.anyio_service import background_trio_service

from ..._exceptions import ConfigurationError, PeerUnreachableError, RemoteProtocolError, TransportError
from ...protocol import PeerIdentity, validate_capability_record
from ...protocol._records import CAPABILITY_NAMESPACE
from .._base import PeerEvent, PeerEventKind, PeerInfo, StreamHandler
from .._listeners import PeerListeners
from . import _dht
from ._errors import is_reset, is_unsupported_protocol, to_transport_error, unreachable
from ._host import HostSettings, build_host, quiet_libp2p_logging
from ._stream import Libp2pStream
from ._thread import TrioThread

if TYPE_CHECKING:  # trio-typing's stubs (a py-libp2p dependency) shadow trio's own annotations
    from trio_typing import TaskStatus

__all__ = ["Libp2pTransport"]

_log = logging.getLogger("fabstir.transport")
_CAP_PREFIX = f"/{CAPABILITY_NAMESPACE}/".encode()
#: How long addresses given to connect()/open_stream() stay in the peerstore (libp2p's own default: 120 s).
_ADDR_TTL = 600
#: How long aclose waits for the trio side to shut down politely before cancelling it.
_SHUTDOWN_GRACE = 5.0
_PING_BYTES = 32


class Libp2pTransport:
    """A libp2p node: TCP + noise + yamux, Kademlia on ``/fabstir/kad/1.0.0``, health pings.

    py-libp2p runs in a trio thread of its own, started by :meth:`start` and ended by :meth:`aclose`;
    the node serves the asyncio loop it was started on (one loop per node).

    * ``dial_timeout`` bounds each dial, ours and the DHT's (a hung listener otherwise takes 120 s);
    * ``stream_timeout`` bounds opening a stream (protocol negotiation, ours and the DHT's) and each
      stall of a write (a peer that stopped reading);
    * ``ping_interval`` / ``ping_timeout``: every connection is pinged; one unanswered ping closes it,
      which fails its streams — a frozen peer is noticed within about ``interval + timeout``, at most
      twice that (reads have no timeout of their own: an idle stream is legitimate, a dead one is
      caught by the pings or by the caller's deadline);
    * ``announce_addrs`` replace the listen addresses in what peers are told (provider records,
      identify, :attr:`listen_addrs`): a node listening on ``0.0.0.0`` announces its public address;
    * ``dht_mode="client"`` queries the DHT without serving it (SDK clients, peers behind NAT);
    * ``bootstrap`` peers are dialled and put in the routing table at start (failures are logged);
    * ``idle_connection_timeout``: if given, a connection that has carried no stream for that long is
      closed (bootstrap peers' are kept). Without it a DHT server keeps a connection to every peer its
      walks ever reached, and pings each: a cost that grows with the network. The DHT dials again when
      it needs the peer; hosts and bootstrap peers set it, clients (few connections, jobs) do not;
    * ``clock`` is the wall clock capability records are checked against.

    Buffering: an unread stream absorbs up to ~16 MiB (yamux grows its window while the reader keeps up)
    before the writer blocks.
    """

    def __init__(
        self,
        identity: PeerIdentity,
        *,
        listen_addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        announce_addrs: Sequence[str] = (),
        bootstrap: Sequence[PeerInfo] = (),
        dht_mode: Literal["server", "client"] = "server",
        dial_timeout: float = 5.0,
        stream_timeout: float = 10.0,
        ping_interval: float = 2.0,
        ping_timeout: float = 2.0,
        idle_connection_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("dial_timeout", dial_timeout),
            ("stream_timeout", stream_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
            ("idle_connection_timeout", 1.0 if idle_connection_timeout is None else idle_connection_timeout),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
        if dht_mode not in ("server", "client"):
            raise ConfigurationError(f"dht_mode must be 'server' or 'client', not {dht_mode!r}")
        if not listen_addrs:
            raise ConfigurationError("listen_addrs must name at least one address")
        for kind, addrs in (("listen", listen_addrs), ("announce", announce_addrs)):
            for addr in addrs:
                try:
                    multiaddr.Multiaddr(addr)
                except Exception as exc:
                    raise ConfigurationError(f"invalid {kind} address {addr!r}: {exc}") from exc
        self._identity = identity
        self._listen = tuple(listen_addrs)
        self._announce = tuple(announce_addrs)
        self._bootstrap = tuple(bootstrap)
        self._dht_mode = dht_mode
        self._settings = HostSettings(dial_timeout, stream_timeout, ping_interval, ping_timeout)
        self._idle_timeout = idle_connection_timeout
        self._clock = clock
        self._bridge = TrioThread(f"fabstir-libp2p-{identity.peer_id[-6:]}")
        # protocols whose handler the host does not know yet: filled by set_stream_handler (any time),
        # emptied in the trio thread once the host exists
        self._protocols_lock = threading.Lock()
        self._unregistered: set[str] = set()
        # asyncio side
        self._addrs: tuple[str, ...] = ()
        self._handlers: dict[str, StreamHandler] = {}
        self._listeners = PeerListeners()
        self._connected: set[str] = set()
        self._streams: set[Libp2pStream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()
        # trio side
        self._host: IHost | None = None
        self._dht: KadDHT | None = None
        self._stop: trio.Event | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._trio_connected: set[ID] = set()
        self._trio_streams: dict[str, int] = {}  # peer id → our streams with it still being read

    # properties ---------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        """Dialable addresses, each ending in ``/p2p/<peer id>`` (empty until started)."""
        return self._addrs

    def __repr__(self) -> str:
        return f"<Libp2pTransport {self.peer_id} {self._addrs}>"

    # lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listens, dials the bootstrap peers and starts the DHT; raises :class:`TransportError` if the
        node cannot start (e.g. an address in use)."""
        if self._closing:
            raise TransportError("transport closed")
        if self._started:
            return
        self._started = True
        try:
            await self._bridge.start(self._trio_serve)
        except Exception as exc:
            self._closing = True
            await self._bridge.wait_finished()  # the thread is ending: leave nothing behind
            self._closed.set()
            raise to_transport_error(_single(exc), "starting the libp2p node") from exc

    async def aclose(self) -> None:
        """Closes every connection (peers see their streams fail), cancels running handlers and stops
        the trio thread. Idempotent; concurrent callers all wait for the end."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            for stream in list(self._streams):
                stream.abort("transport closed")
            self._streams.clear()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._bridge.running:
                await self._stop_trio()
            self._connected.clear()
        finally:
            self._closed.set()

    async def _stop_trio(self) -> None:
        """Asks the trio side to shut down politely, then cancels it; gives up on a thread that still
        hangs (it is a daemon thread: it cannot keep the process alive)."""
        self._bridge.call_soon(self._trio_request_stop)
        for force in (False, True):
            if force:
                _log.warning("libp2p did not stop within %.0f s; cancelling it", _SHUTDOWN_GRACE)
                self._bridge.call_soon(self._trio_force_stop)
            try:
                async with asyncio.timeout(_SHUTDOWN_GRACE):
                    await self._bridge.wait_finished()
                return
            except TimeoutError:
                pass
        _log.error("the libp2p thread of %s does not stop; abandoning it", self.peer_id)

    async def __aenter__(self) -> Libp2pTransport:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _require_running(self) -> None:
        if not self._started or self._closing:
            raise TransportError("the transport is not running")

    # handlers and events ------------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serves ``protocol_id`` with ``handler`` (replacing any previous one), also before start."""
        if protocol_id not in self._handlers:
            with self._protocols_lock:
                self._unregistered.add(protocol_id)
            # if trio is not running yet, its start registers the protocol
            self._bridge.call_soon(self._trio_register_protocols)
        self._handlers[protocol_id] = handler

    def add_peer_listener(self, listener: Callable[[PeerEvent], None]) -> Callable[[], None]:
        return self._listeners.add(listener)

    def connected_peers(self) -> tuple[str, ...]:
        return tuple(sorted(self._connected))

    def _emit(self, event: PeerEvent) -> None:
        if self._closing:  # our own shutdown is no news to our listeners
            return
        if event.kind is PeerEventKind.CONNECTED:
            self._connected.add(event.peer_id)
        else:
            self._connected.discard(event.peer_id)
        self._listeners.emit(event)

    def _dispatch(self, stream: Libp2pStream) -> None:
        """An inbound stream arrived (trio posted it): run its handler as a task we own."""
        handler = self._handlers.get(stream.protocol_id)
        if self._closing or handler is None:
            stream.discard()
            return
        self._track(stream)

        async def run() -> None:
            try:
                await handler(stream)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("stream handler for %s failed", stream.protocol_id)
                await stream.reset()

        task = asyncio.get_running_loop().create_task(
            run(), name=f"fabstir-libp2p-handler-{stream.protocol_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _track(self, stream: Libp2pStream) -> None:
        if not stream.finished:
            self._streams.add(stream)

    def _stream_finished(self, stream: Libp2pStream) -> None:
        self._streams.discard(stream)

    # peers --------------------------------------------------------------------------------------------

    async def connect(self, peer: PeerInfo) -> None:
        self._require_running()
        await self._bridge.call(lambda: self._trio_connect(peer))

    async def bootstrap(self, peer: PeerInfo) -> None:
        """Connects to ``peer`` and adds it to the DHT's routing table, so lookups start from it (what the
        ``bootstrap`` constructor argument does at start, for callers that retry on their own).
        Raises :class:`fabstir.PeerUnreachableError`."""
        self._require_running()
        await self._bridge.call(lambda: self._trio_bootstrap_one(peer))

    async def open_stream(self, peer: PeerInfo, protocol_id: str) -> Libp2pStream:
        self._require_running()
        stream = await self._bridge.call(
            lambda: self._trio_open_stream(peer, protocol_id), orphan=Libp2pStream.discard
        )
        self._track(stream)
        return stream

    async def ping(self, peer: PeerInfo) -> float:
        self._require_running()
        return await self._bridge.call(lambda: self._trio_ping(peer))

    def sign(self, data: bytes) -> bytes:
        return self._identity.sign(data)

    # DHT ----------------------------------------------------------------------------------------------

    async def provide(self, key: bytes) -> bool:
        self._require_running()
        return await self._bridge.call(lambda: self._trio_provide(key))

    async def find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        self._require_running()
        return await self._bridge.call(lambda: self._trio_find_providers(key, count))

    async def put_value(self, key: bytes, value: bytes) -> None:
        """Stores a capability record (validated here first, then by every DHT node that keeps it)."""
        self._require_running()
        if not key.startswith(_CAP_PREFIX):
            raise TransportError(f"record rejected: unknown namespace in key {key!r}")
        try:
            validate_capability_record(key, value, self._clock())
        except RemoteProtocolError as exc:
            raise TransportError(f"record rejected: {exc}") from exc
        await self._bridge.call(lambda: self._trio_put_value(key, value))

    async def get_value(self, key: bytes) -> bytes | None:
        self._require_running()
        if not key.startswith(_CAP_PREFIX):
            return None  # no other namespace can hold a valid value
        return await self._bridge.call(lambda: self._trio_get_value(key))

    # trio side: lifecycle -----------------------------------------------------------------------------

    async def _trio_serve(self, task_status: TaskStatus[None]) -> None:
        quiet_libp2p_logging()
        self._stop = trio.Event()
        host = build_host(self._identity, self._listen, self._settings, self._announce)
        self._host = host
        with trio.CancelScope() as self._serve_scope:
            async with host.run([multiaddr.Multiaddr(addr) for addr in self._listen]):
                listening = getattr(host.get_network(), "listeners", {})
                failed = [addr for addr in self._listen if str(multiaddr.Multiaddr(addr)) not in listening]
                if failed:  # libp2p only logs this, at debug level
                    raise TransportError(f"cannot listen on {', '.join(failed)} (address in use?)")
                host.get_network().register_notifee(_PeerNotifee(self))
                self._trio_register_protocols()
                dht = _dht.build_dht(host, self._dht_mode, self._clock)
                _dht.admit_servers_only(dht, host, self._bridge.spawn)
                self._dht = dht
                # bootstrap before the DHT service starts, or its routing table stays empty until the
                # 10-minute refresh
                async with trio.open_nursery() as nursery:
                    for peer in self._bootstrap:
                        nursery.start_soon(self._trio_bootstrap, dht, peer)
                async with background_trio_service(dht), trio.open_nursery() as nursery:
                    addrs = tuple(str(addr) for addr in host.get_addrs())
                    self._bridge.post(self._set_addrs, addrs)
                    if self._idle_timeout is not None:
                        nursery.start_soon(self._trio_close_idle_connections, host, self._idle_timeout)
                    task_status.started()
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
                await self._trio_close_connections(host)
                with trio.move_on_after(self._settings.stream_timeout):
                    await host.close()

    def _set_addrs(self, addrs: tuple[str, ...]) -> None:
        self._addrs = addrs

    def _trio_request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _trio_force_stop(self) -> None:
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    async def _trio_bootstrap(self, dht: KadDHT, peer: PeerInfo) -> None:
        try:
            await self._trio_connect(peer)
            await dht.add_peer(_peer_id(peer))
        except TransportError as exc:
            _log.warning("bootstrap peer %s unreachable: %s", peer.peer_id, exc)

    async def _trio_bootstrap_one(self, peer: PeerInfo) -> None:
        peer_id = await self._trio_connect(peer)
        try:
            await self._running_dht().add_peer(peer_id)
        except Exception as exc:
            what = f"adding {peer.peer_id} to the routing table"
            raise to_transport_error(exc, what, peer.peer_id) from exc

    async def _trio_close_connections(self, host: IHost) -> None:
        """Closes every connection at once: libp2p closes them one by one, ~0.2 s each."""
        network = host.get_network()

        async def close(conn: INetConn) -> None:
            try:
                await conn.close()
            except Exception as exc:
                _log.debug("closing a connection failed: %s", exc)

        with trio.move_on_after(self._settings.stream_timeout):
            async with trio.open_nursery() as nursery:
                for conns in list(network.get_connections_map().values()):
                    for conn in list(conns):
                        nursery.start_soon(close, conn)

    async def _trio_close_idle_connections(self, host: IHost, timeout: float) -> None:
        """Every ``timeout / 4`` s: closes the connections of peers that have had no stream for ``timeout``
        seconds (measured from when a sweep last saw a stream, or first saw the connection)."""
        network = host.get_network()
        keep = {_peer_id(peer) for peer in self._bootstrap}
        last_busy: dict[ID, float] = {}
        while True:
            await trio.sleep(timeout / 4)
            now = trio.current_time()
            connections = network.get_connections_map()
            for gone in [peer for peer in last_busy if peer not in connections]:
                del last_busy[gone]
            idle: list[INetConn] = []
            for peer, conns in list(connections.items()):
                if peer in keep:
                    continue
                if str(peer) in self._trio_streams or any(conn.get_streams() for conn in conns):
                    last_busy[peer] = now
                elif now - last_busy.setdefault(peer, now) >= timeout:
                    del last_busy[peer]
                    idle.extend(conns)
            if idle:
                _log.debug("closing %d idle connection(s)", len(idle))
                async with trio.open_nursery() as closing:
                    for conn in idle:
                        closing.start_soon(self._trio_close_quietly, conn)

    @staticmethod
    async def _trio_close_quietly(conn: INetConn) -> None:
        with trio.move_on_after(5.0):
            try:
                await conn.close()
            except Exception as exc:
                _log.debug("closing an idle connection failed: %s", exc)

    def _trio_register_protocols(self) -> None:
        host = self._host
        if host is None:
            return
        with self._protocols_lock:
            protocols, self._unregistered = self._unregistered, set()
        for protocol_id in protocols:
            host.set_stream_handler(TProtocol(protocol_id), self._inbound_handler(protocol_id))

    def _inbound_handler(self, protocol_id: str) -> Callable[[INetStream], Awaitable[None]]:
        async def on_inbound(net: INetStream) -> None:
            # hand the stream over to the asyncio handler and return: the stream outlives this task
            self._bridge.post(self._dispatch, self._wrap(net, protocol_id))

        return on_inbound

    def _wrap(self, net: INetStream, protocol_id: str) -> Libp2pStream:
        stream = Libp2pStream(
            self._bridge,
            cast(NetStream, net),
            remote_peer=str(net.muxed_conn.peer_id),
            protocol_id=protocol_id,
            stream_timeout=self._settings.stream_timeout,
            on_finished=self._stream_finished,
        )
        self._bridge.spawn(lambda: self._trio_pump(stream))
        return stream

    async def _trio_pump(self, stream: Libp2pStream) -> None:
        """Runs the stream's pump, counting it as the peer's open stream meanwhile: libp2p forgets an
        inbound stream once its handler returns, and ours return at once (the stream lives on)."""
        peer = stream.remote_peer
        self._trio_streams[peer] = self._trio_streams.get(peer, 0) + 1
        try:
            await stream.pump()
        finally:
            if (left := self._trio_streams[peer] - 1) > 0:
                self._trio_streams[peer] = left
            else:
                del self._trio_streams[peer]

    def _trio_on_connected(self, peer_id: ID) -> None:
        if peer_id not in self._trio_connected:
            self._trio_connected.add(peer_id)
            self._bridge.post(self._emit, PeerEvent(PeerEventKind.CONNECTED, str(peer_id)))

    def _trio_on_disconnected(self, peer_id: ID) -> None:
        host = self._host
        still = host is not None and any(
            not conn.is_closed for conn in host.get_network().get_connections(peer_id)
        )
        if peer_id in self._trio_connected and not still:
            self._trio_connected.discard(peer_id)
            self._bridge.post(self._emit, PeerEvent(PeerEventKind.DISCONNECTED, str(peer_id)))

    # trio side: peers ---------------------------------------------------------------------------------

    def _running_host(self) -> IHost:
        if self._host is None or self._stop is None or self._stop.is_set():
            raise TransportError("the transport is not running")
        return self._host

    async def _trio_connect(self, peer: PeerInfo) -> ID:
        """A live connection to ``peer`` (dialled if needed); raises :class:`PeerUnreachableError`."""
        host = self._running_host()
        peer_id = _peer_id(peer)
        network = host.get_network()
        if self._trio_live_connection(peer_id):
            return peer_id
        if peer_id == host.get_id():
            raise unreachable(peer.peer_id, TransportError("that is this node"))
        addrs = _multiaddrs(peer.addrs)
        store = host.get_peerstore()
        if addrs:
            # the caller's addresses replace what the peerstore holds: libp2p dials one TCP address per
            # peer, so a stale one (a host restarted on a new port) would shadow the new one
            store.clear_addrs(peer_id)
            store.add_addrs(peer_id, addrs, _ADDR_TTL)
        elif not _known_addrs(host, peer_id):
            await self._trio_find_addrs(peer_id)
        # a failed dial blocks the peer for 60 s, even at a new address (a restarted host)
        unblock = getattr(network, "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)
        try:
            with trio.fail_after(self._settings.dial_timeout):
                await host.connect(Libp2pPeerInfo(peer_id, addrs))
        except Exception as exc:
            raise unreachable(peer.peer_id, exc) from exc
        return peer_id

    async def _trio_find_addrs(self, peer_id: ID) -> None:
        """Asks the DHT where a peer we have no address for listens (bounded by the dial timeout)."""
        dht = self._dht
        if dht is None:
            return
        with trio.move_on_after(self._settings.dial_timeout):
            try:
                found = await dht.find_peer(peer_id)
            except Exception as exc:
                _log.debug("DHT lookup of %s failed: %s", peer_id, exc)
                return
            if found is not None and found.addrs:
                self._running_host().get_peerstore().add_addrs(peer_id, found.addrs, _ADDR_TTL)

    async def _trio_open_stream(self, peer: PeerInfo, protocol_id: str) -> Libp2pStream:
        peer_id = await self._trio_connect(peer)
        host = self._running_host()
        try:
            with trio.fail_after(self._settings.stream_timeout):
                net = await host.new_stream(peer_id, [TProtocol(protocol_id)])
        except Exception as exc:
            if is_unsupported_protocol(exc):
                raise TransportError(
                    f"peer {peer.peer_id} does not support {protocol_id}", node_id=peer.peer_id
                ) from exc
            if is_reset(exc) and self._trio_live_connection(peer_id):
                # A handler that resets at once can make py-libp2p drop the protocol acceptance that
                # preceded the reset (a race under load): the stream exists, and it is reset.
                _log.debug("the %s stream to %s was reset during negotiation", protocol_id, peer.peer_id)
                return Libp2pStream.reset_by_peer(
                    self._bridge,
                    remote_peer=peer.peer_id,
                    protocol_id=protocol_id,
                    on_finished=self._stream_finished,
                )
            # the connection died under us (a peer that just left) or the peer stopped answering
            raise unreachable(peer.peer_id, exc) from exc
        return self._wrap(net, protocol_id)

    def _trio_live_connection(self, peer_id: ID) -> bool:
        """Whether a connection to the peer is up and not shutting down (yamux's flag is set first)."""
        for conn in self._running_host().get_network().get_connections(peer_id):
            shutting_down = getattr(conn.muxed_conn, "event_shutting_down", None)
            if not conn.is_closed and not (isinstance(shutting_down, trio.Event) and shutting_down.is_set()):
                return True
        return False

    async def _trio_ping(self, peer: PeerInfo) -> float:
        peer_id = await self._trio_connect(peer)
        host = self._running_host()
        stream: INetStream | None = None
        try:
            with trio.fail_after(self._settings.ping_timeout):
                stream = await host.new_stream(peer_id, [PING_PROTOCOL_ID])
                payload = secrets.token_bytes(_PING_BYTES)
                started = time.perf_counter()
                await stream.write(payload)
                echoed = b""
                while len(echoed) < _PING_BYTES:
                    echoed += await stream.read(_PING_BYTES - len(echoed))
                rtt = time.perf_counter() - started
                await stream.close()
        except Exception as exc:
            if stream is not None:
                with trio.move_on_after(self._settings.ping_timeout):
                    await _reset_quietly(stream)
            raise to_transport_error(exc, f"ping of {peer.peer_id} failed", peer.peer_id) from exc
        if echoed != payload:
            raise TransportError(f"ping of {peer.peer_id} failed: wrong echo", node_id=peer.peer_id)
        return rtt

    # trio side: DHT -----------------------------------------------------------------------------------

    def _running_dht(self) -> KadDHT:
        self._running_host()
        if self._dht is None:
            raise TransportError("the transport is not running")
        return self._dht

    async def _trio_provide(self, key: bytes) -> bool:
        dht = self._running_dht()
        try:
            announced = bool(await dht.provider_store.provide(_dht.provider_key(key)))
        except Exception as exc:
            raise to_transport_error(exc, "provide failed") from exc
        if not announced:  # the local record still answers whoever asks this node
            _log.debug("provided %s to no peer (no DHT peers yet)", key.hex())
        return announced

    async def _trio_find_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        dht = self._running_dht()
        try:
            found = await _dht.find_providers(dht, key, count)
        except Exception as exc:
            raise to_transport_error(exc, "find_providers failed") from exc
        return [PeerInfo(str(p.peer_id), tuple(str(addr) for addr in p.addrs)) for p in found]

    async def _trio_put_value(self, key: bytes, value: bytes) -> None:
        dht = self._running_dht()
        try:
            await dht.put_value(key.decode("ascii"), value)
        except ValueError as exc:  # the validator's refusal, or an older record than the one stored
            raise TransportError(f"record rejected: {exc}") from exc
        except Exception as exc:
            raise to_transport_error(exc, "put_value failed") from exc

    async def _trio_get_value(self, key: bytes) -> bytes | None:
        dht = self._running_dht()
        try:
            return await _dht.get_value(dht, key, self._clock)
        except Exception as exc:
            raise to_transport_error(exc, "get_value failed") from exc


class _PeerNotifee(INotifee):
    """Connection events of the swarm, turned into peer events (trio thread)."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self._transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._trio_on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._trio_on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def _peer_id(peer: PeerInfo) -> ID:
    try:
        return ID.from_base58(peer.peer_id)
    except Exception as exc:
        raise PeerUnreachableError(f"invalid peer id {peer.peer_id!r}", node_id=peer.peer_id) from exc


def _multiaddrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """Parsed addresses without their ``/p2p/<id>`` suffix; unparsable ones are skipped (they come from
    the network as often as from the caller)."""
    parsed = []
    for addr in addrs:
        try:
            parsed.append(multiaddr.Multiaddr(addr.split("/p2p/", 1)[0]))
        except Exception:
            _log.debug("skipping unparsable address %r", addr)
    return parsed


def _known_addrs(host: IHost, peer_id: ID) -> bool:
    try:
        return bool(host.get_peerstore().addrs(peer_id))
    except Exception:  # the peerstore raises for a peer it never heard of
        return False


async def _reset_quietly(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:
        _log.debug("reset failed: %s", exc)


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, as trio's nurseries raise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc

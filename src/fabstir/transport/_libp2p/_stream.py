"""A libp2p stream seen from asyncio.

Reads: a *pump* task in the trio thread reads ahead into an asyncio-side buffer, at most
:data:`READ_AHEAD` bytes beyond what the asyncio reader consumed (credit returned as it reads), so
yamux flow control still reaches the writer. A cancelled asyncio ``read`` loses nothing, a read costs
no thread round trip when data is buffered, and the pump drains the connection promptly — py-libp2p
drops buffered stream data when a connection dies.

Writes, close and reset: one bridged call each (the caller waits until yamux accepted the bytes, which
is the backpressure the contract promises).

py-libp2p reports a connection that died (SIGKILLed peer, failed health ping, peer's transport closed)
as a clean EOF on its streams; only a FIN received while the connection is alive is an EOF here, the
rest is a :class:`~fabstir.TransportError` — callers must not mistake a crash for the end of a reply.

Attributes are owned by one thread each: ``_net``, ``_credit``, ``_credit_wakeup``, ``_pump_scope``,
``_read_done``, ``_write_done`` by the trio thread; the rest by the asyncio thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import trio
from libp2p.network.stream.net_stream import NetStream

from ..._exceptions import TransportError
from ._errors import to_transport_error
from ._thread import TrioThread

__all__ = ["READ_AHEAD", "Libp2pStream"]

_log = logging.getLogger("fabstir.transport")

#: Bytes the pump reads ahead of the asyncio reader, on top of yamux's receive window (256 KiB, grown up
#: to 16 MiB while the reader keeps up): enough to keep the connection busy while asyncio processes a
#: chunk, small enough not to add much to what one unread stream can hold.
READ_AHEAD = 256 * 1024
#: Largest piece handed to yamux (its frame size) and so the largest stall one write timeout bounds.
_PIECE = 64 * 1024


class Libp2pStream:
    """Implements :class:`~fabstir.transport.Stream` over a py-libp2p ``NetStream``."""

    def __init__(
        self,
        bridge: TrioThread,
        net: NetStream | None,
        *,
        remote_peer: str,
        protocol_id: str,
        stream_timeout: float,
        on_finished: Callable[[Libp2pStream], None],
    ) -> None:
        self._bridge = bridge
        self._remote = remote_peer
        self._protocol_id = protocol_id
        self._stream_timeout = stream_timeout
        self._on_finished = on_finished
        # asyncio side
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of the first chunk already read
        self._readable = asyncio.Event()
        self._eof = False
        self._error: str | None = None
        self._write_closed = False
        self._reset = False
        self._consumed = 0  # read since credit was last returned to the pump
        # trio side
        self._net = net
        self._credit = READ_AHEAD
        self._credit_wakeup: trio.Event | None = None
        self._pump_scope = trio.CancelScope()
        self._read_done = False
        self._write_done = False

    @classmethod
    def reset_by_peer(
        cls,
        bridge: TrioThread,
        *,
        remote_peer: str,
        protocol_id: str,
        on_finished: Callable[[Libp2pStream], None],
    ) -> Libp2pStream:
        """A stream the peer reset before we could use it: every read and write raises."""
        stream = cls(
            bridge,
            None,
            remote_peer=remote_peer,
            protocol_id=protocol_id,
            stream_timeout=1.0,
            on_finished=on_finished,
        )
        stream._error = "stream reset by the peer"
        return stream

    @property
    def remote_peer(self) -> str:
        return self._remote

    @property
    def protocol_id(self) -> str:
        return self._protocol_id

    @property
    def finished(self) -> bool:
        """Both directions are over: EOF read and our side closed, or a reset or error."""
        return self._error is not None or (self._eof and self._write_closed)

    def __repr__(self) -> str:
        return f"<Libp2pStream {self._protocol_id} with {self._remote}>"

    # asyncio side ------------------------------------------------------------------------------------

    async def read(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        while not self._chunks:
            if self._error is not None:
                raise TransportError(self._error, node_id=self._remote)
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        out = self._take(max_bytes)
        self._consumed += len(out)
        if self._consumed >= READ_AHEAD // 4:
            self._bridge.call_soon(self._add_credit, self._consumed)
            self._consumed = 0
        return out

    def _take(self, max_bytes: int) -> bytes:
        head = self._chunks[0]
        if self._offset == 0 and len(head) <= max_bytes and len(self._chunks) == 1:
            self._chunks.popleft()  # the common case: hand the pump's chunk over as it is
            return head
        out = bytearray()
        while self._chunks and len(out) < max_bytes:
            head = self._chunks[0]
            end = min(len(head), self._offset + max_bytes - len(out))
            out += memoryview(head)[self._offset : end]
            if end == len(head):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end  # no slicing copies: small reads of a big chunk stay linear
        return bytes(out)

    async def write(self, data: bytes) -> None:
        """Returns once yamux accepted all of ``data``. A write cancelled midway may have sent part of it
        (reset the stream then); a peer that reads nothing for 5 s fails it (yamux's own limit)."""
        self._check_writable()
        if not data:
            return
        await self._bridge.call(lambda: self._trio_write(bytes(data)))

    async def close(self) -> None:
        """Half-close: the peer reads EOF after our data; we can still read its reply. Never raises for a
        stream that is already broken (its reader learns that anyway)."""
        if self._write_closed or self._reset or self._error is not None:
            self._write_closed = True
            return
        self._write_closed = True
        try:
            await self._bridge.call(self._trio_close)
        except TransportError as exc:
            _log.debug("closing %r failed: %s", self, exc)
        if self._eof:
            self._on_finished(self)

    async def reset(self) -> None:
        if self._reset:
            return
        self._reset = True
        self._fail("stream reset", keep_data=False)
        try:
            await self._bridge.call(self.trio_reset)
        except TransportError as exc:
            _log.debug("resetting %r failed: %s", self, exc)

    def _check_writable(self) -> None:
        if self._reset:
            raise TransportError("stream reset", node_id=self._remote)
        if self._write_closed:
            raise TransportError("stream closed for writing", node_id=self._remote)
        if self._error is not None:
            raise TransportError(self._error, node_id=self._remote)

    def _on_data(self, data: bytes) -> None:
        if self._error is None:
            self._chunks.append(data)
            self._readable.set()

    def _on_eof(self) -> None:
        self._eof = True
        self._readable.set()
        if self._write_closed:
            self._on_finished(self)

    def abort(self, message: str) -> None:
        """Fails the stream locally at once (the transport is closing): reads and writes raise."""
        self._fail(message, False)

    def discard(self) -> None:
        """Resets a stream nobody will use (its opener was cancelled, its protocol has no handler)."""
        self._fail("stream reset", False)
        self._bridge.spawn(self.trio_reset)

    def _fail(self, message: str, keep_data: bool = True) -> None:
        """Terminal error: later reads (after the buffered data, if kept) and writes raise."""
        if self._error is not None:
            return
        self._error = message
        if not keep_data:
            self._chunks.clear()
            self._offset = 0
        self._readable.set()
        self._on_finished(self)

    # trio side ---------------------------------------------------------------------------------------

    async def pump(self) -> None:
        """Reads the stream until EOF or error, handing the bytes to the asyncio side."""
        post = self._bridge.post
        net = self._net
        if net is None:
            return
        try:
            with self._pump_scope:
                while True:
                    while self._credit <= 0:
                        self._credit_wakeup = trio.Event()
                        await self._credit_wakeup.wait()
                    try:
                        data = await net.read(min(self._credit, _PIECE))
                    except Exception as exc:
                        self._read_done = True
                        if (
                            isinstance(exc, EOFError)
                            and not self._connection_lost()
                            and not self._was_reset()
                        ):
                            post(self._on_eof)
                            await self._finish_if_done()
                        else:
                            post(self._fail, self._read_failure(exc))
                        return
                    if not data:  # not expected from yamux with a size, but means EOF
                        self._read_done = True
                        post(self._on_eof)
                        await self._finish_if_done()
                        return
                    self._credit -= len(data)
                    post(self._on_data, data)
        except trio.Cancelled:
            post(self._fail, "transport closed")
            raise

    def _read_failure(self, exc: Exception) -> str:
        if self._connection_lost():
            return "connection to the peer lost"
        if self._was_reset() or "reset" in type(exc).__name__.lower():
            return "stream reset by the peer"
        return f"stream failed: {to_transport_error(exc, 'read').message}"

    def _connection_lost(self) -> bool:
        if self._net is None:
            return False
        conn = self._net.muxed_conn
        shutting_down = getattr(conn, "event_shutting_down", None)
        return bool(getattr(conn, "is_closed", False)) or (
            isinstance(shutting_down, trio.Event) and shutting_down.is_set()
        )

    def _was_reset(self) -> bool:
        # yamux drops a stream's bookkeeping when its RST arrives, so the pending read reports EOF
        return self._net is not None and bool(getattr(self._net.muxed_stream, "reset_received", False))

    def _add_credit(self, amount: int) -> None:
        self._credit += amount
        if self._credit_wakeup is not None:
            self._credit_wakeup.set()

    async def _trio_write(self, data: bytes) -> None:
        view = memoryview(data)
        net = self._net
        if net is None:
            raise TransportError("stream reset", node_id=self._remote)
        try:
            for start in range(0, len(view), _PIECE):
                # bounds a stall (a peer that stopped reading), not the whole transfer
                with trio.fail_after(self._stream_timeout):
                    await net.write(bytes(view[start : start + _PIECE]))
        except Exception as exc:
            # the reader is not told about a failed write unless we reset (FINDINGS.md)
            await self.trio_reset()
            if isinstance(exc, trio.TooSlowError):
                raise TransportError(
                    "write timed out: the peer is not reading", node_id=self._remote
                ) from exc
            raise to_transport_error(exc, "write failed", self._remote) from exc

    async def _trio_close(self) -> None:
        net = self._net
        if net is None:
            return
        try:
            with trio.fail_after(self._stream_timeout):
                await net.close_write()
        except Exception as exc:
            await self.trio_reset()
            raise to_transport_error(exc, "close failed", self._remote) from exc
        self._write_done = True
        await self._finish_if_done()

    async def trio_reset(self) -> None:
        """Resets the stream (trio thread): both sides' pending and later calls fail."""
        self._pump_scope.cancel()  # a read blocked in yamux is not woken by a local reset
        self._bridge.post(self._fail, "stream reset", False)
        self._read_done = self._write_done = True
        if self._net is None:
            return
        try:
            with trio.move_on_after(self._stream_timeout):
                await self._net.reset()  # also releases the stream's slot in the connection
        except Exception as exc:
            _log.debug("libp2p reset of %r failed: %s", self, exc)

    async def _finish_if_done(self) -> None:
        """Both directions ended cleanly: release the stream's slot in the connection (libp2p counts
        streams per connection and would otherwise keep the closed ones)."""
        if self._read_done and self._write_done and self._net is not None:
            try:
                with trio.move_on_after(self._stream_timeout):
                    await self._net.close()
            except Exception as exc:
                _log.debug("releasing %r failed: %s", self, exc)

"""Drives a sans-IO :class:`~fabstir.protocol.JobConnection` over a transport :class:`Stream`.

The only place where job frames meet I/O, shared by client and host. It buffers partial frames itself
(transport reads return whatever is available) and turns a clean EOF in the middle of a job into a
:class:`TransportError`: a crashed peer and a closed stream look the same to libp2p, so only an explicit
``End``/``Error`` frame means the job finished.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from .._exceptions import TransportError
from ..protocol import Frame, JobConnection, Role
from ..transport import Stream

__all__ = ["FrameChannel"]

#: One transport read; frames larger than this arrive over several reads.
_READ_SIZE = 64 * 1024


class FrameChannel:
    def __init__(self, stream: Stream, role: Role) -> None:
        self.stream = stream
        self.connection = JobConnection(role)
        self._pending: collections.deque[Frame] = collections.deque()
        self.bytes_received = 0
        self.bytes_sent = 0
        self._eof = False

    @property
    def peer_id(self) -> str:
        return self.stream.remote_peer

    async def send(self, *frames: Frame) -> None:
        """Encodes and writes frames in one write (e.g. ``Hello`` + ``Request``)."""
        data = b"".join(self.connection.send(frame) for frame in frames)
        self.bytes_sent += len(data)
        await self.stream.write(data)

    async def receive(self) -> Frame:
        """The next frame. Raises :class:`RemoteProtocolError` for bad bytes and :class:`TransportError`
        if the stream ends (EOF or reset) first. Bound it with ``asyncio.timeout`` at the call site."""
        while not self._pending:
            if self._eof:
                raise TransportError("the peer closed the stream", node_id=self.peer_id)
            data = await self.stream.read(_READ_SIZE)
            if not data:
                self._eof = True
                continue
            self.bytes_received += len(data)
            self._pending.extend(self.connection.receive_data(data))
        return self._pending.popleft()

    async def close(self) -> None:
        with contextlib.suppress(TransportError):
            await self.stream.close()

    async def linger_close(self, timeout: float = 1.0) -> None:
        """Ends the stream without losing what we just wrote: close our side, let the peer read it and close
        theirs (frames it still sends are discarded); reset only if the peer does not finish in time. Once
        both sides closed the stream is done — a reset then could still destroy our last frames in the
        peer's buffer (a final receipt after the host's ``Error``), which the transports drop on reset."""
        finished = False
        with contextlib.suppress(TransportError, TimeoutError):
            await self.stream.close()
            async with asyncio.timeout(timeout):
                while await self.stream.read(_READ_SIZE):
                    pass
                finished = True
        if not finished:
            with contextlib.suppress(TransportError):
                await self.stream.reset()

    async def reset(self) -> None:
        with contextlib.suppress(TransportError):
            await self.stream.reset()

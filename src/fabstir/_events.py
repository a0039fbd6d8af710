"""Typed events, delivered to callbacks (``sdk.on(name, cb)`` → unsubscribe) and to async iterators.

The names are the TypeScript SDK's (``job:submitted``, ``stream:token``, ...): :class:`EventName` is a
``StrEnum``, so plain strings work wherever a name is expected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = ["Event", "EventBus", "EventName"]

_log = logging.getLogger("fabstir.events")


class EventName(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    P2P_STARTED = "p2p:started"
    P2P_STOPPED = "p2p:stopped"
    P2P_PEER_CONNECT = "p2p:peer:connect"
    P2P_PEER_DISCONNECT = "p2p:peer:disconnect"
    P2P_CONNECTION_RETRY = "p2p:connection:retry"
    P2P_CONNECTION_FAILED = "p2p:connection:failed"
    DISCOVERY_START = "discovery:start"
    DISCOVERY_COMPLETE = "discovery:complete"
    NODES_DISCOVERED = "nodes:discovered"
    NEGOTIATION_START = "negotiation:start"
    NEGOTIATION_OFFER = "negotiation:offer"
    NEGOTIATION_COMPLETE = "negotiation:complete"
    JOB_SUBMITTED = "job:submitted"
    JOB_NEGOTIATED = "job:negotiated"
    JOB_POSTED = "job:posted"
    JOB_CLAIMED = "job:claimed"
    JOB_PROCESSING = "job:processing"
    JOB_COMPLETED = "job:completed"
    JOB_FAILED = "job:failed"
    JOB_CANCELLED = "job:cancelled"
    JOB_FAILOVER = "job:failover"
    JOB_STATUS = "job:status"
    STREAM_START = "stream:start"
    STREAM_TOKEN = "stream:token"
    STREAM_END = "stream:end"
    STREAM_ERROR = "stream:error"
    PAYMENT_ESCROWED = "payment:escrowed"
    PAYMENT_RELEASED = "payment:released"
    PAYMENT_REFUNDED = "payment:refunded"
    PAYMENT_DISPUTED = "payment:disputed"
    NODE_FAILURE = "node:failure"
    NODE_RELIABILITY_ALERT = "node:reliability-alert"
    CHAIN_REORG = "chain:reorg"
    STATE_CONFLICT = "state:conflict"


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``data`` is read-only; ``job_id`` / ``node_id`` are set when the event concerns one."""

    name: EventName
    timestamp: float
    job_id: int | None = None
    node_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


Callback = Callable[[Event], object]
#: An async iterator that falls this far behind loses the oldest events (and logs it): a slow consumer
#: must not make the SDK's memory grow without bound.
_QUEUE_LIMIT = 10_000


class EventBus:
    """Synchronous fan-out. A callback that raises is logged and does not stop the others."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._callbacks: dict[str, list[Callback]] = {}
        # Weak: an iterator its owner dropped without closing must not keep collecting events forever.
        self._iterators: weakref.WeakSet[_EventIterator] = weakref.WeakSet()

    def on(self, name: str, callback: Callback) -> Callable[[], None]:
        """Subscribes ``callback`` to ``name`` (``"*"`` for every event); returns the unsubscribe function."""
        key = "*" if name == "*" else str(EventName(name))
        self._callbacks.setdefault(key, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._callbacks.get(key, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def emit(
        self, name: EventName | str, *, job_id: int | None = None, node_id: str | None = None, **data: Any
    ) -> Event:
        name = EventName(name)
        event = Event(name, self._clock(), job_id, node_id, MappingProxyType(data))
        for callback in (*self._callbacks.get(name.value, ()), *self._callbacks.get("*", ())):
            try:
                callback(event)
            except Exception:
                _log.exception("event callback for %s raised", name.value)
        for iterator in list(self._iterators):
            iterator._offer(event)
        return event

    def iterate(self, names: Iterable[str] | None = None) -> AsyncIterator[Event]:
        """Yields events (all, or those named) until :meth:`close` is called.

        The iterator receives every event emitted from the moment this method returns, even before the
        first ``anext``; ``aclose()`` on it unsubscribes early.
        """
        wanted = None if names is None else frozenset(str(EventName(n)) for n in names)
        iterator = _EventIterator(self, wanted)
        self._iterators.add(iterator)
        return iterator

    def close(self) -> None:
        """Ends every running iterator."""
        for iterator in list(self._iterators):
            iterator._end()
        self._iterators.clear()


class _EventIterator:
    """One subscriber's queue of events, registered with its bus from creation until it ends."""

    def __init__(self, bus: EventBus, names: frozenset[str] | None) -> None:
        self._bus = bus
        self._names = names
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ended = False

    def _offer(self, event: Event) -> None:
        if self._names is not None and event.name.value not in self._names:
            return
        if self._queue.qsize() >= _QUEUE_LIMIT:
            self._queue.get_nowait()
            _log.warning("event iterator fell behind; dropped the oldest event")
        self._queue.put_nowait(event)

    def _end(self) -> None:
        self._bus._iterators.discard(self)
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> Event:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Unsubscribes; events already queued are dropped. Idempotent."""
        # Drain before queueing the end marker, so a reader waiting in another task still receives it.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._end()

"""The event bus: callbacks by name and for everything, unsubscribe, error isolation, async iterators."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging

import pytest

from fabstir._events import Event, EventBus, EventName, _EventIterator

#: Safety bound for awaiting other tasks: a missed wake-up fails the test instead of hanging it.
BOUND = 2.0


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("member", "wire"),
    [
        (EventName.JOB_SUBMITTED, "job:submitted"),
        (EventName.STREAM_TOKEN, "stream:token"),
        (EventName.P2P_CONNECTION_RETRY, "p2p:connection:retry"),
        (EventName.NODE_RELIABILITY_ALERT, "node:reliability-alert"),
        (EventName.CONNECTED, "connected"),
        (EventName.PAYMENT_ESCROWED, "payment:escrowed"),
        (EventName.CHAIN_REORG, "chain:reorg"),
        (EventName.STATE_CONFLICT, "state:conflict"),
    ],
)
def test_event_names_are_the_typescript_names(member: EventName, wire: str) -> None:
    """EventName values are the TypeScript SDK's event names and compare equal to plain strings."""
    assert member == wire
    assert EventName(wire) is member


def test_every_spec_event_name_exists() -> None:
    """Every event name listed in the spec is an EventName."""
    spec = [
        "connected",
        "disconnected",
        "error",
        "p2p:started",
        "p2p:stopped",
        "p2p:peer:connect",
        "p2p:peer:disconnect",
        "p2p:connection:retry",
        "p2p:connection:failed",
        "discovery:start",
        "discovery:complete",
        "nodes:discovered",
        "negotiation:start",
        "negotiation:offer",
        "negotiation:complete",
        "job:submitted",
        "job:negotiated",
        "job:posted",
        "job:claimed",
        "job:completed",
        "job:failed",
        "job:failover",
        "stream:start",
        "stream:token",
        "stream:end",
        "stream:error",
        "payment:escrowed",
        "payment:released",
        "payment:refunded",
        "payment:disputed",
        "node:failure",
        "node:reliability-alert",
        "chain:reorg",
        "state:conflict",
    ]
    assert set(spec) <= {name.value for name in EventName}


def test_callbacks_receive_events_by_name() -> None:
    """A callback subscribed to a name receives exactly the events of that name, with their fields."""
    bus = EventBus(clock=FakeClock())
    submitted: list[Event] = []
    bus.on("job:submitted", submitted.append)
    bus.emit(EventName.JOB_SUBMITTED, job_id=3, node_id="peer-1", model="m1")
    bus.emit(EventName.STREAM_TOKEN, job_id=3, index=0)
    assert len(submitted) == 1
    event = submitted[0]
    assert event.name is EventName.JOB_SUBMITTED
    assert (event.job_id, event.node_id, event.timestamp) == (3, "peer-1", 1_700_000_000.0)
    assert dict(event.data) == {"model": "m1"}


def test_subscribing_with_the_enum_and_emitting_with_a_string() -> None:
    """Names are interchangeable as enum members or plain strings, for on() and emit() alike."""
    bus = EventBus()
    seen: list[Event] = []
    bus.on(EventName.STREAM_END, seen.append)
    event = bus.emit("stream:end", job_id=1)
    assert seen == [event]
    assert event.name is EventName.STREAM_END


def test_star_receives_every_event() -> None:
    """A callback subscribed to "*" receives every event, after the callbacks for that name."""
    bus = EventBus()
    order: list[str] = []
    bus.on("*", lambda e: order.append(f"*:{e.name}"))
    bus.on("job:failed", lambda e: order.append(f"named:{e.name}"))
    bus.emit(EventName.JOB_FAILED)
    bus.emit(EventName.CONNECTED)
    assert order == ["named:job:failed", "*:job:failed", "*:connected"]


def test_emit_returns_the_event_it_delivered() -> None:
    """emit() returns the Event object the callbacks received."""
    bus = EventBus()
    seen: list[Event] = []
    bus.on("*", seen.append)
    assert bus.emit(EventName.ERROR, message="x") is seen[0]


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    """The function returned by on() removes that subscription; calling it again is harmless and other
    subscribers keep receiving."""
    bus = EventBus()
    first: list[Event] = []
    second: list[Event] = []
    unsubscribe = bus.on("connected", first.append)
    bus.on("connected", second.append)
    bus.emit(EventName.CONNECTED)
    unsubscribe()
    unsubscribe()
    bus.emit(EventName.CONNECTED)
    assert (len(first), len(second)) == (1, 2)


def test_unsubscribing_during_emit_is_safe() -> None:
    """A callback that unsubscribes itself while being called does not make others miss the event."""
    bus = EventBus()
    seen: list[str] = []

    def once(event: Event) -> None:
        seen.append("once")
        unsubscribe()

    unsubscribe = bus.on("connected", once)
    bus.on("connected", lambda e: seen.append("always"))
    bus.emit(EventName.CONNECTED)
    bus.emit(EventName.CONNECTED)
    assert seen == ["once", "always", "always"]


def test_a_raising_callback_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in one callback is logged on ``fabstir.events`` and the remaining callbacks still run;
    emit() itself does not raise."""
    bus = EventBus()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("callback bug")

    bus.on("job:completed", broken)
    bus.on("job:completed", seen.append)
    bus.on("*", seen.append)
    with caplog.at_level(logging.ERROR, logger="fabstir.events"):
        bus.emit(EventName.JOB_COMPLETED, job_id=9)
    assert len(seen) == 2
    [record] = [r for r in caplog.records if r.name == "fabstir.events"]
    assert "job:completed" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_unknown_event_names_are_value_errors() -> None:
    """Subscribing to, emitting or iterating a name that is not an event raises ValueError."""
    bus = EventBus()
    with pytest.raises(ValueError, match="job:exploded"):
        bus.on("job:exploded", lambda event: None)
    with pytest.raises(ValueError, match="job:exploded"):
        bus.emit("job:exploded")
    with pytest.raises(ValueError, match="job:exploded"):
        bus.iterate(["job:exploded"])


def test_event_data_is_read_only() -> None:
    """Event is frozen and its data mapping cannot be changed by a subscriber."""
    event = EventBus().emit(EventName.NODE_FAILURE, node_id="p", error="x")
    with pytest.raises(TypeError):
        event.data["error"] = "changed"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.job_id = 1  # type: ignore[misc]
    assert Event(EventName.ERROR, 0.0).data == {}


async def test_iterate_receives_every_event_until_close() -> None:
    """iterate() yields every event emitted after it was called, in order, and ends at close()."""
    bus = EventBus()
    events = bus.iterate()
    bus.emit(EventName.JOB_SUBMITTED, job_id=1)  # before the first anext: still delivered
    bus.emit(EventName.STREAM_TOKEN, job_id=1)
    bus.close()
    bus.emit(EventName.JOB_COMPLETED, job_id=1)  # after close: not delivered
    async with asyncio.timeout(BOUND):
        names = [event.name async for event in events]
    assert names == [EventName.JOB_SUBMITTED, EventName.STREAM_TOKEN]


async def test_iterate_filters_by_name() -> None:
    """iterate(names) yields only the events named."""
    bus = EventBus()
    events = bus.iterate(["job:completed", EventName.JOB_FAILED])
    for name in (
        EventName.JOB_SUBMITTED,
        EventName.JOB_COMPLETED,
        EventName.STREAM_TOKEN,
        EventName.JOB_FAILED,
    ):
        bus.emit(name)
    bus.close()
    async with asyncio.timeout(BOUND):
        names = [event.name async for event in events]
    assert names == [EventName.JOB_COMPLETED, EventName.JOB_FAILED]


async def test_iterate_wakes_a_waiting_consumer() -> None:
    """A consumer task waiting in the iterator receives events as they are emitted, and stops at close()."""
    bus = EventBus()
    received: list[Event] = []
    got = asyncio.Event()

    events = bus.iterate()

    async def consume() -> None:
        async for event in events:
            received.append(event)
            got.set()

    consumer = asyncio.create_task(consume())
    async with asyncio.timeout(BOUND):
        for i in range(3):
            got.clear()
            bus.emit(EventName.STREAM_TOKEN, index=i)
            await got.wait()
        bus.close()
        await consumer
    assert [e.data["index"] for e in received] == [0, 1, 2]


async def test_several_iterators_each_receive_every_event() -> None:
    """Each iterator has its own queue: all of them see every event."""
    bus = EventBus()
    first, second = bus.iterate(), bus.iterate()
    bus.emit(EventName.CONNECTED)
    bus.emit(EventName.DISCONNECTED)
    bus.close()
    async with asyncio.timeout(BOUND):
        assert (
            [e.name async for e in first] == [e.name async for e in second] == ["connected", "disconnected"]
        )


async def test_aclose_unsubscribes_an_iterator() -> None:
    """aclose() on an iterator ends it at once and it receives nothing more; others are unaffected."""
    bus = EventBus()
    closed, kept = bus.iterate(), bus.iterate()
    bus.emit(EventName.CONNECTED)
    assert isinstance(closed, _EventIterator)
    await closed.aclose()
    await closed.aclose()  # idempotent
    bus.emit(EventName.DISCONNECTED)
    bus.close()
    async with asyncio.timeout(BOUND):
        assert [e async for e in closed] == []
        assert [e.name async for e in kept] == ["connected", "disconnected"]


async def test_an_abandoned_iterator_stops_collecting() -> None:
    """An iterator nobody holds any more is dropped by the bus instead of queueing events forever."""
    bus = EventBus()
    bus.iterate()
    gc.collect()
    assert len(bus._iterators) == 0


async def test_bus_can_be_iterated_again_after_close() -> None:
    """close() ends the running iterators; an iterator created afterwards works normally."""
    bus = EventBus()
    bus.close()
    events = bus.iterate()
    bus.emit(EventName.CONNECTED)
    bus.close()
    async with asyncio.timeout(BOUND):
        assert [e.name async for e in events] == ["connected"]


async def test_aclose_ends_a_consumer_waiting_in_another_task() -> None:
    """aclose() from another task ends a consumer that is waiting for the next event."""
    bus = EventBus()
    events = bus.iterate()
    assert isinstance(events, _EventIterator)
    got = asyncio.Event()
    received: list[Event] = []

    async def consume() -> None:
        async for event in events:
            received.append(event)
            got.set()

    consumer = asyncio.create_task(consume())
    bus.emit(EventName.CONNECTED)
    async with asyncio.timeout(BOUND):
        await got.wait()  # the consumer is now waiting for the next event
        await events.aclose()
        await consumer
    assert [e.name for e in received] == ["connected"]

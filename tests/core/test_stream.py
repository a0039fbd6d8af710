"""Client-side token streams: a TokenBuffer filled by the job runner, ResponseStream readers over it."""

from __future__ import annotations

import asyncio

import pytest

from fabstir._exceptions import HostError, InvalidStateError
from fabstir._models import FinishReason, StreamSummary, Token
from fabstir.core._stream import ResponseStream, TokenBuffer

JOB = 7
#: Safety bound for awaiting other tasks: a broken wake-up fails the test instead of hanging it.
BOUND = 2.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tokens(start: int, stop: int) -> list[Token]:
    return [Token(index=i, text=f"t{i} ", timestamp=1_700_000_000.0 + i) for i in range(start, stop)]


def summary(total: int = 3, reason: FinishReason = FinishReason.STOP) -> StreamSummary:
    return StreamSummary(total_tokens=total, duration=1.5, finish_reason=reason, text="t0 t1 t2 ")


async def drain(stream: ResponseStream) -> list[int]:
    return [token.index async for token in stream]


# -- reading -------------------------------------------------------------------------------------------


async def test_reader_yields_tokens_in_order_as_they_arrive() -> None:
    """A reader blocked on an empty buffer receives each token as another task appends it, in order."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    received: list[int] = []
    got = asyncio.Event()

    async def read() -> None:
        async for token in stream:
            received.append(token.index)
            got.set()

    reader = asyncio.create_task(read())
    async with asyncio.timeout(BOUND):
        for i in range(5):
            got.clear()
            buffer.append(tokens(i, i + 1))
            await got.wait()  # the reader woke up for exactly this token
            assert received == list(range(i + 1))
        buffer.finish(summary(5))
        await reader
    assert received == [0, 1, 2, 3, 4]


async def test_batches_are_yielded_token_by_token() -> None:
    """A batch appended at once is handed out one token at a time, in order."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 3))
    buffer.append(tokens(3, 5))
    buffer.finish(summary(5))
    assert await drain(ResponseStream(JOB, buffer)) == [0, 1, 2, 3, 4]


async def test_resume_from_starts_at_that_index() -> None:
    """``resume_from=n`` replays from token n: earlier tokens are skipped, later ones all arrive."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 6))
    buffer.finish(summary(6))
    stream = ResponseStream(JOB, buffer, resume_from=4)
    assert stream.position == 4
    assert await drain(stream) == [4, 5]


async def test_resume_from_beyond_the_buffer_waits_for_that_token() -> None:
    """A reader resumed past the tokens received so far waits until its token arrives."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 2))
    stream = ResponseStream(JOB, buffer, resume_from=3)
    reader = asyncio.create_task(drain(stream))
    buffer.append(tokens(2, 5))
    buffer.finish(summary(5))
    async with asyncio.timeout(BOUND):
        assert await reader == [3, 4]


async def test_negative_resume_from_is_rejected() -> None:
    """A negative resume index is an InvalidStateError naming the job."""
    with pytest.raises(InvalidStateError) as info:
        ResponseStream(JOB, TokenBuffer(), resume_from=-1)
    assert info.value.job_id == JOB


async def test_two_readers_each_see_every_token_once() -> None:
    """Several readers over one buffer are independent: each receives every token exactly once."""
    buffer = TokenBuffer()
    first_seen = [asyncio.Event(), asyncio.Event()]

    async def read(seen: asyncio.Event) -> list[int]:
        received: list[int] = []
        async for token in ResponseStream(JOB, buffer):
            received.append(token.index)
            seen.set()
        return received

    readers = [asyncio.create_task(read(seen)) for seen in first_seen]
    buffer.append(tokens(0, 2))
    async with asyncio.timeout(BOUND):
        for seen in first_seen:  # both readers are mid-stream before the rest arrives
            await seen.wait()
        buffer.append(tokens(2, 3))
        buffer.append(tokens(3, 6))
        buffer.finish(summary(6))
        assert await asyncio.gather(*readers) == [[0, 1, 2, 3, 4, 5]] * 2


async def test_text_and_position_follow_the_stream() -> None:
    """``text`` is everything received so far; ``position`` the index of the next token to hand out."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 2))
    stream = ResponseStream(JOB, buffer)
    assert stream.text == "t0 t1 "
    await anext(stream)
    assert stream.position == 1
    assert not stream.is_done


# -- pause / resume ------------------------------------------------------------------------------------


async def test_pause_stops_handing_out_tokens_until_resume() -> None:
    """While paused no token is handed out even if buffered; tokens keep arriving; resume() continues
    from where the reader was."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 2))
    stream = ResponseStream(JOB, buffer)
    assert (await anext(stream)).index == 0
    stream.pause()
    paused = stream.is_paused
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.05)
    buffer.append(tokens(2, 3))
    assert stream.position == 1  # the cancelled read consumed nothing
    stream.resume()
    assert (paused, stream.is_paused) == (True, False)
    assert (await anext(stream)).index == 1
    assert (await anext(stream)).index == 2


async def test_pause_holds_a_reader_that_is_waiting_for_tokens() -> None:
    """A reader already waiting for tokens when the stream is paused does not receive a token that
    arrives during the pause until resume()."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    received: list[int] = []
    got = asyncio.Event()

    async def read() -> None:
        async for token in stream:
            received.append(token.index)
            got.set()

    reader = asyncio.create_task(read())
    buffer.append(tokens(0, 1))
    async with asyncio.timeout(BOUND):
        await got.wait()  # the reader is now waiting for token 1
    got.clear()
    stream.pause()
    buffer.append(tokens(1, 2))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(got.wait(), 0.05)
    assert received == [0]
    stream.resume()
    async with asyncio.timeout(BOUND):
        await got.wait()
        assert received == [0, 1]
        buffer.finish(summary(2))
        await reader


# -- the end of the job --------------------------------------------------------------------------------


async def test_finish_ends_iteration_and_provides_the_summary() -> None:
    """After finish() the reader gets the remaining tokens, then iteration stops; get_final_summary()
    returns the summary and finish_reason its reason."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    buffer.append(tokens(0, 3))
    buffer.finish(summary(3, FinishReason.LENGTH))
    assert await drain(stream) == [0, 1, 2]
    assert stream.get_final_summary() == summary(3, FinishReason.LENGTH)
    assert stream.finish_reason is FinishReason.LENGTH
    assert stream.is_done


async def test_summary_before_finish_is_an_invalid_state() -> None:
    """get_final_summary() before the job ended raises InvalidStateError; finish_reason is None."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 1))
    stream = ResponseStream(JOB, buffer)
    with pytest.raises(InvalidStateError):
        stream.get_final_summary()
    assert stream.finish_reason is None


async def test_wait_for_summary_returns_once_the_job_ends() -> None:
    """wait_for_summary() waits for finish() without consuming tokens."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    waiter = asyncio.create_task(stream.wait_for_summary())
    buffer.append(tokens(0, 3))
    buffer.finish(summary(3))
    async with asyncio.timeout(BOUND):
        assert await waiter == summary(3)
    assert stream.position == 0


async def test_fail_raises_after_the_buffered_tokens() -> None:
    """fail(error): a reader first receives every token already buffered, then the job's error."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    error = HostError("model crashed", job_id=JOB, node_id="peer-1")
    buffer.append(tokens(0, 2))
    buffer.fail(error)
    assert (await anext(stream)).index == 0
    assert (await anext(stream)).index == 1
    with pytest.raises(HostError) as info:
        await anext(stream)
    assert info.value is error
    with pytest.raises(HostError):
        stream.get_final_summary()


async def test_fail_wakes_a_waiting_reader() -> None:
    """A reader waiting for tokens receives the error as soon as the job fails."""
    buffer = TokenBuffer()
    reader = asyncio.create_task(drain(ResponseStream(JOB, buffer)))
    buffer.fail(HostError("gone"))
    async with asyncio.timeout(BOUND):
        with pytest.raises(HostError, match="gone"):
            await reader


async def test_only_the_first_ending_counts() -> None:
    """Once a job has finished or failed, later finish()/fail() calls change nothing."""
    finished = TokenBuffer()
    finished.finish(summary(0))
    finished.fail(HostError("late"))
    assert finished.error is None
    assert finished.summary == summary(0)

    failed = TokenBuffer()
    failed.fail(HostError("first"))
    failed.finish(summary(0))
    assert failed.summary is None
    assert failed.error is not None
    assert failed.error.message == "first"


# -- close ---------------------------------------------------------------------------------------------


class CloseRecorder:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def test_close_stops_iteration_and_cancels_a_running_job() -> None:
    """close() ends iteration (even with tokens buffered) and calls on_close, once, when the job is
    still running."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 3))
    on_close = CloseRecorder()
    stream = ResponseStream(JOB, buffer, on_close=on_close)
    await anext(stream)
    await stream.close()
    await stream.close()
    assert on_close.calls == 1
    assert stream.is_done
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_close_after_the_job_ended_does_not_call_on_close() -> None:
    """Closing a stream whose job already finished or failed leaves the job alone."""
    for end in ("finish", "fail"):
        buffer = TokenBuffer()
        if end == "finish":
            buffer.finish(summary(0))
        else:
            buffer.fail(HostError("boom"))
        on_close = CloseRecorder()
        await ResponseStream(JOB, buffer, on_close=on_close).close()
        assert on_close.calls == 0, end


async def test_close_wakes_a_reader_waiting_for_tokens() -> None:
    """close() from another task ends a reader that is blocked waiting for the next token."""
    buffer = TokenBuffer()
    stream = ResponseStream(JOB, buffer)
    got = asyncio.Event()
    received: list[int] = []

    async def read() -> None:
        async for token in stream:
            received.append(token.index)
            got.set()

    reader = asyncio.create_task(read())
    buffer.append(tokens(0, 1))
    async with asyncio.timeout(BOUND):
        await got.wait()  # the reader is now waiting for token 1
        await stream.close()
        await reader
    assert received == [0]


async def test_close_wakes_a_paused_reader() -> None:
    """close() also ends a reader held by pause()."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 2))
    stream = ResponseStream(JOB, buffer)
    paused = asyncio.Event()
    received: list[int] = []

    async def read() -> None:
        async for token in stream:
            received.append(token.index)
            stream.pause()
            paused.set()

    reader = asyncio.create_task(read())
    async with asyncio.timeout(BOUND):
        await paused.wait()  # the reader is now held by the pause, with token 1 buffered
        await stream.close()
        await reader
    assert received == [0]


async def test_async_with_closes_the_stream() -> None:
    """Leaving ``async with`` closes the stream (and so cancels a job still running), also on error."""
    buffer = TokenBuffer()
    buffer.append(tokens(0, 3))
    on_close = CloseRecorder()
    async with ResponseStream(JOB, buffer, on_close=on_close) as stream:
        assert (await anext(stream)).index == 0
    assert on_close.calls == 1
    assert stream.is_done

    on_close = CloseRecorder()
    with pytest.raises(RuntimeError, match="user code"):
        async with ResponseStream(JOB, TokenBuffer(), on_close=on_close):
            raise RuntimeError("user code")
    assert on_close.calls == 1


# -- metrics -------------------------------------------------------------------------------------------


async def test_metrics_from_a_fake_clock() -> None:
    """Metrics follow the arrival times: first-token latency from the buffer's start, mean and p99 of
    the gaps between tokens, tokens/s over the streaming span, bytes, and elapsed time until finish."""
    clock = FakeClock(100.0)
    buffer = TokenBuffer(monotonic=clock)
    for at, (start, stop), nbytes in [
        (100.5, (0, 1), 10),
        (100.7, (1, 2), 10),
        (101.0, (2, 3), 10),
        (101.2, (3, 4), 12),
    ]:
        clock.now = at
        buffer.append(tokens(start, stop), nbytes)
    clock.now = 102.0
    metrics = ResponseStream(JOB, buffer).get_metrics()
    assert metrics.tokens_received == 4
    assert metrics.time_to_first_token == pytest.approx(0.5)
    assert metrics.mean_inter_token_latency == pytest.approx((0.2 + 0.3 + 0.2) / 3)
    assert metrics.p99_inter_token_latency == pytest.approx(0.3)
    assert metrics.tokens_per_second == pytest.approx(3 / 0.7)  # 3 gaps over 0.7 s of streaming
    assert metrics.bytes_received == 42
    assert metrics.elapsed == pytest.approx(2.0)

    clock.now = 103.0
    buffer.finish(summary(4))
    clock.now = 500.0
    assert buffer.metrics().elapsed == pytest.approx(3.0)  # frozen at finish


async def test_metrics_before_any_token() -> None:
    """With no token yet the latencies are None and the rate is 0."""
    clock = FakeClock(10.0)
    buffer = TokenBuffer(monotonic=clock)
    clock.now = 12.0
    metrics = buffer.metrics()
    assert metrics.tokens_received == 0
    assert metrics.tokens_per_second == 0.0
    assert metrics.time_to_first_token is None
    assert metrics.mean_inter_token_latency is None
    assert metrics.p99_inter_token_latency is None
    assert metrics.elapsed == pytest.approx(2.0)


async def test_metrics_with_a_single_arrival_use_the_elapsed_time() -> None:
    """When every token arrived at once there is no streaming span: the rate is tokens / elapsed, and the
    gaps inside the batch are zero."""
    clock = FakeClock(0.0)
    buffer = TokenBuffer(monotonic=clock)
    clock.now = 1.0
    buffer.append(tokens(0, 3))
    clock.now = 2.0
    metrics = buffer.metrics()
    assert metrics.tokens_per_second == pytest.approx(3 / 2.0)
    assert metrics.time_to_first_token == pytest.approx(1.0)
    assert metrics.mean_inter_token_latency == 0.0
    assert metrics.p99_inter_token_latency == 0.0


async def test_p99_picks_the_99th_percentile_gap() -> None:
    """With 200 gaps, p99 is the gap at rank int(0.99 × 200) of the sorted gaps: one outlier among
    many short gaps does not dominate it, but the slowest ones do."""
    clock = FakeClock(0.0)
    buffer = TokenBuffer(monotonic=clock)
    gaps = [0.01] * 197 + [0.5, 0.6, 0.9]
    clock.now = 0.0
    buffer.append(tokens(0, 1))
    for i, gap in enumerate(gaps, start=1):
        clock.now += gap
        buffer.append(tokens(i, i + 1))
    metrics = buffer.metrics()
    assert metrics.p99_inter_token_latency == pytest.approx(0.6)
    assert metrics.mean_inter_token_latency == pytest.approx(sum(gaps) / len(gaps))


async def test_metrics_since_measures_from_the_given_time() -> None:
    """``since`` replaces the buffer's start for first-token latency and elapsed time."""
    clock = FakeClock(0.0)
    buffer = TokenBuffer(monotonic=clock)
    clock.now = 5.0
    buffer.append(tokens(0, 1))
    metrics = buffer.metrics(since=4.0)
    assert metrics.time_to_first_token == pytest.approx(1.0)
    assert metrics.elapsed == pytest.approx(1.0)

"""Client-side token streams.

A job's tokens land in a :class:`TokenBuffer` (one per job, filled by the job runner). A
:class:`ResponseStream` is a reader over it: an async iterator *and* an async context manager, with
pause/resume, metrics and a final summary. Several readers may read one job (``resume_from`` replays
from any index), and a reader never loses or repeats a token.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from .._exceptions import FabstirError, InvalidStateError
from .._models import FinishReason, StreamMetrics, StreamSummary, Token

__all__ = ["ResponseStream", "TokenBuffer"]


class TokenBuffer:
    """Every token of one job, in order, plus how the job ended."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.tokens: list[Token] = []
        self.arrival: list[float] = []  # monotonic arrival time per token
        self.bytes_received = 0
        self.started_at = monotonic()
        self.finished_at: float | None = None
        self.summary: StreamSummary | None = None
        self.error: FabstirError | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.summary is not None or self.error is not None

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def append(self, tokens: list[Token], nbytes: int = 0) -> None:
        now = self._monotonic()
        self.tokens.extend(tokens)
        self.arrival.extend(now for _ in tokens)
        self.bytes_received += nbytes
        self.wake()

    def finish(self, summary: StreamSummary) -> None:
        if not self.done:
            self.summary = summary
            self.finished_at = self._monotonic()
            self.wake()

    def fail(self, error: FabstirError) -> None:
        if not self.done:
            self.error = error
            self.finished_at = self._monotonic()
            self.wake()

    def wake(self) -> None:
        """Wakes every task in :meth:`wait_changed` (new tokens and the end of the job do this too)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self) -> None:
        """Returns at the next :meth:`append`, :meth:`finish`, :meth:`fail` or :meth:`wake`."""
        await self._changed.wait()

    async def wait_beyond(self, count: int) -> None:
        """Returns once more than ``count`` tokens are buffered, or the job has ended."""
        while len(self.tokens) <= count and not self.done:
            await self._changed.wait()

    def metrics(self, since: float | None = None) -> StreamMetrics:
        start = self.started_at if since is None else since
        end = self.finished_at if self.finished_at is not None else self._monotonic()
        elapsed = max(end - start, 1e-9)
        gaps = [b - a for a, b in zip(self.arrival, self.arrival[1:], strict=False)]
        p99: float | None = None
        if gaps:
            ordered = sorted(gaps)
            p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        first = self.arrival[0] - start if self.arrival else None
        streaming = (self.arrival[-1] - self.arrival[0]) if len(self.arrival) > 1 else 0.0
        rate = (len(self.tokens) - 1) / streaming if streaming > 0 else (len(self.tokens) / elapsed)
        return StreamMetrics(
            tokens_received=len(self.tokens),
            tokens_per_second=rate,
            time_to_first_token=first,
            mean_inter_token_latency=statistics.fmean(gaps) if gaps else None,
            p99_inter_token_latency=p99,
            bytes_received=self.bytes_received,
            elapsed=elapsed,
        )


class ResponseStream:
    """Tokens of one job as they arrive::

        async with sdk.create_response_stream(job_id) as stream:
            async for token in stream:
                print(token.text, end="")
        print(stream.get_final_summary())

    Leaving the ``async with`` block (or :meth:`close`) while the job still runs cancels the job when this
    stream owns it (a stream returned by ``submit_job(..., stream=True)``); the host is paid for what it
    delivered and the rest of the deposit is refunded.
    """

    def __init__(
        self,
        job_id: int,
        buffer: TokenBuffer,
        *,
        resume_from: int = 0,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if resume_from < 0:
            raise InvalidStateError("resume_from must be a non-negative token index", job_id=job_id)
        self.job_id = job_id
        self._buffer = buffer
        self._position = resume_from
        self._on_close = on_close
        self._closed = False
        self._running = asyncio.Event()
        self._running.set()

    # iteration --------------------------------------------------------------------------------------
    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Token:
        while True:
            await self._running.wait()
            if self._closed:
                raise StopAsyncIteration
            if self._position < len(self._buffer.tokens):
                token = self._buffer.tokens[self._position]
                self._position += 1
                return token
            if self._buffer.error is not None:
                raise self._buffer.error
            if self._buffer.summary is not None:
                raise StopAsyncIteration
            # Any change, not wait_beyond(): close() from another task must wake this reader too.
            await self._buffer.wait_changed()

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # control ----------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stops handing out tokens (they keep arriving and are buffered) until :meth:`resume`."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def is_paused(self) -> bool:
        return not self._running.is_set()

    @property
    def position(self) -> int:
        """Index of the next token this stream will yield."""
        return self._position

    @property
    def is_done(self) -> bool:
        return self._closed or (self._buffer.done and self._position >= len(self._buffer.tokens))

    async def close(self) -> None:
        """Stops the stream; idempotent. See the class docstring for what happens to the job."""
        if self._closed:
            return
        self._closed = True
        self._running.set()
        self._buffer.wake()  # a reader blocked waiting for tokens sees the close at once
        if self._on_close is not None and not self._buffer.done:
            await self._on_close()

    # results ----------------------------------------------------------------------------------------
    def get_metrics(self) -> StreamMetrics:
        return self._buffer.metrics()

    @property
    def text(self) -> str:
        """All text received so far."""
        return self._buffer.text

    def get_final_summary(self) -> StreamSummary:
        """The summary once the job ended; raises :class:`InvalidStateError` before that, and the job's
        error if it failed."""
        if self._buffer.error is not None:
            raise self._buffer.error
        if self._buffer.summary is None:
            raise InvalidStateError("the stream has not finished", job_id=self.job_id)
        return self._buffer.summary

    async def wait_for_summary(self) -> StreamSummary:
        """Waits for the job to end (consuming nothing) and returns the summary."""
        while not self._buffer.done:
            await self._buffer.wait_beyond(len(self._buffer.tokens))
        return self.get_final_summary()

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._buffer.summary.finish_reason if self._buffer.summary else None

"""Serving one job over one stream: a writer (token batches, then ``End``) and a reader (receipts,
``Cancel``) running concurrently, until one of them decides how the stream ends.

The attachment never settles or forgets the job: it reports an :class:`Outcome` and the node decides
(settle now, or keep the job for a resumed stream). Every wait on the client is bounded: writes by
``receipt_timeout`` (a slow reader), the last receipt by ``final_receipt_timeout``; receipts while out
of credit are bounded in the job's producer.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any

from .._exceptions import ErrorCode, LocalProtocolError, RemoteProtocolError, TransportError
from .._models import FinishReason
from ..core._channel import FrameChannel
from ..protocol import Cancel, Error, Frame, Receipt, TokenBatch
from ._abort import abort_with_error, linger_and_reset
from ._batcher import FlushPacer, take_batch
from ._config import HostConfig, HostFaults
from ._job import HostJob
from ._receipt_check import check_receipt

__all__ = ["Outcome", "StreamAttachment"]

_log = logging.getLogger("fabstir.host")


class Outcome(Enum):
    ENDED = "ended"  # End was sent (then the final receipt arrived, or its wait ran out)
    BROKEN = "broken"  # the client's side ended (EOF / reset) before End
    FAILED = "failed"  # an Error frame was sent (or the stream could not be written) and the stream reset
    DROPPED = "dropped"  # the drop_at_token / kill_at_token fault: EOF without End or Error, like a crash
    TAKEN_OVER = "taken_over"  # a resumed stream took the job over


class StreamAttachment:
    """Serves ``job`` on ``channel`` from local position ``start``; :meth:`run` returns the outcome.

    ``process_fault`` is the node's hook for the kill/stop faults (see :class:`~fabstir.host.HostNode`).
    """

    def __init__(
        self,
        channel: FrameChannel,
        job: HostJob,
        *,
        start: int,
        config: HostConfig,
        sign: Callable[[bytes], bytes],
        chain_id: int,
        verifying_contract: str,
        process_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = channel
        self.job = job
        self.start = start
        self._config = config
        self._faults = config.faults or HostFaults()
        self._sign = sign
        self._chain_id = chain_id
        self._verifying_contract = verifying_contract
        self._process_fault = process_fault
        self._lock = asyncio.Lock()
        self._closed = False  # no more writes: an Error went out or the stream was reset
        self._final = asyncio.Event()  # after End: the last receipt arrived or the client closed
        self._decided: asyncio.Future[Outcome] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False  # _fail is sending the Error frame and ending the stream
        self._done = asyncio.Event()
        self.tokens_written = 0
        self.end_sent = False
        self.tokens_at_end = 0
        self.failure: str | None = None  # why the stream failed, for the log and the metrics
        self.bad_client = False  # the client broke the protocol or sent a bogus receipt

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        self._decided = asyncio.get_running_loop().create_future()
        job_id = self.job.job_id
        self._tasks = {
            asyncio.create_task(self._guard(self._read_loop()), name=f"fabstir-host-read-{job_id}"),
            asyncio.create_task(self._guard(self._write_loop()), name=f"fabstir-host-write-{job_id}"),
        }
        outcome = Outcome.FAILED
        try:
            outcome = await self._decided
            return outcome
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if outcome is Outcome.ENDED:
                await self._close()
            else:
                await self.channel.reset()
            self._done.set()

    def take_over(self) -> None:
        """Ends this attachment (a resumed stream serves the job from now on)."""
        self._decide(Outcome.TAKEN_OVER)

    async def wait_closed(self) -> None:
        """Returns once :meth:`run` has finished and the stream is closed or reset."""
        await self._done.wait()

    def _decide(self, outcome: Outcome) -> None:
        """The first decision wins; :meth:`run` then stops both loops."""
        if self._decided is not None and not self._decided.done():
            self._decided.set_result(outcome)

    async def _guard(self, loop: Coroutine[Any, Any, None]) -> None:
        """Runs one loop. A loop either decides the outcome itself or leaves it to :meth:`_fail` running in
        the other loop; a crash is turned into a failure."""
        try:
            await loop
        except Exception as exc:  # a bug in serving one job must not take the node down
            _log.exception("job %s: serving the stream crashed", self.job.job_id)
            await self._fail(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", retryable=True)
            self._decide(Outcome.FAILED)

    async def _close(self) -> None:
        try:
            async with asyncio.timeout(self._config.receipt_timeout):
                await self.channel.close()
        except builtins.TimeoutError:
            await self.channel.reset()

    # -- writing -------------------------------------------------------------------------------------

    async def _write(self, *frames: Frame) -> bool:
        """Writes frames; ``False`` if the stream is closed or could not be written (the outcome is then
        decided, or :meth:`_fail` is deciding it)."""
        async with self._lock:
            if self._closed:
                return False
            try:
                async with asyncio.timeout(self._config.receipt_timeout):
                    await self.channel.send(*frames)
            except builtins.TimeoutError:
                self._closed = True
                self.failure = f"the client did not read for {self._config.receipt_timeout:g} s"
                self.bad_client = True
                self._decide(Outcome.FAILED)
                await self.channel.reset()
                return False
            except TransportError:
                self._closed = True
                self._decide(Outcome.BROKEN)
                return False
            except LocalProtocolError:
                # The client errored; the reader took its Error frame (and decided) before we got here.
                self._closed = True
                self._decide(Outcome.FAILED)
                return False
        return True

    async def _fail(
        self, code: ErrorCode | str, message: str, *, retryable: bool = False, silent: bool = False
    ) -> None:
        """Stops the job and the other loop, sends ``Error`` (unless ``silent``: the drop fault, which ends
        the stream like a crashed host), ends the stream, and decides FAILED (DROPPED if silent)."""
        if self._failing:
            return
        self._failing = True
        outcome = Outcome.DROPPED if silent else Outcome.FAILED
        if self.failure is None:
            self.failure = f"{code}: {message}"
        self.job.stop("error")  # stop generating (and free the slot) before lingering on the stream
        try:
            # Wait for a write in progress to finish, so the Error frame does not land inside another frame.
            async with asyncio.timeout(self._config.receipt_timeout):
                await self._lock.acquire()
        except builtins.TimeoutError:
            # a write is stuck on a client that does not read: no Error can get through anyway
            self._closed = True
            self._decide(outcome)
            await self.channel.reset()
            return
        try:
            # The other loop must neither write nor read while the Error goes out and the stream lingers.
            others = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            timeout = self._config.receipt_timeout
            if self._closed:
                await self.channel.reset()
            elif silent:
                self._closed = True
                await linger_and_reset(self.channel, timeout=timeout, on_frame=self._late_frame)
            else:
                self._closed = True
                await abort_with_error(
                    self.channel,
                    code,
                    message,
                    retryable=retryable,
                    timeout=timeout,
                    on_frame=self._late_frame,
                )
        finally:
            self._lock.release()
        self._decide(outcome)

    async def _write_loop(self) -> None:
        job, faults, config = self.job, self._faults, self._config
        loop = asyncio.get_running_loop()
        pacer = FlushPacer(config.batch_interval)
        position = self.start
        while not self._failing:
            if faults.drop_at_token is not None and position >= faults.drop_at_token:
                # A crashed libp2p peer looks like a clean close (FINDINGS.md): EOF without End or Error.
                await self._fail(ErrorCode.INTERNAL, f"fault: dropped after {position} tokens", silent=True)
                return
            if faults.error_at_token is not None and position >= faults.error_at_token:
                await self._fail(ErrorCode.BACKEND, "simulated backend failure", retryable=True)
                return
            if faults.kill_at_token is not None and position >= faults.kill_at_token:
                self._fire_process_fault("SIGKILL", position)
                # Only reached in-process (or if the hook returns): the crash as far as this process can.
                await self._fail(ErrorCode.INTERNAL, f"fault: killed after {position} tokens", silent=True)
                return
            if faults.stop_at_token is not None and position >= faults.stop_at_token:
                self._fire_process_fault("SIGSTOP", position)
                await self._hang()
                return
            if job.stop_reason is not None and job.stop_reason != FinishReason.CANCELLED:
                return  # only _fail stops an attached job for good, and it decides
            cancelled = job.stop_reason == FinishReason.CANCELLED
            if position < len(job.tokens) and not cancelled:
                delay = pacer.delay(loop.time())
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                limit = len(job.tokens)
                for threshold in (
                    faults.drop_at_token,
                    faults.error_at_token,
                    faults.kill_at_token,
                    faults.stop_at_token,
                ):
                    if threshold is not None:
                        limit = min(limit, threshold)
                batch = take_batch(job.tokens, position, limit)
                # The first batch of each stream says which model serves the job (docs/PROTOCOL.md).
                model = job.model if position == self.start else ""
                frame = TokenBatch(job.first_index + position, batch, model)
                position += len(batch)
                # Counted as sent before the write returns: the client may receive the batch and send a
                # receipt for it before this task runs again, and that receipt must be acceptable.
                job.sent = max(job.sent, position)
                if not await self._write(frame):
                    return
                self.tokens_written += len(batch)
                pacer.flushed(loop.time())
                continue
            if cancelled or job.generation_done:
                if job.error is not None and not cancelled:
                    error = job.error
                    await self._fail(error.code, error.message, retryable=error.retryable)
                    return
                await self._send_end(position)
                return
            await job.wait_change()

    def _fire_process_fault(self, signal_name: str, position: int) -> None:
        """Calls the node's process fault hook, once per job (a resumed stream does not fire it again).
        In ``fabstir host run`` it signals the process itself: SIGKILL never returns, SIGSTOP returns
        when the process is continued."""
        job = self.job
        if job.process_faulted:
            return
        job.process_faulted = True
        _log.warning("job %s: fault: %s after %d tokens", job.job_id, signal_name, position)
        if self._process_fault is not None:
            self._process_fault(signal_name)

    async def _hang(self) -> None:
        """The stop fault: the stream stays open and nothing more is sent, not even for a ``Cancel``, like
        a frozen host. Generation stops (no slot is held); receipts are still read and honoured. The
        reader decides the outcome once the client ends the stream (its timeout, its cancel giving up)."""
        self.job.stop("error")
        await asyncio.get_running_loop().create_future()  # cancelled by run() once the reader decides

    async def _send_end(self, position: int) -> None:
        end = self.job.end_frame(position, self._sign, overclaim_tokens=self._faults.overclaim_tokens)
        # Marked before the write returns: the client may answer End (final receipt, EOF) before this
        # task runs again, and the reader must take that EOF as the normal end.
        self.tokens_at_end = position
        self.end_sent = self.job.end_sent = True
        if not await self._write(end):
            return
        try:
            async with asyncio.timeout(self._config.final_receipt_timeout):
                await self._final.wait()
        except builtins.TimeoutError:
            _log.debug(
                "job %s: no final receipt within %g s", self.job.job_id, self._config.final_receipt_timeout
            )
        self._decide(Outcome.ENDED)

    # -- reading -------------------------------------------------------------------------------------

    def _check(self, receipt: Receipt) -> str | None:
        job = self.job
        return check_receipt(
            receipt,
            job_id=job.job_id,
            session=job.session,
            chain_id=self._chain_id,
            verifying_contract=self._verifying_contract,
            previous_amount=job.receipt_amount,
            tokens_sent=job.sent,
            base_amount=job.base_amount,
        )

    def _late_frame(self, frame: Frame) -> None:
        """A frame arriving after our Error: a valid receipt still pays for tokens delivered."""
        if isinstance(frame, Receipt) and self._check(frame) is None:
            self.job.accept_receipt(frame)

    async def _read_loop(self) -> None:
        job = self.job
        while True:
            try:
                frame = await self.channel.receive()
            except RemoteProtocolError as exc:
                self.bad_client = True
                await self._fail(exc.code, exc.message)
                return
            except TransportError:
                if self._failing:
                    return  # our own _fail is ending the stream, and decides
                if self.end_sent:
                    self._final.set()
                    self._decide(Outcome.ENDED)
                else:
                    self._decide(Outcome.BROKEN)
                return
            match frame:
                case Receipt() as receipt:
                    problem = self._check(receipt)
                    if problem is not None:
                        self.bad_client = True
                        await self._fail(ErrorCode.INVALID_RECEIPT, problem)
                        return
                    job.accept_receipt(receipt)
                    if self.end_sent and receipt.tokens >= self.tokens_at_end:
                        self._final.set()
                case Cancel():
                    job.stop(FinishReason.CANCELLED.value)
                case Error(code=code, message=message):
                    self.failure = f"the client reported {code}: {message}"
                    async with self._lock:
                        self._closed = True
                    self._decide(Outcome.ENDED if self.end_sent else Outcome.FAILED)
                    return
                case _:
                    self.bad_client = True
                    await self._fail(ErrorCode.UNEXPECTED_FRAME, f"unexpected {frame.KIND} frame")
                    return

"""The host node (SPEC §4): announces itself, negotiates, verifies escrow, streams, checks receipts,
settles — over the three seams (transport, ledger, backend), whichever implementations they are.

One stream serves one job (docs/PROTOCOL.md). The flow per stream: ``Hello`` + ``Request`` in →
``Hello`` + ``Offer`` (or ``Reject``) out → ``Confirm`` in (within ``hold_ms``) → the session is checked
on the ledger → tokens stream out while receipts come in → ``End`` → the final receipt → the session is
closed with the best receipt. The job itself (generation, tokens, receipts) lives apart from the stream,
so a broken stream can be resumed for ``resume_ttl`` seconds.

Robustness rules the code keeps: every wait on a client is bounded; every slot is released on every
path (``try/finally``, idempotent releases); a misbehaving client gets an ``Error`` frame, a log line
and a reset, and never affects other jobs; settlement failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from eth_account.signers.local import LocalAccount

from .._exceptions import ErrorCode, FabstirError, RemoteProtocolError, TransportError, ValidationError
from .._models import RejectReason
from ..backend import Backend
from ..chain import PaymentLedger, SessionInfo, Settlement, promised_session
from ..chain._unescrowed import PROMISE_TTL
from ..core._channel import FrameChannel
from ..protocol import (
    PROTOCOL_ID,
    RECORD_PROTOCOL_ID,
    SUPPORTED_VERSIONS,
    Cancel,
    CapabilityRecord,
    Confirm,
    Frame,
    Hello,
    Offer,
    Reject,
    Request,
    Resume,
    Role,
)
from ..transport import Stream, Transport
from ._abort import abort_with_error
from ._admission import Admission, Ticket
from ._attachment import Outcome, StreamAttachment
from ._config import HostConfig, HostFaults
from ._job import HostJob
from ._metrics import HostMetrics, HostStats, SettledJob
from ._negotiation import choose_version, request_problem, session_problem
from ._publisher import RecordPublisher
from ._sessions import SessionBook, SessionEntry

__all__ = ["HostNode"]

_log = logging.getLogger("fabstir.host")

#: How many finished jobs :meth:`HostNode.wait_job_settled` remembers.
_SETTLED_HISTORY = 1024
#: Starting guess of generation speed for offers' time estimates (then learned from finished jobs).
_INITIAL_MS_PER_TOKEN = 20.0


class HostNode:
    """A host of the marketplace. ``async with HostNode(...) as node:`` — or :meth:`start` / :meth:`aclose`.

    The node does not start or close the seams it is given (transport, ledger, backend): their owner does.
    It owns every task it starts; :meth:`aclose` stops them, ends the jobs in flight and settles them.

    ``process_fault`` is called with ``"SIGKILL"`` or ``"SIGSTOP"`` when the ``kill_at_token`` /
    ``stop_at_token`` fault fires (:class:`HostFaults`). ``fabstir host run`` signals its own process
    with it; without it (a node inside a test process) the node imitates the crash or the freeze.
    """

    def __init__(
        self,
        config: HostConfig,
        *,
        transport: Transport,
        ledger: PaymentLedger,
        backend: Backend,
        account: LocalAccount,
        clock: Callable[[], float] = time.time,
        process_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._process_fault = process_fault
        self._transport = transport
        self._ledger = ledger
        self._backend = backend
        self._account = account
        self._clock = clock
        self._faults = config.faults or HostFaults()
        self._admission = Admission(
            config.max_concurrent_jobs, config.max_queue, on_change=self._on_load_change
        )
        self._publisher = RecordPublisher(
            config,
            transport=transport,
            payment_address=account.address,
            chain_id=ledger.chain_id,
            load=lambda: self._admission.active,
            clock=clock,
        )
        self._stats = HostStats()
        self._jobs: dict[str, HostJob] = {}
        self._book = SessionBook()
        self._settled: collections.OrderedDict[str, SettledJob] = collections.OrderedDict()
        self._settled_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ms_per_token = _INITIAL_MS_PER_TOKEN
        self._started_at: float | None = None
        self._started = False
        self._closing = False
        self._closed = False

    # -- identity ------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._transport.peer_id

    @property
    def payment_address(self) -> str:
        return self._account.address

    @property
    def capability_record(self) -> CapabilityRecord | None:
        """The capability record the node hands out now (``None`` before the first publication)."""
        return self._publisher.record

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Serves the job protocol and announces the node (provider records, capability record). Idempotent.
        The transport must already be started."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("a closed HostNode cannot be restarted")
        self._started = True
        self._started_at = self._clock()
        self._transport.set_stream_handler(PROTOCOL_ID, self._handle_stream)
        self._transport.set_stream_handler(RECORD_PROTOCOL_ID, self._serve_record)
        await self._publisher.provide()
        await self._publisher.publish()
        self._spawn(self._publisher.run(), name="fabstir-host-publisher")

    async def aclose(self) -> None:
        """Stops serving: open streams are reset, jobs in flight end and are settled with what was receipted,
        background tasks stop. Idempotent."""
        if self._closed:
            return
        self._closed = self._closing = True
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for job in list(self._jobs.values()):
            # a job whose End went out is complete, even if its last receipt is still on the way
            await self._finalize(job, failure=None if job.end_sent else "the host shut down")
        # Settlements in flight finish (each is bounded by settle_timeout): they move the clients' money.
        await asyncio.gather(*self._settling, return_exceptions=True)
        # Sessions kept open for more jobs are closed now: their receipts settle, the rest is refunded.
        closing = [entry for entry in self._book.entries() if self._book.remove(entry.session_id)]
        await asyncio.gather(
            *(self._chain_settle(entry, close=True, why="shutdown") for entry in closing),
            return_exceptions=True,
        )
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> HostNode:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("background task %s crashed", task.get_name(), exc_info=task.exception())

    # -- status --------------------------------------------------------------------------------------

    def metrics(self) -> HostMetrics:
        return self._stats.snapshot(active=self._admission.active, queued=self._admission.queued)

    def health(self) -> Mapping[str, Any]:
        """A read-only status mapping: ``status`` (``"starting"``, ``"running"``, ``"stopped"``), identity,
        load and capacity, jobs kept for resumption, the current capability record's ``seq``/``expires``."""
        if self._closed:
            status = "stopped"
        elif self._started:
            status = "running"
        else:
            status = "starting"
        record = self._publisher.record
        return MappingProxyType(
            {
                "status": status,
                "peer_id": self.peer_id,
                "payment_address": self.payment_address,
                "chain_id": self._ledger.chain_id,
                "models": self.config.models,
                "active_jobs": self._admission.active,
                "queued_jobs": self._admission.queued,
                "max_concurrent_jobs": self.config.max_concurrent_jobs,
                "max_queue": self.config.max_queue,
                "jobs_in_flight": len(self._jobs),
                "jobs_awaiting_resume": sum(1 for j in self._jobs.values() if j.attachment is None),
                "record_seq": record.seq if record else None,
                "record_expires": record.expires if record else None,
                "uptime": (self._clock() - self._started_at) if self._started_at is not None else 0.0,
            }
        )

    async def _serve_record(self, stream: Stream) -> None:
        """Answers a record request: the current signed capability record, then a clean close."""
        value = self._publisher.encoded
        try:
            if value is None or self._closing:
                await stream.reset()
                return
            async with asyncio.timeout(self.config.receipt_timeout):
                await stream.write(value)
                await stream.close()
        except (TransportError, builtins.TimeoutError):
            with contextlib.suppress(TransportError):
                await stream.reset()

    def reannounce(self) -> None:
        """Puts the provider records and the capability record in the DHT again now (for instance when a
        bootstrap peer, which may have lost them, is back)."""
        if self._started and not self._closing:
            self._publisher.reannounce()

    async def wait_for_record(self, predicate: Callable[[CapabilityRecord], bool]) -> CapabilityRecord:
        """The first capability record handed out (possibly the current one) that satisfies ``predicate``."""
        return await self._publisher.wait_for(predicate)

    async def wait_job_settled(self, job_id: str) -> SettledJob:
        """Returns once job ``job_id`` has ended on this host and its session was closed (or closing failed).
        The caller bounds the wait."""
        while job_id not in self._settled:
            await self._settled_event.wait()
        return self._settled[job_id]

    def _on_load_change(self) -> None:
        record = self._publisher.record
        if (
            self._started
            and not self._closing
            and (record is None or record.current_load != self._admission.active)
        ):
            self._publisher.load_changed()

    # -- one stream ----------------------------------------------------------------------------------

    async def _handle_stream(self, stream: Stream) -> None:
        channel = FrameChannel(stream, Role.HOST)
        task = asyncio.current_task()
        if self._closing or task is None:
            await channel.reset()
            return
        self._handlers.add(task)
        try:
            await self._serve(channel)
        except asyncio.CancelledError:
            await channel.reset()
            raise
        except Exception:  # a bug serving one client must not take the node down
            _log.exception("serving a stream from %s crashed", channel.peer_id)
            await self._error(channel, ErrorCode.INTERNAL, "internal error", retryable=True)
        finally:
            self._handlers.discard(task)

    async def _serve(self, channel: FrameChannel) -> None:
        try:
            async with asyncio.timeout(self.config.receipt_timeout):
                hello = await channel.receive()
                first = await channel.receive()
        except builtins.TimeoutError:
            self._bad_client(channel, "sent no request in time")
            await self._error(channel, ErrorCode.TIMEOUT, "no request received in time")
            return
        except RemoteProtocolError as exc:
            self._bad_client(channel, str(exc))
            await self._error(channel, exc.code, exc.message)
            return
        except TransportError:
            await channel.reset()
            return
        if not isinstance(hello, Hello):  # the state machine only lets a client start with Hello
            await channel.reset()
            return
        version = choose_version(hello.versions, SUPPORTED_VERSIONS)
        match first:
            case Request() as request:
                await self._serve_request(channel, request, version)
            case Resume() as resume:
                await self._serve_resume(channel, resume, version)
            case _:  # the client gave up (its Error frame)
                await channel.reset()

    async def _serve_request(self, channel: FrameChannel, request: Request, version: str | None) -> None:
        if version is None:
            await self._reject(
                channel, request, RejectReason.VERSION_MISMATCH, "no common protocol version", None
            )
            return
        if self._faults.reject is not None:
            await self._reject(channel, request, self._faults.reject, "this host rejects every job", version)
            return
        problem = request_problem(self.config, request)
        if problem is not None:
            await self._reject(channel, request, problem[0], problem[1], version)
            return
        if request.job_id in self._jobs:
            await self._reject(
                channel, request, RejectReason.ERROR, "a job with this id is in progress", version
            )
            return
        ticket = self._admission.reserve()
        if ticket is None:
            await self._reject(
                channel, request, RejectReason.BUSY, "every slot and queue place is taken", version
            )
            return
        job: HostJob | None = None
        try:
            job = await self._negotiate(channel, request, version, ticket)
        finally:
            if job is None:
                ticket.release()
        if job is not None:
            await self._attach(channel, job, start=0)

    async def _negotiate(
        self, channel: FrameChannel, request: Request, version: str, ticket: Ticket
    ) -> HostJob | None:
        """Offers, waits for the confirmation and checks the session. The confirmed job, or ``None``."""
        price = self.config.price(request.model, request.payment_token)
        assert price is not None  # request_problem checked it
        offer = Offer(
            job_id=request.job_id,
            price_per_token=price,
            payment_token=request.payment_token,
            payment_address=self.payment_address,
            chain_id=self._ledger.chain_id,
            estimated_time_ms=self._estimate_ms(request, ticket),
            credit_tokens=self.config.credit_tokens,
            hold_ms=self.config.hold_ms,
        )
        self._stats.offered += 1
        if not await self._send(channel, Hello((version,), self.config.agent), offer):
            return None
        try:
            async with asyncio.timeout(self.config.hold_ms / 1000):
                reply = await channel.receive()
        except builtins.TimeoutError:
            _log.info("job %s from %s: the offer expired unconfirmed", request.job_id, channel.peer_id)
            ticket.release()
            await self._error(channel, ErrorCode.TIMEOUT, "the offer expired", retryable=True)
            return None
        except RemoteProtocolError as exc:
            self._bad_client(channel, str(exc))
            ticket.release()
            await self._error(channel, exc.code, exc.message)
            return None
        except TransportError:
            return None
        match reply:
            case Cancel():
                await self._close(channel)
                return None
            case Confirm(job_id=job_id) if job_id != request.job_id:
                self._bad_client(channel, "confirmed another job")
                ticket.release()
                await self._error(
                    channel, ErrorCode.PROTOCOL, f"confirm for job {job_id!r}, offered {request.job_id!r}"
                )
                return None
            case Confirm(base_amount=base_amount, keep_open=keep_open):
                session = await self._verify_session(channel, request, reply, price, ticket)
                if session is None:
                    return None
            case _:  # the client gave up (its Error frame)
                await channel.reset()
                return None
        if request.job_id in self._jobs:  # another stream confirmed the same job id meanwhile
            ticket.release()
            await self._error(channel, ErrorCode.INVALID_STATE, "a job with this id is in progress")
            return None
        job = HostJob(
            request=request,
            peer_id=channel.peer_id,
            session=session,
            ticket=ticket,
            base_amount=base_amount,
            keep_open=keep_open,
            model=self._faults.serve_model,
        )
        self._jobs[job.job_id] = job
        self._book.begin(session, base_amount)
        self._stats.accepted += 1
        job.producer = self._spawn(
            job.produce(
                self._backend,
                credit_tokens=self.config.credit_tokens,
                receipt_timeout=self.config.receipt_timeout,
                slot_timeout=session.expiry - self._clock() - self.config.min_session_ttl,
                first_token_delay=self._faults.first_token_delay,
            ),
            name=f"fabstir-host-generate-{job.job_id}",
        )
        return job

    async def _verify_session(
        self, channel: FrameChannel, request: Request, confirm: Confirm, price: int, ticket: Ticket
    ) -> SessionInfo | None:
        problem, retryable = await self._session_problem(request, confirm, price)
        if isinstance(problem, SessionInfo):
            return problem
        _log.warning("job %s from %s: payment refused: %s", request.job_id, channel.peer_id, problem)
        self._stats.failed += 1
        ticket.release()
        await self._error(channel, ErrorCode.PAYMENT, problem, retryable=retryable)
        return None

    async def _session_problem(
        self, request: Request, confirm: Confirm, price: int
    ) -> tuple[SessionInfo | str, bool]:
        """The session if it pays for the offer, else why not and whether asking again could help.

        A session may carry several jobs one after another (:class:`SessionBook`): not two at once, and
        each from at least the amount this host already holds a receipt for.

        Without escrow (an :class:`~fabstir.chain.UnescrowedLedger`) there is nothing to look up: the
        session is the client's promise on this offer's terms, from the client address in its id."""
        session_id = confirm.session_id
        entry = self._book.get(session_id)
        if entry is not None and entry.busy:
            # The client's previous job on this session may still be concluding here (its final receipt
            # just arrived): give it a moment rather than refusing the next job.
            with contextlib.suppress(builtins.TimeoutError):
                async with asyncio.timeout(self.config.final_receipt_timeout):
                    await entry.idle.wait()
        if not self._ledger.escrowed:
            try:
                promise = promised_session(
                    session_id,
                    host=self.payment_address,
                    token=request.payment_token,
                    price_per_token=price,
                    max_tokens=request.max_tokens,
                    now=self._clock(),
                    ttl=PROMISE_TTL + self.config.min_session_ttl,
                )
            except ValidationError as exc:
                return str(exc), False
            problem = self._book.problem(promise, confirm.base_amount)
            return (promise if problem is None else problem), False
        try:
            async with asyncio.timeout(self.config.receipt_timeout):
                session = await self._ledger.get_session(session_id)
        except builtins.TimeoutError:
            return "the ledger did not answer in time", True
        except FabstirError as exc:
            return f"unknown payment session: {exc}", False
        problem = session_problem(
            session,
            payment_address=self.payment_address,
            payment_token=request.payment_token,
            price_per_token=price,
            now=self._clock(),
            min_session_ttl=self.config.min_session_ttl,
        )
        if problem is None:
            problem = self._book.problem(session, confirm.base_amount)
        return (session if problem is None else problem), False

    async def _serve_resume(self, channel: FrameChannel, resume: Resume, version: str | None) -> None:
        if version is None:
            await self._send(channel, Hello(SUPPORTED_VERSIONS, self.config.agent))
            await self._error(channel, ErrorCode.PROTOCOL, "version_mismatch: no common protocol version")
            return
        hello = Hello((version,), self.config.agent)
        job = self._jobs.get(resume.job_id)
        if job is not None and job.peer_id == channel.peer_id and job.attachment is not None:
            # The client saw this stream die before we did: the new stream takes the job over.
            old = job.attachment
            old.take_over()
            try:
                async with asyncio.timeout(self.config.receipt_timeout):
                    await old.wait_closed()
            except builtins.TimeoutError:
                pass
        if job is None or job.finalized or job.attachment is not None or job.peer_id != channel.peer_id:
            if await self._send(channel, hello):
                await self._error(channel, ErrorCode.JOB_NOT_FOUND, f"job {resume.job_id!r} is not kept here")
            return
        position = resume.from_seq - job.first_index
        if not 0 <= position <= job.sent:
            if await self._send(channel, hello):
                await self._error(
                    channel,
                    ErrorCode.INVALID_STATE,
                    f"cannot resume job {job.job_id!r} from token {resume.from_seq}",
                )
            return
        if job.expiry is not None:
            job.expiry.cancel()
            job.expiry = None
        _log.info("job %s: resumed by %s from token %d", job.job_id, channel.peer_id, resume.from_seq)
        await self._attach(channel, job, start=position, greeting=hello)

    async def _attach(
        self, channel: FrameChannel, job: HostJob, *, start: int, greeting: Hello | None = None
    ) -> None:
        """Serves ``job`` on ``channel`` (after sending ``greeting``), then acts on how the stream ended."""
        attachment = StreamAttachment(
            channel,
            job,
            start=start,
            config=self.config,
            sign=self._transport.sign,
            chain_id=self._ledger.chain_id,
            verifying_contract=self._ledger.verifying_contract,
            process_fault=self._process_fault,
        )
        job.attachment = attachment  # before any await: a concurrent Resume must see the job taken
        if greeting is not None and not await self._send(channel, greeting):
            job.attachment = None
            self._keep_for_resume(job)
            return
        try:
            outcome = await attachment.run()
        finally:
            if job.attachment is attachment:
                job.attachment = None
            self._stats.tokens_served += attachment.tokens_written
        if attachment.bad_client:
            self._bad_client(channel, attachment.failure or "misbehaved")
        # No await between here and _finalize's first line: a concurrent Resume relies on it.
        match outcome:
            case Outcome.TAKEN_OVER:
                return
            case Outcome.BROKEN if self.config.resume_ttl > 0 and job.stop_reason is None:
                _log.info(
                    "job %s: the stream from %s broke; kept %g s for resumption",
                    job.job_id,
                    channel.peer_id,
                    self.config.resume_ttl,
                )
                self._keep_for_resume(job)
            case Outcome.BROKEN:
                job.stop("error")
                await self._finalize(job, failure="the client went away mid-stream")
            case Outcome.ENDED:
                await self._finalize(job, failure=None)
            case _:
                job.stop("error")
                await self._finalize(job, failure=attachment.failure or outcome.value)

    def _keep_for_resume(self, job: HostJob) -> None:
        if job.expiry is None and not job.finalized:
            job.expiry = self._spawn(self._expire(job), name=f"fabstir-host-expire-{job.job_id}")

    async def _expire(self, job: HostJob) -> None:
        await asyncio.sleep(self.config.resume_ttl)
        job.expiry = None
        if job.attachment is None and not job.finalized:
            job.stop("error")
            await self._finalize(job, failure="the stream broke and the job was not resumed")

    # -- the end of a job ----------------------------------------------------------------------------

    async def _finalize(self, job: HostJob, *, failure: str | None) -> None:
        """Ends the job for good, once: releases its slot, settles its session and records the result.

        The conclusion runs in a task of its own and is shielded: a cancelled caller (a stream handler
        when the node closes) must not leave a session unsettled or a slot taken.
        """
        if job.finalized:
            return
        job.finalized = True
        if job.expiry is not None and job.expiry is not asyncio.current_task():
            job.expiry.cancel()
        job.expiry = None
        task = asyncio.create_task(self._conclude(job, failure), name=f"fabstir-host-settle-{job.job_id}")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _conclude(self, job: HostJob, failure: str | None) -> None:
        settlement: Settlement | None = None
        try:
            if not job.generation_done:
                job.stop("error")
            try:
                async with asyncio.timeout(self.config.receipt_timeout):
                    await job.wait_generation_done()
            except builtins.TimeoutError:
                _log.warning("job %s: the backend did not stop in time", job.job_id)
            job.ticket.release()
            self._jobs.pop(job.job_id, None)
            if job.end_sent and job.tokens:
                elapsed_ms = (asyncio.get_running_loop().time() - job.started) * 1000
                self._ms_per_token = 0.8 * self._ms_per_token + 0.2 * elapsed_ms / len(job.tokens)
            if failure is None:
                self._stats.completed += 1
                if job.stop_reason == "cancelled":
                    self._stats.cancelled += 1
            else:
                self._stats.failed += 1
                _log.warning("job %s from %s failed: %s", job.job_id, job.peer_id, failure)
            settlement = await self._settle(job, failed=failure is not None)
        finally:
            job.ticket.release()
            self._jobs.pop(job.job_id, None)
            entry = self._book.get(job.session.session_id)
            if entry is not None and entry.busy:  # _settle did not get to it
                self._book.end(
                    job.session.session_id, job.receipt_amount, job.receipt_signature, now=self._clock()
                )
            result = SettledJob(
                job_id=job.job_id,
                session_id=job.session.session_id,
                outcome="completed" if failure is None else "failed",
                finish_reason=(job.stop_reason or job.finish_reason) if job.end_sent else None,
                tokens_sent=job.sent,
                receipt_amount=job.receipt_amount,
                base_amount=job.base_amount,
                settlement=settlement,
                error=failure,
            )
            self._settled[job.job_id] = result
            while len(self._settled) > _SETTLED_HISTORY:
                self._settled.popitem(last=False)
            self._settled_event.set()
            self._settled_event = asyncio.Event()

    async def _settle(self, job: HostJob, *, failed: bool) -> Settlement | None:
        """Settles the job's session with the best receipt held for it: closes it (the rest refunded to
        the client) unless the client asked to keep it open for more jobs and the job went well — then
        settles the receipts (``settlement="per_job"``) or keeps them for the close (``"batched"``), and
        closes it once idle (:meth:`_close_when_idle`)."""
        session_id = job.session.session_id
        entry = self._book.end(session_id, job.receipt_amount, job.receipt_signature, now=self._clock())
        if not self._ledger.escrowed or entry is None:
            self._book.remove(session_id)
            _log.info(
                "job %s ended without escrow: %d tokens sent, %d acknowledged (receipts for %d %s, unpaid)",
                job.job_id,
                job.sent,
                job.acknowledged,
                job.receipt_amount,
                job.session.token,
            )
            return None
        keep = (
            job.keep_open
            and not failed
            and not self._closing
            and entry.session.deposit - entry.amount >= entry.session.price_per_token
            and entry.session.expiry - self._clock() > 2 * self.config.min_session_ttl
        )
        if not keep:
            self._book.remove(session_id)
            return await self._chain_settle(entry, close=True, why=f"job {job.job_id}")
        settlement = None
        if self.config.settlement == "per_job" and entry.unsettled:
            settlement = await self._chain_settle(entry, close=False, why=f"job {job.job_id}")
        if not entry.busy:  # (a next job may have begun while the settlement was on its way)
            entry.closer = self._spawn(self._close_when_idle(entry), name=f"fabstir-host-idle-{session_id}")
        return settlement

    async def _close_when_idle(self, entry: SessionEntry) -> None:
        """Closes a kept-open session once no job used it for ``session_idle_timeout``, and always well
        before it expires (after expiry only the client could get its money out, and the host's receipts
        would be worthless). A job beginning on the session cancels this task."""
        idle_until = entry.last_used + self.config.session_idle_timeout
        close_at = min(idle_until, entry.session.expiry - self.config.min_session_ttl)
        await asyncio.sleep(max(0.0, close_at - self._clock()))
        if entry.busy or self._book.get(entry.session_id) is not entry:
            return
        self._book.remove(entry.session_id)
        await self._chain_settle(entry, close=True, why="idle session")

    async def _chain_settle(self, entry: SessionEntry, *, close: bool, why: str) -> Settlement | None:
        """One settlement transaction for ``entry``'s best receipt: ``settle`` or ``close``. Failures are
        counted and logged, never raised (the receipts stay in the entry; a later settle or the close
        uses them: they are cumulative)."""
        session = entry.session
        async with entry.lock:
            if not close and (entry.signature is None or entry.amount <= entry.settled):
                return None  # nothing new to settle
            try:
                async with asyncio.timeout(self.config.settle_timeout):
                    amount, signature = entry.amount, entry.signature
                    if signature is None or amount <= entry.settled:
                        settlement = await self._ledger.close(self._account, session.session_id)
                    elif close:
                        settlement = await self._ledger.close(
                            self._account, session.session_id, amount, signature
                        )
                    else:
                        settlement = await self._ledger.settle(
                            self._account, session.session_id, amount, signature
                        )
            except (FabstirError, builtins.TimeoutError) as exc:
                self._stats.settlement_failures += 1
                _log.warning(
                    "%s: settling session %s failed: %s", why, session.session_id, exc or "timed out"
                )
                return None
            except Exception:  # a ledger bug: logged, never fatal to the node
                self._stats.settlement_failures += 1
                _log.exception("%s: settling session %s crashed", why, session.session_id)
                return None
            if signature is not None:
                entry.settled = max(entry.settled, amount)
        self._stats.settlements += 1
        self._stats.earnings[session.token] += settlement.host_amount
        _log.info(
            "%s: %s session %s: host %d + fee %d %s, refunded %d (%d jobs)",
            why,
            "closed" if close else "settled",
            session.session_id,
            settlement.host_amount,
            settlement.fee,
            session.token,
            settlement.refunded,
            entry.jobs,
        )
        return settlement

    # -- frames out ----------------------------------------------------------------------------------

    async def _send(self, channel: FrameChannel, *frames: Frame) -> bool:
        """Writes frames (bounded); on failure resets the stream and returns ``False``."""
        try:
            async with asyncio.timeout(self.config.receipt_timeout):
                await channel.send(*frames)
        except (FabstirError, builtins.TimeoutError):
            await channel.reset()
            return False
        return True

    async def _reject(
        self, channel: FrameChannel, request: Request, reason: str, message: str, version: str | None
    ) -> None:
        self._stats.rejected[str(reason)] += 1
        _log.info("rejected job %s from %s: %s (%s)", request.job_id, channel.peer_id, reason, message)
        hello = Hello((version,) if version else SUPPORTED_VERSIONS, self.config.agent)
        if await self._send(channel, hello, Reject(request.job_id, str(reason), message)):
            await self._close(channel)

    async def _error(
        self, channel: FrameChannel, code: ErrorCode | str, message: str, *, retryable: bool = False
    ) -> None:
        """Sends ``Error`` and ends the stream (see :func:`abort_with_error`)."""
        await abort_with_error(
            channel, code, message, retryable=retryable, timeout=self.config.receipt_timeout
        )

    async def _close(self, channel: FrameChannel) -> None:
        try:
            async with asyncio.timeout(self.config.receipt_timeout):
                await channel.close()
        except builtins.TimeoutError:
            await channel.reset()

    def _bad_client(self, channel: FrameChannel, problem: str) -> None:
        self._stats.bad_clients += 1
        _log.warning("bad client %s: %s", channel.peer_id, problem)

    def _estimate_ms(self, request: Request, ticket: Ticket) -> int:
        ahead = self._admission.position(ticket)
        per_job = request.max_tokens * self._ms_per_token
        return int(per_job * (1 + ahead / self.config.max_concurrent_jobs))

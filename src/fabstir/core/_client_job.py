"""The client side of one job on one host, after negotiation: escrow, confirm, stream, receipts, end.

The runner pays exactly for what it received: every receipt it signs covers only tokens that arrived,
and a host that claims more usage than it delivered is caught (``usage_mismatch``) and paid for what it
delivered only.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from .._exceptions import (
    CancelledError,
    ErrorCode,
    FabstirError,
    HostError,
    PeerUnreachableError,
    RemoteProtocolError,
    TimeoutError,
    TransportError,
)
from .._models import FinishReason, StreamSummary, Token
from ..chain import PaymentLedger, SessionInfo
from ..protocol import (
    SUPPORTED_VERSIONS,
    Cancel,
    Confirm,
    End,
    Error,
    Hello,
    Receipt,
    Resume,
    TokenBatch,
    end_signing_payload,
    sign_receipt,
    verify_peer_signature,
)
from ._channel import FrameChannel
from ._negotiation import OfferInHand
from ._stream import TokenBuffer

__all__ = ["JobOutcome", "JobRunner"]

_log = logging.getLogger("fabstir.jobs")

#: First pause between attempts to reopen a broken stream (then doubling, at most _RESUME_MAX_DELAY).
_RESUME_FIRST_DELAY = 0.05
_RESUME_MAX_DELAY = 1.0
#: Seconds of refused dials after which a resume gives up before its timeout: the host's process is gone
#: or the network is down for more than a blip, and another host is the better bet.
_RESUME_UNREACHABLE_FOR = 0.5


@dataclass(frozen=True, slots=True)
class JobOutcome:
    finish_reason: FinishReason
    tokens_received: int
    prompt_tokens: int
    completion_tokens_claimed: int
    usage_mismatch: bool


class JobRunner:
    """Runs one job on one host. Callbacks report progress to the SDK (which turns them into events).

    A stream that breaks without ``End`` or ``Error`` (a dropped connection, not a host that said it
    failed) is reopened to the same host with ``reconnect`` and the job resumed from the next token it
    owes us (``Resume``), at most ``max_resumes`` times per job, each within ``resume_timeout`` (at most
    the inter-token timeout).
    The host keeps a broken job for a while for exactly this; if it no longer has it, the job fails.
    """

    def __init__(
        self,
        *,
        job_key: str,
        offer: OfferInHand,
        session: SessionInfo,
        ledger: PaymentLedger,
        account: LocalAccount,
        buffer: TokenBuffer,
        first_token_timeout: float,
        inter_token_timeout: float,
        final_timeout: float = 10.0,
        on_tokens: Callable[[list[Token]], None] | None = None,
        reconnect: Callable[[], Awaitable[FrameChannel]] | None = None,
        max_resumes: int = 3,
        agent: str = "fabstir-llm-sdk",
        clock: Callable[[], float] = time.time,
        base_amount: int = 0,
        keep_open: bool = False,
        model: str | None = None,
        resume_timeout: float | None = None,
    ) -> None:
        self.job_key = job_key
        self.offer = offer
        self.session = session
        self._ledger = ledger
        self._account = account
        self._buffer = buffer
        self._first_timeout = first_token_timeout
        self._inter_timeout = inter_token_timeout
        self._final_timeout = final_timeout
        self._on_tokens = on_tokens
        self._clock = clock
        self._channel = offer.channel
        self._price = offer.offer.price_per_token
        self._credit = max(1, offer.offer.credit_tokens)
        self._hasher = hashlib.sha256()
        self.received = 0  # tokens received from this host
        self.acknowledged = 0  # tokens covered by our latest receipt
        self._cancel_sent = False
        self._reconnect = reconnect
        self._max_resumes = max_resumes
        self._agent = agent
        self.resumes = 0  # how often the stream was reopened
        self._broken: TransportError | None = None  # why the stream was last reopened, until data flows
        self._next_seq = len(buffer.tokens)  # the index of the next token the host owes us
        #: the session's cumulative amount signed before this job (several jobs per session)
        self.base_amount = base_amount
        self._keep_open = keep_open
        self._model = model  # the model requested; None: the host's TokenBatch.model is not checked
        #: how long reopening a broken stream may take (None: the inter-token timeout)
        self._resume_timeout = (
            inter_token_timeout if resume_timeout is None else min(resume_timeout, inter_token_timeout)
        )

    @property
    def signed_amount(self) -> int:
        """The session's cumulative amount our latest receipt signed for (``base_amount`` if none)."""
        return self.base_amount + self.acknowledged * self._price

    @property
    def peer_id(self) -> str:
        return self._channel.peer_id

    async def run(self) -> JobOutcome:
        """Confirms and streams until ``End``. Raises a :class:`FabstirError` on failure (the stream is reset,
        and a last receipt for what arrived is attempted so the host can be paid fairly)."""
        try:
            await self._channel.send(
                Confirm(self.job_key, self.session.session_id, self.base_amount, self._keep_open)
            )
            return await self._stream()
        except FabstirError as exc:
            await self._abort(exc)
            raise
        except builtins.TimeoutError as exc:
            phase = "first_token" if self.received == 0 else "inter_token"
            error = TimeoutError(
                f"no token from host {self.peer_id} within the {phase.replace('_', ' ')} timeout",
                phase=phase,
                node_id=self.peer_id,
            )
            await self._abort(error)
            raise error from exc
        except BaseException:
            await self._channel.reset()
            raise

    async def cancel(self, reason: str = "cancelled by the client") -> None:
        """Asks the host to stop; the host answers with ``End(cancelled)`` which :meth:`run` processes."""
        if self._cancel_sent:
            return
        self._cancel_sent = True
        try:
            await self._channel.send(Cancel(self.job_key, reason))
        except FabstirError as exc:
            _log.info("could not send cancel to %s: %s", self.peer_id, exc)

    async def _stream(self) -> JobOutcome:
        while True:
            timeout = self._first_timeout if self.received == 0 else self._inter_timeout
            if self._cancel_sent:
                timeout = min(timeout, self._final_timeout)
            try:
                async with asyncio.timeout(timeout):
                    frame = await self._channel.receive()
            except TransportError as exc:
                if not await self._resume(exc):
                    raise
                continue
            match frame:
                case Error(code=ErrorCode.JOB_NOT_FOUND.value) if self._broken is not None:
                    # the host lost the job with the stream (it restarted, or dropped it): as if it crashed
                    raise self._broken
                case TokenBatch(seq=seq, tokens=texts, model=served):
                    if served and self._model is not None and served != self._model:
                        # Not one token of another model is shown or paid for (docs/PROTOCOL.md).
                        raise RemoteProtocolError(
                            f"host {self.peer_id} serves model {served!r}, not the requested {self._model!r}",
                            code=ErrorCode.MODEL_MISMATCH,
                            node_id=self.peer_id,
                            context={"requested_model": self._model, "served_model": served},
                        )
                    self._broken = None
                    self._next_seq = seq + len(texts)
                    now = self._clock()
                    tokens = [Token(seq + i, text, now) for i, text in enumerate(texts)]
                    for text in texts:
                        self._hasher.update(text.encode())
                    self.received += len(texts)
                    self._buffer.append(tokens)
                    if self._on_tokens is not None:
                        self._on_tokens(tokens)
                    if self.received - self.acknowledged >= max(1, self._credit // 2):
                        await self._send_receipt()
                case End() as end:
                    self._broken = None
                    return await self._finish(end)
                case Error(code=code, message=message, retryable=retryable):
                    raise HostError(
                        f"host {self.peer_id} failed: {message}",
                        code=ErrorCode.HOST_ERROR,
                        node_id=self.peer_id,
                        retryable=retryable,
                        context={"remote_code": code},
                    )
                case _:  # pragma: no cover - the state machine admits nothing else here
                    raise RemoteProtocolError(f"unexpected {frame.KIND} frame", node_id=self.peer_id)

    async def _resume(self, cause: TransportError) -> bool:
        """Reopens the stream to the same host and resumes the job; ``False`` if that is not possible
        (no reconnect, cancelled, out of attempts, the host unreachable within the resume timeout)."""
        if self._reconnect is None or self._cancel_sent or self.resumes >= self._max_resumes:
            return False
        self.resumes += 1
        await self._channel.reset()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._resume_timeout
        delay = _RESUME_FIRST_DELAY
        unreachable_since: float | None = None
        _log.info("job %s: the stream to %s broke (%s); resuming", self.job_key, self.peer_id, cause)
        while True:
            channel: FrameChannel | None = None
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    channel = await self._reconnect()
                    resume = Resume(self.job_key, self._next_seq)
                    await channel.send(Hello(SUPPORTED_VERSIONS, self._agent), resume)
                    await channel.receive()  # the host's Hello (the state machine guarantees it comes first)
                self._channel = channel
                self._broken = cause
                if self.received:  # our last receipt may have been lost with the old stream
                    await self._send_receipt(force=True)
                return True
            except (FabstirError, builtins.TimeoutError) as exc:
                if channel is not None:
                    await channel.reset()
                if not isinstance(exc, PeerUnreachableError):
                    unreachable_since = None
                elif unreachable_since is None:
                    unreachable_since = loop.time()
                if (
                    isinstance(exc, RemoteProtocolError)
                    or (
                        unreachable_since is not None
                        and loop.time() - unreachable_since >= _RESUME_UNREACHABLE_FOR
                    )
                    or loop.time() + delay >= deadline
                ):
                    _log.info("job %s: could not resume on %s: %s", self.job_key, self.peer_id, exc)
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESUME_MAX_DELAY)

    async def _finish(self, end: End) -> JobOutcome:
        if end.job_id != self.job_key:
            raise RemoteProtocolError("end frame for another job", node_id=self.peer_id)
        transcript = self._hasher.digest()
        payload = end_signing_payload(end.job_id, end.completion_tokens, end.tokens_sent, end.transcript_hash)
        if not verify_peer_signature(self.peer_id, payload, end.signature):
            raise RemoteProtocolError("the host's end signature does not verify", node_id=self.peer_id)
        if end.transcript_hash != transcript or end.tokens_sent != self.received:
            raise RemoteProtocolError(
                "the host's transcript does not match the tokens received", node_id=self.peer_id
            )
        # A model's usage counts the end-of-sequence token it never sends as text: one token of slack on
        # a natural stop. Payment is unaffected either way: receipts only ever cover tokens received.
        slack = 1 if end.finish_reason == FinishReason.STOP else 0
        mismatch = end.completion_tokens > self.received + slack
        if mismatch:
            _log.warning(
                "host %s claims %d completion tokens but delivered %d; paying for %d",
                self.peer_id,
                end.completion_tokens,
                self.received,
                self.received,
            )
        await self._send_receipt(final=True)
        await self._channel.close()
        try:
            reason = FinishReason(end.finish_reason)
        except ValueError:
            reason = FinishReason.STOP
        if self._cancel_sent and reason is not FinishReason.CANCELLED:
            reason = FinishReason.CANCELLED
        return JobOutcome(reason, self.received, end.prompt_tokens, end.completion_tokens, mismatch)

    async def _send_receipt(self, *, final: bool = False, force: bool = False) -> None:
        if self.received == self.acknowledged and not force:
            return
        amount = self.base_amount + self.received * self._price
        signature = sign_receipt(
            self._account,
            chain_id=self._ledger.chain_id,
            verifying_contract=self._ledger.verifying_contract,
            session_id=self.session.session_id,
            amount=amount,
        )
        await self._channel.send(
            Receipt(self.session.session_id, self.job_key, self.received, amount, signature)
        )
        self.acknowledged = self.received

    async def _abort(self, error: FabstirError) -> None:
        """Best effort on failure: acknowledge what arrived (the host earned it), report, reset."""
        try:
            async with asyncio.timeout(1.0):
                if self.received > self.acknowledged:
                    await self._send_receipt(final=True)
                if not isinstance(error, TransportError | CancelledError):
                    await self._channel.send(Error(error.code.value, error.message, error.retryable))
        except (FabstirError, builtins.TimeoutError):
            pass
        await self._channel.linger_close()

    def summary(self, outcome: JobOutcome) -> StreamSummary:
        metrics = self._buffer.metrics()
        return StreamSummary(
            total_tokens=len(self._buffer.tokens),
            duration=metrics.elapsed,
            finish_reason=outcome.finish_reason,
            text=self._buffer.text,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.tokens_received,
        )

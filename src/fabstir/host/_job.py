"""One confirmed job on the host: its generation, its tokens, its receipts — independent of any stream.

The generation runs in its own task and appends to :attr:`HostJob.tokens`; streams attached to the job
(the first one, or a resumed one) only read from there. That is what lets a job outlive a broken stream
for a while. The credit window is enforced at the source: the generation never gets more than
``credit_tokens`` ahead of the latest receipt, nor beyond what the session's deposit pays for.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._exceptions import BackendError, FabstirError, TimeoutError
from .._models import FinishReason
from ..backend import Backend, GenerationRequest, Usage
from ..chain import SessionInfo
from ..protocol import End, Receipt, Request, end_signing_payload
from ._admission import Ticket
from ._batcher import split_token

if TYPE_CHECKING:
    from ._attachment import StreamAttachment

__all__ = ["HostJob"]

_log = logging.getLogger("fabstir.host")


class HostJob:
    """State of one job; the node owns it from the confirmation until settlement.

    Positions are local to this host: token ``p`` of :attr:`tokens` travels with ``seq = first_index + p``.
    """

    def __init__(
        self,
        *,
        request: Request,
        peer_id: str,
        session: SessionInfo,
        ticket: Ticket,
        base_amount: int = 0,
        keep_open: bool = False,
        model: str | None = None,
    ) -> None:
        self.request = request
        self.job_id = request.job_id
        #: the model serving the job, declared in the first TokenBatch of each stream: the requested one
        #: unless the ``serve_model`` fault swapped it
        self.model = model or request.model
        self.peer_id = peer_id
        self.session = session
        self.price = session.price_per_token
        self.ticket = ticket
        self.first_index = request.first_index
        #: the session's cumulative amount before this job (receipts count on from it)
        self.base_amount = base_amount
        #: the client will send more jobs on this session: settle it, do not close it
        self.keep_open = keep_open
        #: tokens what is left of the deposit pays for (None: free)
        self.deposit_limit: int | None = (
            max(0, session.deposit - session.refunded - base_amount) // self.price if self.price else None
        )
        self.tokens: list[str] = []
        self.sent = 0  # tokens written to a stream (the most any stream got)
        self.acknowledged = 0  # tokens covered by the latest valid receipt
        self.receipt_amount = base_amount  # the session's cumulative amount per the latest valid receipt
        self.receipt_signature: bytes | None = None
        self.finish_reason: str | None = None  # why generation ended
        self.natural_finish = False  # the backend ended it (stop / length), so its usage is the truth
        self.usage: Usage | None = None
        self.error: FabstirError | None = None  # the generation failed
        self.generation_done = False
        self.stop_reason: str | None = None  # set when the job is told to stop early
        self.end_sent = False
        self.finalized = False
        self.process_faulted = False  # the kill/stop fault fired for this job (it fires once per job)
        self.attachment: StreamAttachment | None = None
        self.producer: asyncio.Task[None] | None = None
        self.expiry: asyncio.Task[None] | None = None
        self.started = asyncio.get_running_loop().time()
        self._changed = asyncio.Event()

    # -- change notification -------------------------------------------------------------------------

    def notify(self) -> None:
        """Wakes everything waiting in :meth:`wait_change`."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self) -> None:
        """Returns after the next :meth:`notify` (new tokens, a receipt, the end of generation, a stop)."""
        await self._changed.wait()

    # -- receipts and stopping -----------------------------------------------------------------------

    def accept_receipt(self, receipt: Receipt) -> None:
        """Records a receipt already checked with :func:`~fabstir.host._receipt_check.check_receipt`."""
        if receipt.amount >= self.receipt_amount:
            self.receipt_amount = receipt.amount
            self.receipt_signature = receipt.signature
            self.acknowledged = max(self.acknowledged, receipt.tokens)
            self.notify()

    def stop(self, reason: str) -> None:
        """Stops generating early (``reason`` becomes the finish reason unless generation already ended)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if not self.generation_done:
            if self.finish_reason is None:
                self.finish_reason = reason
            if self.producer is not None:
                self.producer.cancel()
        self.notify()

    async def wait_generation_done(self) -> None:
        """Returns once the producer task has ended (the caller bounds the wait)."""
        if self.producer is not None and not self.producer.done():
            await asyncio.wait({self.producer})

    # -- generation ----------------------------------------------------------------------------------

    async def produce(
        self,
        backend: Backend,
        *,
        credit_tokens: int,
        receipt_timeout: float,
        slot_timeout: float,
        first_token_delay: float,
    ) -> None:
        """The producer task: waits for a slot, generates, appends tokens within the credit window."""
        try:
            if not self.ticket.has_slot:
                try:
                    async with asyncio.timeout(max(0.0, slot_timeout)):
                        await self.ticket.wait_slot()
                except builtins.TimeoutError as exc:
                    raise TimeoutError("no generation slot freed up in time", phase="queue") from exc
            self.ticket.activate()
            if first_token_delay > 0:
                await asyncio.sleep(first_token_delay)
            await self._generate(backend, credit_tokens=credit_tokens, receipt_timeout=receipt_timeout)
        except FabstirError as exc:
            self.error = exc
            _log.info("job %s: generation failed: %s", self.job_id, exc)
        except Exception as exc:  # a backend bug must not take the node down; the client gets an error frame
            _log.exception("job %s: the backend crashed", self.job_id)
            self.error = BackendError(f"the backend failed: {exc!r}")
        finally:
            self.generation_done = True
            # The slot is for generating: it frees up as soon as generation ends, before settlement.
            self.ticket.release()
            self.notify()

    async def _generate(self, backend: Backend, *, credit_tokens: int, receipt_timeout: float) -> None:
        request = self.request
        model = self.model
        if model != request.model and model not in await backend.list_models():
            # The serve_model fault names a model this backend lacks (the built-in one has a single
            # model): generate with the requested one. The declaration is what the fault is about.
            model = request.model
        generation = backend.generate(
            GenerationRequest(
                model=model,
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=request.seed,
                system=request.system,
                continuation=request.continuation,
            )
        )
        try:
            async for text in generation:
                for piece in split_token(text):
                    if not await self._may_append(credit_tokens, receipt_timeout):
                        return
                    self.tokens.append(piece)
                    self.notify()
            if self.finish_reason is None:
                self.finish_reason = generation.finish_reason or FinishReason.STOP.value
                self.natural_finish = True
                self.usage = generation.usage
        finally:
            try:
                await generation.aclose()
            except Exception:  # closing a failed generation may fail again; the job is over either way
                _log.debug("job %s: closing the generation failed", self.job_id, exc_info=True)

    async def _may_append(self, credit_tokens: int, receipt_timeout: float) -> bool:
        """Whether one more token may be added; waits for receipts while the credit window is full."""
        if len(self.tokens) >= self.request.max_tokens:
            # the backend overran max_tokens: the client will not pay for more
            self.finish_reason = FinishReason.LENGTH.value
            return False
        if self.deposit_limit is not None and len(self.tokens) >= self.deposit_limit:
            self.finish_reason = FinishReason.CREDIT.value
            return False
        while len(self.tokens) >= self.acknowledged + credit_tokens:
            acknowledged = self.acknowledged
            try:
                async with asyncio.timeout(receipt_timeout):
                    while (
                        len(self.tokens) >= self.acknowledged + credit_tokens
                        and self.acknowledged == acknowledged
                    ):
                        await self.wait_change()
            except builtins.TimeoutError:
                _log.info("job %s: no receipt within %g s, out of credit", self.job_id, receipt_timeout)
                self.finish_reason = FinishReason.CREDIT.value
                return False
        return True

    # -- the end -------------------------------------------------------------------------------------

    def end_frame(
        self, tokens_sent: int, sign: Callable[[bytes], bytes], *, overclaim_tokens: int = 0
    ) -> End:
        """The signed ``End`` for a stream that delivered tokens ``[0, tokens_sent)``."""
        transcript = hashlib.sha256("".join(self.tokens[:tokens_sent]).encode()).digest()
        if self.natural_finish and self.usage is not None and tokens_sent == len(self.tokens):
            completion = self.usage.completion_tokens
        else:
            completion = tokens_sent
        completion += overclaim_tokens
        prompt_tokens = (
            self.usage.prompt_tokens if self.usage is not None else len(self.request.prompt) // 4 + 1
        )
        reason = self.stop_reason or self.finish_reason or FinishReason.STOP.value
        payload = end_signing_payload(self.job_id, completion, tokens_sent, transcript)
        return End(
            job_id=self.job_id,
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            tokens_sent=tokens_sent,
            transcript_hash=transcript,
            signature=sign(payload),
        )

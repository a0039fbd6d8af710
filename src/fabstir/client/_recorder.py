"""What the SDK writes to its job journal, and how it reads a job back after a restart.

The SDK calls :class:`JournalRecorder` at each step of a job (submitted, a session opened, tokens arrived,
status changed, settled); the recorder turns its internal records into :class:`JournalEntry` /
:class:`JournalSession` rows. Token progress is written at most every ``flush_interval`` seconds (and on
every status change), so a fast stream does not become a stream of disk writes; what a crash can lose is
at most that interval of text, which a resumed job simply asks the next host for again.

A journal write that fails (disk full, file locked by another program) is logged and the job goes on:
the journal serves recovery, it must never be the reason a job fails.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._exceptions import FabstirError
from .._models import JobRequest, Token
from ..chain import SessionInfo
from ._journal import JobJournal, JournalEntry, JournalSession

__all__ = ["JournalRecorder", "request_from_journal", "session_from_journal"]

_log = logging.getLogger("fabstir.client")


def _request_json(request: JobRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_journal(data: dict[str, Any]) -> JobRequest:
    """The journaled request (only the fields JobRequest has; a bad row raises a typed error)."""
    names = {f.name for f in dataclasses.fields(JobRequest)}
    try:
        return JobRequest(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise FabstirError(f"the journaled request is not usable: {exc}") from exc


def session_from_journal(session: JournalSession, client: str) -> SessionInfo:
    return SessionInfo(
        session_id=session.session_id,
        client=client,
        host=session.payment_address,
        token=session.token,
        deposit=session.deposit,
        price_per_token=session.price_per_token,
        expiry=session.expiry,
        settled=session.settled,
        refunded=session.refunded,
        closed=session.closed,
    )


class JournalRecorder:
    """The SDK's writer to one :class:`JobJournal` (best effort: failures are logged, never raised)."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        flush_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self._interval = flush_interval
        self._clock = clock
        self._flushed: dict[int, tuple[float, int]] = {}  # job id → (when, tokens) last written

    def _safely(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except FabstirError as exc:
            _log.warning("job journal: could not record %s: %s", what, exc)

    def job_submitted(
        self, job_id: int, key: str, request: JobRequest, status: str, created_at: float, client: str | None
    ) -> None:
        entry = JournalEntry(
            job_id=job_id,
            key=key,
            request=_request_json(request),
            status=status,
            created_at=created_at,
            updated_at=created_at,
            client_address=client,
        )
        self._safely(f"job {job_id}", lambda: self.journal.add_job(entry))

    def status(self, job_id: int, status: str, host: str | None, error: FabstirError | None = None) -> None:
        self._safely(
            f"the status of job {job_id}",
            lambda: self.journal.update_job(
                job_id,
                status=status,
                host=host,
                error=str(error) if error is not None else None,
                error_code=error.code.value if error is not None else None,
            ),
        )

    def progress(self, job_id: int, tokens: Sequence[Token], *, force: bool = False) -> None:
        """The tokens delivered so far, in order; written if ``force`` or the interval passed."""
        now = self._clock()
        when, count = self._flushed.get(job_id, (float("-inf"), 0))
        if len(tokens) == count or (not force and now - when < self._interval):
            return
        self._flushed[job_id] = (now, len(tokens))
        texts = [t.text for t in tokens]
        self._safely(
            f"the progress of job {job_id}",
            lambda: self.journal.record_progress(job_id, "".join(texts), len(texts), [len(t) for t in texts]),
        )

    def session_opened(
        self,
        job_id: int,
        session: SessionInfo,
        *,
        host: str,
        base_amount: int,
        chain_id: int,
        contract: str,
        closes_session: bool,
    ) -> None:
        row = JournalSession(
            session_id=session.session_id,
            host=host,
            payment_address=session.host,
            token=session.token,
            deposit=session.deposit,
            price_per_token=session.price_per_token,
            expiry=session.expiry,
            base_amount=base_amount,
            signed_amount=base_amount,
            settled=session.settled,
            refunded=session.refunded,
            closed=session.closed,
            chain_id=chain_id,
            contract=contract,
            closes_session=closes_session,
        )
        self._safely(f"a session of job {job_id}", lambda: self.journal.add_session(job_id, row))

    def session_changed(
        self,
        job_id: int,
        session_id: str,
        *,
        signed_amount: int | None = None,
        session: SessionInfo | None = None,
    ) -> None:
        self._safely(
            f"session {session_id} of job {job_id}",
            lambda: self.journal.update_session(
                job_id,
                session_id,
                signed_amount=signed_amount,
                settled=session.settled if session else None,
                refunded=session.refunded if session else None,
                closed=session.closed if session else None,
            ),
        )

    def close(self) -> None:
        self.journal.close()

"""What a host node reports about itself: counters while it runs, frozen snapshots for callers."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..chain import Settlement

__all__ = ["HostMetrics", "HostStats", "SettledJob"]


@dataclass(frozen=True, slots=True)
class HostMetrics:
    """A snapshot of :meth:`HostNode.metrics`.

    ``jobs_accepted`` counts confirmed (paid) jobs; ``jobs_rejected`` counts rejects by reason; a job ends as
    ``completed`` (``End`` sent, including cancelled ones, also counted in ``jobs_cancelled``) or
    ``failed``. ``earnings`` is what the host received (after the treasury fee) per payment token, as
    settled on the ledger.
    """

    jobs_offered: int
    jobs_accepted: int
    jobs_rejected: Mapping[str, int]
    jobs_completed: int
    jobs_cancelled: int
    jobs_failed: int
    tokens_served: int
    active: int
    queued: int
    earnings: Mapping[str, int]
    settlements: int
    settlement_failures: int
    bad_clients: int


@dataclass(frozen=True, slots=True)
class SettledJob:
    """How one job ended on this host. ``settlement`` is the transaction that settled or closed its session
    after it: ``None`` if that failed, or if the session stays open without settling (batched)."""

    job_id: str
    session_id: str
    outcome: str  # "completed" or "failed"
    finish_reason: str | None  # the End's reason, if one was sent
    tokens_sent: int
    receipt_amount: int  # the amount of the best valid receipt (cumulative over the session)
    settlement: Settlement | None
    error: str | None = None
    base_amount: int = 0  # the session's cumulative amount before this job (several jobs per session)


class HostStats:
    """Mutable counters behind :class:`HostMetrics`."""

    def __init__(self) -> None:
        self.offered = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.completed = 0
        self.cancelled = 0
        self.failed = 0
        self.tokens_served = 0
        self.earnings: collections.Counter[str] = collections.Counter()
        self.settlements = 0
        self.settlement_failures = 0
        self.bad_clients = 0

    def snapshot(self, *, active: int, queued: int) -> HostMetrics:
        return HostMetrics(
            jobs_offered=self.offered,
            jobs_accepted=self.accepted,
            jobs_rejected=MappingProxyType(dict(self.rejected)),
            jobs_completed=self.completed,
            jobs_cancelled=self.cancelled,
            jobs_failed=self.failed,
            tokens_served=self.tokens_served,
            active=active,
            queued=queued,
            earnings=MappingProxyType(dict(self.earnings)),
            settlements=self.settlements,
            settlement_failures=self.settlement_failures,
            bad_clients=self.bad_clients,
        )

"""The client's open payment sessions, for reuse: one session may carry several jobs to the same host.

Pure bookkeeping, no I/O. A session is reused by a later job to the same host (same payment address,
token and price) when it is idle, what is left of its deposit covers the job's maximum cost, and it does
not expire soon. The amounts are cumulative over the session, like the receipts: ``signed`` is what
the client's latest receipt in the session signed for, so the next job starts from there (its
``Confirm.base_amount``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chain import SessionInfo

__all__ = ["PooledSession", "SessionPool"]

#: A session is not reused if it expires within this many seconds (hosts want 60 s left at Confirm).
REUSE_MARGIN = 180.0


@dataclass(slots=True)
class PooledSession:
    """A session the client opened and may reuse."""

    info: SessionInfo
    peer_id: str
    signed: int = 0  # the cumulative amount of the latest receipt signed in this session
    busy: bool = True  # a job is using it
    jobs: int = 0  # jobs it carried (or carries)

    @property
    def remaining(self) -> int:
        return self.info.deposit - self.signed


class SessionPool:
    """Sessions by id; see the module docstring. ``jobs_per_session`` = 1 means no reuse at all."""

    def __init__(self, jobs_per_session: int) -> None:
        self.jobs_per_session = jobs_per_session
        self._sessions: dict[str, PooledSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[PooledSession]:
        return list(self._sessions.values())

    def deposit_for(self, cost: int) -> int:
        """The deposit of a new session whose first job may cost ``cost``."""
        return cost * self.jobs_per_session

    def take(
        self, *, peer_id: str, payment_address: str, token: str, price: int, cost: int, now: float
    ) -> PooledSession | None:
        """An idle session to ``peer_id`` on these terms with ``cost`` left, marked busy; or ``None``."""
        if self.jobs_per_session <= 1:
            return None
        for pooled in self._sessions.values():
            info = pooled.info
            if (
                not pooled.busy
                and pooled.peer_id == peer_id
                and info.host.lower() == payment_address.lower()
                and info.token == token
                and info.price_per_token == price
                and pooled.remaining >= cost
                and info.expiry - now > REUSE_MARGIN
            ):
                pooled.busy = True
                pooled.jobs += 1
                return pooled
        return None

    def add(self, info: SessionInfo, peer_id: str) -> PooledSession:
        """A newly opened session, busy with its first job."""
        pooled = PooledSession(info=info, peer_id=peer_id, jobs=1)
        if self.jobs_per_session > 1:
            self._sessions[info.session_id.lower()] = pooled
        return pooled

    def keep_open(self, pooled: PooledSession, cost: int) -> bool:
        """Whether to ask the host to keep the session open after a job costing at most ``cost``: only
        if another job like it would still fit (otherwise this job is the session's last)."""
        return (
            self.jobs_per_session > 1
            and pooled.info.session_id.lower() in self._sessions
            and pooled.remaining - cost >= cost
        )

    def release(self, pooled: PooledSession, signed: int, *, reusable: bool) -> None:
        """The job on ``pooled`` ended having signed up to ``signed``; the session stays for reuse only if
        ``reusable`` (the job went well and the host keeps the session open)."""
        pooled.busy = False
        pooled.signed = max(pooled.signed, signed)
        if not reusable:
            self._sessions.pop(pooled.info.session_id.lower(), None)

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id.lower(), None)

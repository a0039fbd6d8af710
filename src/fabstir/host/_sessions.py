"""The host's book of payment sessions: which sessions carry a job now, the best receipt held for each,
and what has been settled — so that one session can pay for several jobs, one after another.

Pure bookkeeping (no I/O, no clock of its own): the node asks it whether a ``Confirm`` may use a session
and tells it when jobs begin and end; the node does the chain calls. The amounts are cumulative over the
session, as the client's receipts are: a job confirmed with ``base_amount`` B is paid by receipts for
``B + tokens × price``. A client may not start a job below what this host already holds a receipt for (it
would be paying twice with one signature), nor beyond the deposit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..chain import SessionInfo

__all__ = ["SessionBook", "SessionEntry"]


@dataclass(slots=True, kw_only=True)
class SessionEntry:
    """What the host knows about one session it serves."""

    session: SessionInfo
    amount: int = 0  # the highest valid receipt held (cumulative over the session)
    signature: bytes | None = None  # that receipt's signature
    settled: int = 0  # settled on the ledger, as far as this host knows
    busy: bool = False  # a job is using the session now
    jobs: int = 0  # jobs begun on this session
    last_used: float = 0.0  # when the last job ended (the node's clock)
    closer: asyncio.Task[None] | None = None  # the pending idle close
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one chain operation at a time
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no job uses the session

    @property
    def session_id(self) -> str:
        return self.session.session_id.lower()

    @property
    def unsettled(self) -> int:
        """Receipted but not yet settled."""
        return max(0, self.amount - self.settled)


class SessionBook:
    """Sessions by id (case-insensitive). See the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, SessionEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> SessionEntry | None:
        return self._entries.get(session_id.lower())

    def entries(self) -> list[SessionEntry]:
        return list(self._entries.values())

    def floor(self, session: SessionInfo) -> int:
        """The least a new job on ``session`` may start from: the best receipt held, or what the ledger
        says was settled (a host that restarted knows only that)."""
        entry = self.get(session.session_id)
        held = entry.amount if entry is not None else 0
        return max(held, session.settled)

    def problem(self, session: SessionInfo, base_amount: int) -> str | None:
        """Why a job may not start on ``session`` from ``base_amount``, or ``None`` if it may."""
        entry = self.get(session.session_id)
        if entry is not None and entry.busy:
            return "the payment session already pays for another job in progress"
        floor = self.floor(session)
        if base_amount < floor:
            return (
                f"the confirm's base amount {base_amount} is below the {floor} already receipted in this "
                "payment session"
            )
        if session.deposit - base_amount < session.price_per_token:
            return "the payment session's remaining deposit does not cover one token"
        return None

    def begin(self, session: SessionInfo, base_amount: int) -> SessionEntry:
        """Marks ``session`` as carrying a job from ``base_amount`` (checked with :meth:`problem`)."""
        entry = self.get(session.session_id)
        if entry is None:
            entry = SessionEntry(session=session, settled=session.settled)
            self._entries[entry.session_id] = entry
        entry.session = session
        entry.settled = max(entry.settled, session.settled)
        entry.busy = True
        entry.idle.clear()
        entry.jobs += 1
        if entry.closer is not None:
            entry.closer.cancel()
            entry.closer = None
        return entry

    def end(
        self, session_id: str, amount: int, signature: bytes | None, *, now: float
    ) -> SessionEntry | None:
        """The job on the session ended; ``amount``/``signature`` is its best receipt (kept if it is the
        session's best)."""
        entry = self.get(session_id)
        if entry is None:
            return None
        entry.busy = False
        entry.idle.set()
        entry.last_used = now
        if signature is not None and amount > entry.amount:
            entry.amount = amount
            entry.signature = signature
        return entry

    def remove(self, session_id: str) -> SessionEntry | None:
        entry = self._entries.pop(session_id.lower(), None)
        if entry is not None and entry.closer is not None and entry.closer is not asyncio.current_task():
            entry.closer.cancel()
        return entry

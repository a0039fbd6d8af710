"""Admission control: a fixed number of generation slots and a bounded queue in front of them.

An offer takes a :class:`Ticket` (a slot if one is free, else a queue place); no ticket means the host is
busy. Slots pass to queued tickets in arrival order as they free up. Releasing a ticket is idempotent,
so every path out of a job can release it in a ``finally`` without bookkeeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

__all__ = ["Admission", "Ticket"]


class Ticket:
    """A place in the host: either a slot (``has_slot``) or a queue place waiting for one."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._slot = asyncio.Event()
        self.active = False  # generating (counts as load)
        self.released = False

    @property
    def has_slot(self) -> bool:
        return self._slot.is_set()

    async def wait_slot(self) -> None:
        """Returns once this ticket holds a slot. The caller bounds the wait."""
        await self._slot.wait()

    def activate(self) -> None:
        """Marks the job as generating (it holds a slot)."""
        if not self.active and not self.released:
            self.active = True
            self._admission._changed()

    def release(self) -> None:
        """Gives the slot or queue place back; idempotent."""
        if self.released:
            return
        self.released = True
        self._admission._release(self)

    def _grant(self) -> None:
        self._slot.set()


class Admission:
    """``slots`` concurrent jobs plus ``queue`` waiting ones; ``on_change`` is called on every change."""

    def __init__(self, slots: int, queue: int, *, on_change: Callable[[], None] | None = None) -> None:
        self.slots = slots
        self.queue = queue
        self._holding: set[Ticket] = set()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._on_change = on_change

    @property
    def active(self) -> int:
        """Jobs generating now."""
        return sum(1 for t in self._holding if t.active)

    @property
    def queued(self) -> int:
        """Tickets waiting for a slot."""
        return len(self._waiting)

    @property
    def in_use(self) -> int:
        """Slots held (generating or reserved by an offer)."""
        return len(self._holding)

    def reserve(self) -> Ticket | None:
        """A ticket, or ``None`` when every slot and queue place is taken."""
        if len(self._holding) + len(self._waiting) >= self.slots + self.queue:
            return None
        ticket = Ticket(self)
        if len(self._holding) < self.slots:
            self._holding.add(ticket)
            ticket._grant()
        else:
            self._waiting.append(ticket)
        self._changed()
        return ticket

    def position(self, ticket: Ticket) -> int:
        """How many tickets are ahead of ``ticket`` in the queue (0 if it holds a slot)."""
        try:
            return self._waiting.index(ticket) + 1
        except ValueError:
            return 0

    def _release(self, ticket: Ticket) -> None:
        if ticket in self._holding:
            self._holding.discard(ticket)
            if self._waiting:
                successor = self._waiting.popleft()
                self._holding.add(successor)
                successor._grant()
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

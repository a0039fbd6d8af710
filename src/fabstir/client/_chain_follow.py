"""The SDK's view of its payment sessions on the chain, from the contract's events (SPEC §5: events by
log polling, confirmations, reorg handling, state conflicts resolved in favour of the chain).

:class:`ChainFollower` runs a :class:`~fabstir.chain.SessionWatcher` in a task of its own and folds the
events of each session into its confirmed state — settled total, refunded, closed — which it hands to
the SDK (``on_state``). A reorg hands over the sessions whose events were retracted (``on_reorg``): the
SDK re-reads them from the contract and corrects what it believed. A fork deeper than the watcher
remembers is handled the same way for every followed session.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from .._exceptions import PaymentError
from ..chain import ChainReorg, SessionEvent, SessionWatcher

__all__ = ["ChainFollower", "SessionState", "fold_event"]

_log = logging.getLogger("fabstir.chain")


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session as its confirmed events tell it."""

    settled: int = 0
    refunded: int = 0
    closed: bool = False


def fold_event(state: SessionState, event: SessionEvent) -> SessionState:
    """The state after ``event`` (pure and idempotent: a session settles a growing total and is refunded
    once, when it closes). Unknown or malformed arguments leave the state as it was."""
    args = event.args

    def amount(name: str, default: int) -> int:
        value = args.get(name, default)
        return value if isinstance(value, int) and value >= 0 else default

    match event.name:
        case "Settled":
            settled = max(state.settled, amount("settled", state.settled))
            return SessionState(settled, state.refunded, state.closed)
        case "SessionClosed":
            return SessionState(
                max(state.settled, amount("settled", state.settled)), amount("refunded", state.refunded), True
            )
        case "Reclaimed":
            return SessionState(state.settled, amount("refunded", state.refunded), True)
        case _:
            return state


OnState = Callable[[str, SessionState], object]
OnReorg = Callable[[ChainReorg | None, frozenset[str]], Awaitable[None]]


class ChainFollower:
    """Follows the sessions given to :meth:`follow`; see the module docstring."""

    def __init__(self, watcher: SessionWatcher, *, on_state: OnState, on_reorg: OnReorg) -> None:
        self._watcher = watcher
        self._on_state = on_state
        self._on_reorg = on_reorg
        self._states: dict[str, SessionState] = {}
        self._seen: dict[str, list[SessionEvent]] = {}  # confirmed events per session, in chain order
        self._task: asyncio.Task[None] | None = None

    def follow(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            key = session_id.lower()
            if key not in self._states:
                self._states[key] = SessionState()
                self._watcher.watch(key)

    def state(self, session_id: str) -> SessionState | None:
        return self._states.get(session_id.lower())

    def events(self, session_id: str) -> list[SessionEvent]:
        """The confirmed events of ``session_id`` so far (those a reorg retracted are gone)."""
        return list(self._seen.get(session_id.lower(), ()))

    def set_state(self, session_id: str, state: SessionState) -> None:
        """What the contract says now (after a reorg, the consumer re-reads the session)."""
        if session_id.lower() in self._states:
            self._states[session_id.lower()] = state

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fabstir-chain-follower")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._watcher.run(self._deliver)
            except PaymentError as exc:  # a fork deeper than the watcher remembers
                _log.warning("chain follower: %s; re-reading every followed session", exc)
                await self._on_reorg(None, frozenset(self._states))
            except Exception:  # a bug in a consumer: logged, the follower goes on
                _log.exception("chain follower crashed; restarting")
                await asyncio.sleep(1.0)

    async def _deliver(self, item: SessionEvent | ChainReorg) -> None:
        if isinstance(item, ChainReorg):
            gone = {(event.transaction_hash, event.log_index) for event in item.retracted}
            for events in self._seen.values():
                events[:] = [e for e in events if (e.transaction_hash, e.log_index) not in gone]
            sessions = frozenset(event.session_id.lower() for event in item.retracted) & set(self._states)
            await self._on_reorg(item, sessions)  # the consumer re-reads them (and calls set_state)
            return
        key = item.session_id.lower()
        if key not in self._states:
            return
        self._seen.setdefault(key, []).append(item)
        state = fold_event(self._states[key], item)
        if state != self._states[key]:
            self._states[key] = state
            result = self._on_state(key, state)
            if inspect.isawaitable(result):
                await result

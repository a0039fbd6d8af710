"""The SDK's chain follower: folding PaymentSessions events into a session's state, and handing states
and reorgs to the SDK — with a scripted watcher in place of the chain (the watcher itself is tested on
the embedded chain and anvil in tests/chain/test_watcher.py; the SDK on a devnet in
tests/integration/test_paid_jobs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, cast

from fabstir import PaymentError
from fabstir.chain import ChainReorg, SessionEvent, SessionWatcher
from fabstir.client._chain_follow import ChainFollower, SessionState, fold_event

A = "0x" + "aa" * 32
B = "0x" + "bb" * 32


def event(name: str, session_id: str = A, block: int = 1, **args: Any) -> SessionEvent:
    return SessionEvent(
        name=name,
        session_id=session_id,
        args=MappingProxyType(args),
        block_number=block,
        block_hash="0x" + f"{block:064x}",
        transaction_hash="0x" + "00" * 32,
        log_index=0,
    )


def test_folding_settlements_closes_and_reclaims() -> None:
    """Settled raises the settled total (never lowers it); SessionClosed sets the final total and the
    refund and closes; Reclaimed refunds and closes; replaying an event changes nothing (idempotent);
    events with malformed amounts or of other kinds leave the state alone."""
    state = SessionState()
    state = fold_event(state, event("SessionOpened", deposit=100))
    assert state == SessionState()
    state = fold_event(state, event("Settled", settled=30, amount=30))
    assert state == SessionState(settled=30)
    assert fold_event(state, event("Settled", settled=30, amount=30)) == state
    assert fold_event(state, event("Settled", settled=10)) == state  # an older total never lowers it
    assert fold_event(state, event("Settled", settled=-5)) == state
    assert fold_event(state, event("Settled", settled="x")) == state
    closed = fold_event(state, event("SessionClosed", settled=45, refunded=55))
    assert closed == SessionState(settled=45, refunded=55, closed=True)
    assert fold_event(closed, event("SessionClosed", settled=45, refunded=55)) == closed
    assert fold_event(SessionState(), event("Reclaimed", refunded=100)) == SessionState(0, 100, True)


class ScriptedWatcher:
    """Stands in for SessionWatcher: ``run`` delivers the scripted items (a PaymentError item is raised
    instead), then waits to be cancelled."""

    def __init__(self, script: Sequence[SessionEvent | ChainReorg | PaymentError]) -> None:
        self.script = list(script)
        self.watched: list[str] = []
        self.done = asyncio.Event()

    def watch(self, session_id: str, *, from_block: int | None = None) -> None:
        self.watched.append(session_id)

    async def run(self, deliver: Callable[[SessionEvent | ChainReorg], object]) -> None:
        while self.script:
            item = self.script.pop(0)
            if isinstance(item, PaymentError):
                raise item
            result = deliver(item)
            if asyncio.iscoroutine(result):
                await result
        self.done.set()
        await asyncio.Event().wait()


async def test_the_follower_reports_followed_sessions_and_hands_reorgs_over() -> None:
    """Only followed sessions are reported, each change once; a reorg hands over the followed sessions
    whose events were retracted (and the SDK's corrected state is kept); a fork deeper than the watcher
    remembers hands over every followed session, and following goes on."""
    settled = event("Settled", A, 2, settled=30)
    script: list[SessionEvent | ChainReorg | PaymentError] = [
        event("SessionOpened", A, 1, deposit=100),
        settled,
        event("Settled", B, 2, settled=7),  # not followed
        settled,  # a duplicate changes nothing
        ChainReorg(fork_block=2, depth=1, retracted=(settled, event("Settled", B, 2, settled=7))),
        PaymentError("fork deeper than the window", retryable=False),
        event("SessionClosed", A, 3, settled=40, refunded=60),
    ]
    watcher = ScriptedWatcher(script)
    states: list[tuple[str, SessionState]] = []
    reorgs: list[tuple[ChainReorg | None, frozenset[str]]] = []

    async def on_reorg(reorg: ChainReorg | None, sessions: frozenset[str]) -> None:
        reorgs.append((reorg, sessions))
        follower.set_state(A, SessionState(settled=25))  # what the SDK re-read from the contract

    follower = ChainFollower(
        cast(SessionWatcher, watcher), on_state=lambda s, st: states.append((s, st)), on_reorg=on_reorg
    )
    follower.follow([A.upper().replace("0X", "0x")])
    follower.follow([A])
    assert watcher.watched == [A]
    follower.start()
    async with asyncio.timeout(5):
        await watcher.done.wait()
    await follower.aclose()
    assert states == [(A, SessionState(settled=30)), (A, SessionState(settled=40, refunded=60, closed=True))]
    assert [(r.fork_block if r else None, s) for r, s in reorgs] == [
        (2, frozenset({A})),
        (None, frozenset({A})),
    ]
    assert follower.state(A) == SessionState(settled=40, refunded=60, closed=True)
    assert follower.state(B) is None

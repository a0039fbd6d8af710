"""The trio thread: py-libp2p is trio-only, the SDK is asyncio, so libp2p runs in its own thread.

Why a thread and not trio guest mode or trio-asyncio (measured, see FINDINGS.md): guest mode halved
streaming throughput and trio-asyncio needs trio as the outer loop, which breaks ``asyncio.run`` users.
The bridge costs ~0.25 ms per round trip.

Rules the rest of the package follows:

* trio objects are touched only from the trio thread; asyncio objects only from the asyncio thread;
* asyncio → trio: :meth:`TrioThread.call` (await a trio coroutine's result) and
  :meth:`TrioThread.call_soon` (fire and forget), both through ``TrioToken.run_sync_soon``;
* trio → asyncio: :meth:`TrioThread.post` (``loop.call_soon_threadsafe``);
* cancelling the awaiting asyncio task cancels the trio task (its own ``CancelScope``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..._exceptions import TransportError

if TYPE_CHECKING:  # trio-typing's stubs (a py-libp2p dependency) shadow trio's own annotations
    from trio_typing import TaskStatus

__all__ = ["TrioThread"]

_log = logging.getLogger("fabstir.transport")

T = TypeVar("T")

#: ``main`` runs the trio side of a component: it calls ``task_status.started()`` once it is serving,
#: then returns when it has shut down (the thread then ends, cancelling whatever calls are still running).
TrioMain = Callable[["TaskStatus[None]"], Awaitable[None]]


class TrioThread:
    """One ``trio.run`` in a daemon thread, driven from one asyncio loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._thread: threading.Thread | None = None
        self._finished: asyncio.Future[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()  # calls awaiting trio (asyncio thread only)

    @property
    def running(self) -> bool:
        return self._finished is not None and not self._finished.done()

    async def start(self, main: TrioMain) -> None:
        """Starts the thread and returns once ``main`` is serving; raises what ``main`` raised if its
        start failed (the thread has ended by then)."""
        if self._thread is not None:
            raise RuntimeError("a TrioThread is started once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        started: asyncio.Future[None] = loop.create_future()
        self._finished = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(main, started), name=self._name, daemon=True)
        self._thread.start()
        await started

    def _run(self, main: TrioMain, started: asyncio.Future[None]) -> None:
        try:
            trio.run(self._root, main, started)
        except BaseException as exc:  # the thread must never die silently
            _log.exception("the trio thread %s crashed", self._name)
            self.post(_settle, started, None, exc)
        finally:
            self.post(self._on_finished)

    def _on_finished(self) -> None:
        # a call accepted just before trio stopped may never have run: nobody else will settle it
        for future in list(self._pending):
            _settle(future, None, TransportError("transport closed"))
        if self._finished is not None:
            _settle(self._finished, None, None)

    async def _root(self, main: TrioMain, started: asyncio.Future[None]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery

            async def run_main(task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await main(task_status)
                finally:
                    # main is the component: once it returns, whatever calls remain have no host
                    nursery.cancel_scope.cancel()

            try:
                await nursery.start(run_main)
            except Exception as exc:
                self.post(_settle, started, None, exc)
                return
            self.post(_settle, started, None, None)

    # asyncio → trio ----------------------------------------------------------------------------------

    def call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        """Runs the synchronous ``fn(*args)`` in the trio thread soon; ``False`` if trio has stopped."""
        if self._token is None:
            return False
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Starts the trio task ``fn()`` in the thread's nursery, from the trio thread or (through
        ``run_sync_soon``) from the asyncio thread; ``False`` if trio has stopped."""
        nursery = self._nursery
        if nursery is None:
            return False
        if self._in_trio_thread():
            return _start_soon(nursery, fn)
        return self.call_soon(_start_soon, nursery, fn)

    def _in_trio_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    async def call(self, fn: Callable[[], Awaitable[T]], *, orphan: Callable[[T], object] | None = None) -> T:
        """Awaits ``fn()`` run as a trio task. Exceptions from ``fn`` propagate as they are (``fn`` maps
        them to fabstir errors); cancelling the caller cancels ``fn``; a stopped thread raises
        :class:`TransportError`. If ``fn`` completes after its caller was cancelled, its result is
        handed to ``orphan`` (on the asyncio loop) to be released."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()  # cancelled from the asyncio side through run_sync_soon

        async def task() -> None:
            try:
                with scope:
                    value = await fn()
            except trio.Cancelled:
                self.post(_settle, result, None, TransportError("transport closed"))
                raise
            except BaseException as exc:
                self.post(_settle, result, None, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if scope.cancelled_caught:  # the asyncio side gave up: it is not waiting any more
                self.post(_settle, result, None, asyncio.CancelledError())
            else:
                self.post(_deliver, result, value, orphan)

        if not self.spawn(task):
            raise TransportError("transport closed")
        self._pending.add(result)
        try:
            return await result
        except asyncio.CancelledError:
            if not result.done() or result.cancelled():
                self.call_soon(scope.cancel)
            raise
        finally:
            self._pending.discard(result)

    # trio → asyncio ----------------------------------------------------------------------------------

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Runs ``fn(*args)`` on the asyncio loop (from the trio thread); dropped if the loop is closed."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(fn, *args)

    async def wait_finished(self) -> None:
        """Returns once the thread has ended (``main`` returned)."""
        if self._finished is not None:
            await asyncio.shield(self._finished)
        if self._thread is not None:
            # the thread posts "finished" as its last statement: it is returning by now
            self._thread.join(timeout=1.0)


def _start_soon(nursery: trio.Nursery, fn: Callable[[], Awaitable[object]]) -> bool:
    try:
        nursery.start_soon(fn)
    except RuntimeError:  # the nursery is closing: the task would have been cancelled at once
        return False
    return True


def _deliver(future: asyncio.Future[T], value: T, orphan: Callable[[T], object] | None) -> None:
    if not future.done():
        future.set_result(value)
    elif orphan is not None:  # the caller was cancelled while the result was on its way
        orphan(value)


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    elif exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)

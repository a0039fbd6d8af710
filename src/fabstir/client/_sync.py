"""``FabstirSDKSync``: the same capabilities for code that is not async (scripts, notebooks).

It runs a private asyncio event loop in a daemon thread and forwards each call to the async SDK.
Event callbacks run on that thread. Use it as a context manager, or call ``close()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from .._config import SDKConfig
from .._events import Event
from .._models import (
    CostBreakdown,
    CostEstimate,
    JobDetails,
    JobRecoveryInfo,
    JobRequest,
    JobStatus,
    ModelInfo,
    NodeInfo,
    PaymentDetails,
    PaymentStatus,
    StreamMetrics,
    StreamSummary,
    Token,
)
from ..core._stream import ResponseStream
from ._sdk import FabstirSDK, JobHandle, JobRef

__all__ = ["FabstirSDKSync", "SyncJobHandle", "SyncResponseStream"]

_T = TypeVar("_T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="fabstir-sync-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FabstirSDKSync cannot be called from its own event callbacks; use FabstirSDK")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class SyncResponseStream:
    """A blocking iterator (and context manager) over a job's tokens."""

    def __init__(self, stream: ResponseStream, loop: _LoopThread) -> None:
        self._stream = stream
        self._loop = loop

    @property
    def job_id(self) -> int:
        return self._stream.job_id

    def __iter__(self) -> Iterator[Token]:
        return self

    def __next__(self) -> Token:
        try:
            return self._loop.run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> SyncResponseStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def pause(self) -> None:
        self._stream.pause()

    def resume(self) -> None:
        self._stream.resume()

    def close(self) -> None:
        self._loop.run(self._stream.close())

    def get_metrics(self) -> StreamMetrics:
        return self._stream.get_metrics()

    def get_final_summary(self) -> StreamSummary:
        return self._stream.get_final_summary()

    @property
    def text(self) -> str:
        return self._stream.text


class SyncJobHandle:
    def __init__(self, handle: JobHandle, loop: _LoopThread) -> None:
        self.job_id = handle.job_id
        self.stream = SyncResponseStream(handle.stream, loop) if handle.stream is not None else None

    def __int__(self) -> int:
        return self.job_id

    def __index__(self) -> int:
        return self.job_id


def _ref(job: JobRef | SyncJobHandle) -> int:
    return job.job_id if isinstance(job, JobHandle | SyncJobHandle) else job


class FabstirSDKSync:
    """Blocking twin of :class:`FabstirSDK`; same arguments, same methods, same errors."""

    def __init__(self, config: SDKConfig | None = None, /, **kwargs: Any) -> None:
        self._sdk = FabstirSDK(config, **kwargs)  # validates before a thread is started
        self._loop = _LoopThread()
        self._closed = False

    @property
    def config(self) -> SDKConfig:
        return self._sdk.config

    @property
    def sdk(self) -> FabstirSDK:
        """The underlying async SDK (its methods must run on this facade's loop)."""
        return self._sdk

    def __enter__(self) -> FabstirSDKSync:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        self._loop.run(self._sdk.connect())

    def disconnect(self) -> None:
        self._loop.run(self._sdk.disconnect())

    def close(self) -> None:
        """Disconnects and stops the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._sdk.disconnect())
        finally:
            self._loop.stop()

    # status
    @property
    def is_connected(self) -> bool:
        return self._sdk.is_connected

    def is_p2p_enabled(self) -> bool:
        return self._sdk.is_p2p_enabled()

    def is_p2p_connected(self) -> bool:
        return self._sdk.is_p2p_connected()

    def get_p2p_status(self) -> dict[str, Any]:
        return self._sdk.get_p2p_status()

    def get_p2p_metrics(self) -> dict[str, Any]:
        return self._sdk.get_p2p_metrics()

    def get_address(self) -> str | None:
        return self._sdk.get_address()

    def get_chain_id(self) -> int | None:
        return self._sdk.get_chain_id()

    # events (callbacks run on the facade's loop thread)
    def on(self, name: str, callback: Callable[[Event], object]) -> Callable[[], None]:
        return self._sdk.on(name, callback)

    def on_job_status_change(
        self, job: JobRef | SyncJobHandle, callback: Callable[[JobStatus], object]
    ) -> Callable[[], None]:
        return self._sdk.on_job_status_change(_ref(job), callback)

    def stream_job_events(
        self, job: JobRef | SyncJobHandle, callback: Callable[[Event], object]
    ) -> Callable[[], None]:
        return self._sdk.stream_job_events(_ref(job), callback)

    def on_payment_event(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        return self._sdk.on_payment_event(callback)

    # models, discovery, negotiation
    def get_models(self) -> list[ModelInfo]:
        return self._loop.run(self._sdk.get_models())

    def estimate_job_cost(self, request: JobRequest | None = None, **kwargs: Any) -> CostEstimate:
        return self._loop.run(self._sdk.estimate_job_cost(request, **kwargs))

    def discover_nodes(self, **filters: Any) -> list[NodeInfo]:
        return self._loop.run(self._sdk.discover_nodes(**filters))

    def select_best_node(self, *, model: str, strategy: str | None = None, **filters: Any) -> NodeInfo:
        return self._loop.run(self._sdk.select_best_node(model=model, strategy=strategy, **filters))

    def negotiate_with_nodes(
        self, request: JobRequest | None = None, *, nodes: Sequence[NodeInfo] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return self._loop.run(self._sdk.negotiate_with_nodes(request, nodes=nodes, **kwargs))

    # jobs
    def submit_job(self, request: JobRequest | None = None, **kwargs: Any) -> SyncJobHandle:
        return SyncJobHandle(self._loop.run(self._sdk.submit_job(request, **kwargs)), self._loop)

    def submit_job_with_negotiation(self, request: JobRequest | None = None, **kwargs: Any) -> SyncJobHandle:
        return SyncJobHandle(
            self._loop.run(self._sdk.submit_job_with_negotiation(request, **kwargs)), self._loop
        )

    def submit_job_with_retry(self, request: JobRequest | None = None, **kwargs: Any) -> SyncJobHandle:
        return SyncJobHandle(self._loop.run(self._sdk.submit_job_with_retry(request, **kwargs)), self._loop)

    def get_job_status(self, job: JobRef | SyncJobHandle) -> JobStatus:
        return self._loop.run(self._sdk.get_job_status(_ref(job)))

    def get_job_details(self, job: JobRef | SyncJobHandle) -> JobDetails:
        return self._loop.run(self._sdk.get_job_details(_ref(job)))

    def get_job_result(self, job: JobRef | SyncJobHandle) -> str:
        return self._loop.run(self._sdk.get_job_result(_ref(job)))

    def wait_for_job_completion(
        self, job: JobRef | SyncJobHandle, timeout: float | None = None
    ) -> JobDetails:
        return self._loop.run(self._sdk.wait_for_job_completion(_ref(job), timeout))

    def cancel_job(self, job: JobRef | SyncJobHandle) -> None:
        self._loop.run(self._sdk.cancel_job(_ref(job)))

    def get_job_host(self, job: JobRef | SyncJobHandle) -> str | None:
        return self._loop.run(self._sdk.get_job_host(_ref(job)))

    def create_response_stream(
        self, job: JobRef | SyncJobHandle, resume_from: int | None = None
    ) -> SyncResponseStream:
        return SyncResponseStream(self._sdk.create_response_stream(_ref(job), resume_from), self._loop)

    def resume_response_stream(
        self, job: JobRef | SyncJobHandle, resume_from: int | None = None
    ) -> SyncResponseStream:
        stream = self._loop.run(self._sdk.resume_response_stream(_ref(job), resume_from))
        return SyncResponseStream(stream, self._loop)

    def get_job_recovery_info(self, job: JobRef | SyncJobHandle) -> JobRecoveryInfo:
        return self._loop.run(self._sdk.get_job_recovery_info(_ref(job)))

    # payments
    def get_payment_details(self, job: JobRef | SyncJobHandle) -> PaymentDetails:
        return self._loop.run(self._sdk.get_payment_details(_ref(job)))

    def get_payment_status(self, job: JobRef | SyncJobHandle) -> PaymentStatus:
        return self._loop.run(self._sdk.get_payment_status(_ref(job)))

    def get_payment_history(self) -> list[PaymentDetails]:
        return self._loop.run(self._sdk.get_payment_history())

    def calculate_actual_cost(self, job: JobRef | SyncJobHandle) -> CostBreakdown:
        return self._loop.run(self._sdk.calculate_actual_cost(_ref(job)))

    def approve_job_payment(self, job: JobRef | SyncJobHandle) -> PaymentDetails:
        return self._loop.run(self._sdk.approve_job_payment(_ref(job)))

    def request_refund(self, job: JobRef | SyncJobHandle) -> PaymentDetails:
        return self._loop.run(self._sdk.request_refund(_ref(job)))

    def reclaim_expired_sessions(self) -> list[PaymentDetails]:
        return self._loop.run(self._sdk.reclaim_expired_sessions())

    # health
    def get_node_reliability(self, peer_id: str) -> float:
        return self._sdk.get_node_reliability(peer_id)

    def blacklist_node(self, peer_id: str, duration: float | None = None) -> None:
        self._sdk.blacklist_node(peer_id, duration)

    def get_performance_metrics(self) -> dict[str, Any]:
        return self._sdk.get_performance_metrics()

    def get_system_health_report(self) -> dict[str, Any]:
        return self._sdk.get_system_health_report()

    def get_error_recovery_report(self) -> dict[str, Any]:
        return self._sdk.get_error_recovery_report()

    def transition_mode(self, mode: str, **changes: Any) -> None:
        self._loop.run(self._sdk.transition_mode(mode, **changes))

"""The peer-event listener registry every transport needs (one implementation, shared)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._base import PeerEvent

__all__ = ["PeerListeners"]

_log = logging.getLogger("fabstir.transport")


class PeerListeners:
    """Listeners for peer connect/disconnect events. A listener that raises is logged, never propagated:
    one bad subscriber must not break the transport or the other subscribers."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[PeerEvent], None]] = []

    def add(self, listener: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """Registers ``listener``; returns the function that removes it (idempotent)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def emit(self, event: PeerEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("peer listener raised on %s", event)

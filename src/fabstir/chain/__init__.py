"""The chain seam: payment sessions and the host registry, with the in-memory ledger of mock mode
and the ledger of jobs without escrow."""

from ._base import HostRegistration, PaymentLedger, SessionInfo, Settlement
from ._memory import DEFAULT_TREASURY, InMemoryLedger, LedgerEvent
from ._unescrowed import UnescrowedLedger, client_of_session, promised_session
from ._watcher import ChainReorg, SessionEvent, SessionWatcher

__all__ = [
    "DEFAULT_TREASURY",
    "ChainReorg",
    "HostRegistration",
    "InMemoryLedger",
    "LedgerEvent",
    "PaymentLedger",
    "SessionEvent",
    "SessionInfo",
    "SessionWatcher",
    "Settlement",
    "UnescrowedLedger",
    "client_of_session",
    "promised_session",
]

"""The chain seam: payment sessions and the host registry, with the in-memory ledger of mock mode."""

from ._base import HostRegistration, PaymentLedger, SessionInfo, Settlement
from ._memory import DEFAULT_TREASURY, InMemoryLedger, LedgerEvent

__all__ = [
    "DEFAULT_TREASURY",
    "HostRegistration",
    "InMemoryLedger",
    "LedgerEvent",
    "PaymentLedger",
    "SessionInfo",
    "Settlement",
]

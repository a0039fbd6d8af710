"""The chain seam: payment sessions and the host registry."""

from ._base import HostRegistration, PaymentLedger, SessionInfo, Settlement

__all__ = ["HostRegistration", "PaymentLedger", "SessionInfo", "Settlement"]

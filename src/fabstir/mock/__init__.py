"""Mock mode: the real core over the in-memory seams (network, ledger, simulated backend)."""

from ._marketplace import DEFAULT_MOCK_HOSTS, MockHost, MockMarketplace

__all__ = ["DEFAULT_MOCK_HOSTS", "MockHost", "MockMarketplace"]

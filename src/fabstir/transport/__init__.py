"""The transport seam: interfaces, and the in-memory implementation used by mock mode and unit tests."""

from ._base import PeerEvent, PeerEventKind, PeerInfo, Stream, StreamHandler, Transport

__all__ = ["PeerEvent", "PeerEventKind", "PeerInfo", "Stream", "StreamHandler", "Transport"]
